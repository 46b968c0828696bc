"""Corpus loaders and audio reading, against hand-written expectations on tiny fixture trees."""

from __future__ import annotations

import csv
import math
import os
import re
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpus_fixtures import (
    BUILDERS,
    LINK_SITES,
    RAVDESS_SONG,
    RAVDESS_VIDEO,
    build_emodb,
    build_iemocap,
    build_ravdess,
    build_speechcommands,
    write_empty_file,
    write_link,
    write_text_as_wav,
    write_truncated_wav,
    write_wav,
)

from qat.data.audio import AudioError, MissingAudioError, is_near_silent, load_audio, probe
from qat.data.corpora import CORPORA, Corpus, load_corpus
from qat.data.records import Utterance, write_manifest

FOUR_CLASSES = ("neutral", "angry", "happy", "sad")


def assert_records_match(corpus: Corpus, expected: dict[str, dict], name: str) -> None:
    """Every parsed field of every record equals the fixture's hand-written expectation."""
    assert isinstance(corpus, Corpus)
    assert corpus.name == name
    assert [r.uid for r in corpus] == sorted(expected), "records must come sorted by uid"
    for record in corpus:
        want = expected[record.uid]
        assert isinstance(record, Utterance)
        assert record.path == want["path"]
        assert record.corpus == name
        assert record.emotion == want["emotion"], record.uid
        assert record.speaker == want["speaker"], record.uid
        assert record.text == want["text"], record.uid
        assert record.label == want["label"], record.uid
        assert record.valence == want.get("valence")
        assert record.arousal == want.get("arousal")
        assert record.dominance == want.get("dominance")
        assert record.duration == pytest.approx(want["duration"], rel=1e-12)


def _ravdess_default(expected: dict) -> dict:
    left_out = {Path(p).with_suffix("").as_posix() for p in {**RAVDESS_SONG, **RAVDESS_VIDEO}}
    return {uid: f for uid, f in expected.items() if uid not in left_out}


# --------------------------------------------------------------------------- parsing per corpus


@pytest.mark.parametrize("name", ["ravdess", "emodb", "tess", "emovo", "savee", "speechcommands"])
def test_loader_parses_every_field_and_ignores_stray_files(tmp_path, name):
    expected = BUILDERS[name](tmp_path)
    if name == "ravdess":
        expected = _ravdess_default(expected)
    corpus = load_corpus(name, tmp_path)
    assert_records_match(corpus, expected, name)
    assert corpus.skipped == []


def test_iemocap_default_is_four_classes_with_dropped_counts(tmp_path):
    expected = build_iemocap(tmp_path)
    corpus = load_corpus("iemocap", tmp_path)
    four = {u: f for u, f in expected.items() if f["emotion"] in FOUR_CLASSES}
    assert_records_match(corpus, four, "iemocap")
    assert corpus.dropped == {"exc": 2, "fru": 1, "sur": 1, "xxx": 1, "oth": 1}


def test_iemocap_speaker_is_session_plus_the_speaking_actor_gender(tmp_path):
    build_iemocap(tmp_path)
    by_text = {r.text: r for r in load_corpus("iemocap", tmp_path, emotions=None)}
    assert by_text["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert by_text["Ses01F_impro01_F000"].speaker == "Ses01F"
    assert by_text["Ses02M_script01_1_F000"].speaker == "Ses02F"
    assert by_text["Ses01F_impro01_M000"].uid == (
        "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000"
    )


def test_iemocap_valence_arousal_dominance_parsed_in_that_order(tmp_path):
    build_iemocap(tmp_path)
    by_text = {r.text: r for r in load_corpus("iemocap", tmp_path)}
    record = by_text["Ses02M_impro05b_F000"]
    assert (record.valence, record.arousal, record.dominance) == (2.3333, 3.6667, 4.0)
    record = by_text["Ses01F_impro01_M000"]
    assert (record.valence, record.arousal, record.dominance) == (1.5, 4.0, 4.0)


def test_iemocap_merge_excited_maps_exc_to_happy_and_keeps_the_code(tmp_path):
    expected = build_iemocap(tmp_path)
    corpus = load_corpus("iemocap", tmp_path, merge_excited=True)
    want = {}
    for uid, fields in expected.items():
        emotion = "happy" if fields["label"] == "exc" else fields["emotion"]
        if emotion in FOUR_CLASSES:
            want[uid] = {**fields, "emotion": emotion}
    assert_records_match(corpus, want, "iemocap")
    assert sum(r.label == "exc" and r.emotion == "happy" for r in corpus) == 2
    assert corpus.dropped == {"fru": 1, "sur": 1, "xxx": 1, "oth": 1}


def test_iemocap_emotions_none_keeps_every_labelled_class(tmp_path):
    expected = build_iemocap(tmp_path)
    corpus = load_corpus("iemocap", tmp_path, emotions=None)
    labelled = {u: f for u, f in expected.items() if f["emotion"] is not None}
    assert_records_match(corpus, labelled, "iemocap")
    assert corpus.dropped == {"xxx": 1, "oth": 1}


def test_iemocap_unknown_code_names_file_line_and_code(tmp_path):
    build_iemocap(tmp_path)
    evaluation = tmp_path / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    lines = evaluation.read_text().splitlines()
    lines.append("[40.0000 - 41.0000]\tSes01F_impro01_F009\tzzz\t[2.0000, 2.0000, 2.0000]")
    evaluation.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"Ses01F_impro01\.txt:{len(lines)}.*'zzz'"):
        load_corpus("iemocap", tmp_path)


def test_iemocap_missing_wav_raises_or_is_skipped(tmp_path):
    expected = build_iemocap(tmp_path)
    victim = expected["Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000"]["path"]
    Path(victim).unlink()
    with pytest.raises(FileNotFoundError, match=r"Ses01F_impro01_M000\.wav"):
        load_corpus("iemocap", tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        corpus = load_corpus("iemocap", tmp_path, on_error="skip")
    assert [path for path, _ in corpus.skipped] == [victim]
    assert "does not exist" in corpus.skipped[0][1]
    assert len(corpus) == 4


def test_iemocap_malformed_line_is_reported(tmp_path):
    build_iemocap(tmp_path)
    evaluation = tmp_path / "Session2/dialog/EmoEvaluation/Ses02M_impro05b.txt"
    evaluation.write_text("[1.0 - 2.0]\tSes02M_impro05b_F000\tneu\n")
    with pytest.raises(ValueError, match=r"Ses02M_impro05b\.txt:1: malformed"):
        load_corpus("iemocap", tmp_path)


def test_ravdess_song_and_video_files_dropped_unless_asked(tmp_path):
    expected = build_ravdess(tmp_path)
    corpus = load_corpus("ravdess", tmp_path)
    assert corpus.dropped == {"song": 1, "modality 01 (full-AV)": 1}
    with_song = load_corpus("ravdess", tmp_path, include_song=True)
    song_uid = Path(next(iter(RAVDESS_SONG))).with_suffix("").as_posix()
    want = {**_ravdess_default(expected), song_uid: expected[song_uid]}
    assert_records_match(with_song, want, "ravdess")


def test_speechcommands_words_option_restricts_folders(tmp_path):
    expected = build_speechcommands(tmp_path)
    corpus = load_corpus("speechcommands", tmp_path, words=["yes", "marvin"])
    want = {u: f for u, f in expected.items() if f["text"] in ("yes", "marvin")}
    assert_records_match(corpus, want, "speechcommands")
    with pytest.raises(ValueError, match=r"\['maybe'\].*available"):
        load_corpus("speechcommands", tmp_path, words=["yes", "maybe"])


def test_loading_twice_gives_the_same_order(tmp_path):
    build_emodb(tmp_path)
    first = [r.uid for r in load_corpus("emodb", tmp_path)]
    (tmp_path / "wav" / "03a01Fa.wav").touch()  # mtime change must not reorder
    assert [r.uid for r in load_corpus("emodb", tmp_path)] == first


# --------------------------------------------------------------------------- bad files


BAD_FILES = {
    "empty": (write_empty_file, "empty file"),
    "truncated": (write_truncated_wav, "truncated WAV"),
    "text renamed .wav": (write_text_as_wav, "not a readable audio file"),
    "header only": (lambda p: write_wav(p, frames=0), "no audio frames"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_audio_raises_naming_the_file(tmp_path, kind):
    build_emodb(tmp_path)
    write, reason = BAD_FILES[kind]
    write(tmp_path / "wav" / "09b02Nd.wav")
    with pytest.raises(AudioError, match=rf"09b02Nd\.wav.*{reason}"):
        load_corpus("emodb", tmp_path)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_audio_is_skipped_reported_and_the_rest_loaded(tmp_path, kind):
    expected = build_emodb(tmp_path)
    write, reason = BAD_FILES[kind]
    bad = tmp_path / "wav" / "09b02Nd.wav"
    write(bad)
    with pytest.warns(UserWarning, match=r"emodb: skipped 1 file.*09b02Nd\.wav"):
        corpus = load_corpus("emodb", tmp_path, on_error="skip")
    assert_records_match(corpus, expected, "emodb")
    assert len(corpus.skipped) == 1
    path, why = corpus.skipped[0]
    assert path == str(bad) and reason in why


UNKNOWN_CODES = [
    ("emodb", "wav/03a01Xa.wav", "'X'"),
    ("ravdess", "Actor_01/03-01-09-01-01-01-01.wav", "'09'"),
    ("ravdess", "Actor_01/03-01-01-01-03-01-01.wav", "'03'"),  # statement 03 does not exist
    ("tess", "OAF_angry/OAF_back_furious.wav", "'furious'"),
    ("emovo", "f1/xyz-f1-b1.wav", "'xyz'"),
    ("savee", "AudioData/DC/zz01.wav", "'zz'"),
]


@pytest.mark.parametrize(("name", "rel", "code"), UNKNOWN_CODES)
def test_unknown_label_code_names_file_and_code(tmp_path, name, rel, code):
    expected = BUILDERS[name](tmp_path)
    write_wav(tmp_path / rel)
    with pytest.raises(ValueError, match=rf"{re.escape(Path(rel).name)}.*unknown .*code {code}"):
        load_corpus(name, tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        corpus = load_corpus(name, tmp_path, on_error="skip")
    if name == "ravdess":
        expected = _ravdess_default(expected)
    assert_records_match(corpus, expected, name)
    assert corpus.skipped[0][0] == str(tmp_path / rel)


@pytest.mark.parametrize(
    ("name", "rel"),
    [
        ("emodb", "wav/recording1.wav"),
        ("ravdess", "Actor_01/03-01-01-01-01-01.wav"),
        ("tess", "OAF_angry/back_angry.wav"),
        ("emovo", "f1/dis_f1_b1.wav"),
        ("savee", "AudioData/DC/anger.wav"),
        ("speechcommands", "yes/take 2.wav"),
    ],
)
def test_wav_not_following_the_naming_convention_is_an_error(tmp_path, name, rel):
    BUILDERS[name](tmp_path)
    write_wav(tmp_path / rel)
    with pytest.raises(
        ValueError, match=rf"{re.escape(Path(rel).name)}: file name does not follow"
    ):
        load_corpus(name, tmp_path)


# --------------------------------------------------------------------------- roots and layout


@pytest.mark.parametrize("name", CORPORA)
def test_missing_root_names_the_path_and_the_expected_layout(tmp_path, name):
    missing = tmp_path / "not_here"
    with pytest.raises(
        FileNotFoundError, match=rf"{re.escape(str(missing))}.*does not exist; expected"
    ):
        load_corpus(name, missing)


@pytest.mark.parametrize("name", sorted(set(BUILDERS)))
def test_wrong_layout_names_the_root_and_the_expected_layout(tmp_path, name):
    write_wav(tmp_path / "some_recording.wav")  # audio, but not where the corpus keeps it
    write_wav(tmp_path / "other" / "deeper" / "x.wav")
    with pytest.raises(
        FileNotFoundError, match=rf"no {name} audio found under {re.escape(str(tmp_path))}"
    ):
        load_corpus(name, tmp_path)


@pytest.mark.parametrize("name", ["emodb", "iemocap"])
def test_root_that_is_a_file_is_rejected(tmp_path, name):
    root = tmp_path / "file.wav"
    write_wav(root)
    with pytest.raises(ValueError, match=rf"{re.escape(str(root))} is a file; expected a folder"):
        load_corpus(name, root)


def test_other_corpus_layout_is_not_mistaken_for_this_one(tmp_path):
    build_emodb(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected the official layout root/Actor_XX"):
        load_corpus("ravdess", tmp_path)


# --------------------------------------------------------------------------- load_corpus API


def test_unknown_corpus_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown corpus name 'crema'.*'emodb'.*'synthemo'"):
        load_corpus("crema", tmp_path)


def test_bad_on_error_and_unknown_option_are_rejected(tmp_path):
    build_emodb(tmp_path)
    with pytest.raises(ValueError, match=r"on_error must be one of \('raise', 'skip'\)"):
        load_corpus("emodb", tmp_path, on_error="ignore")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['merge_excited'\].*none"):
        load_corpus("emodb", tmp_path, merge_excited=True)
    with pytest.raises(ValueError, match=r"\['joy'\] are not in the common vocabulary"):
        load_corpus("iemocap", tmp_path, emotions=["happy", "joy"])


def test_corpus_repr_is_a_summary(tmp_path):
    build_emodb(tmp_path)
    text = repr(load_corpus("emodb", tmp_path))
    assert text.startswith("Corpus('emodb', 7 utterances, 0 skipped")


# --------------------------------------------------------------------------- manifest


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_manifest_round_trips_write_manifest(tmp_path):
    build_emodb(tmp_path / "emodb")
    original = load_corpus("emodb", tmp_path / "emodb")
    (tmp_path / "lists").mkdir()
    write_manifest(original, tmp_path / "lists" / "manifest.csv")  # paths become ../emodb/...
    loaded = load_corpus("manifest", tmp_path / "lists")
    assert list(loaded) == list(original)


def test_manifest_fields_relative_and_absolute_paths(tmp_path):
    write_wav(tmp_path / "data" / "a.wav", frames=400)
    write_wav(tmp_path / "elsewhere" / "b.wav", frames=640, sample_rate=8000, channels=2)
    absolute_b = tmp_path / "elsewhere" / "b.wav"
    csv_path = _write_csv(
        tmp_path / "data" / "my_list.csv",
        ["path", "emotion", "speaker", "text", "valence", "arousal", "dominance", "notes"],
        [
            ["a.wav", "angry", "spk1", "hello", "1.5", "4", "", "extra column"],
            [str(absolute_b), "sad", "spk2", "", "", "", "", ""],
        ],
    )
    corpus = load_corpus("manifest", csv_path)
    a, b = corpus
    assert a == Utterance(
        path=str(tmp_path / "data" / "a.wav"),
        corpus="manifest",
        emotion="angry",
        speaker="spk1",
        text="hello",
        label="",
        valence=1.5,
        arousal=4.0,
        dominance=None,
        duration=400 / 16000,
        uid="a",
    )
    assert (b.path, b.emotion, b.speaker, b.text) == (str(absolute_b), "sad", "spk2", "")
    assert (b.valence, b.arousal, b.dominance) == (None, None, None)
    assert b.duration == 640 / 8000
    assert b.uid == str(absolute_b.with_suffix(""))


def test_synthemo_is_the_manifest_loader_with_its_own_corpus_name(tmp_path):
    write_wav(tmp_path / "wav" / "x.wav")
    _write_csv(
        tmp_path / "manifest.csv",
        ["path", "emotion", "speaker", "text", "uid"],
        [["wav/x.wav", "happy", "en-us+m3", "cat", "spk-en-us+m3/cat/0"]],
    )
    (record,) = load_corpus("synthemo", tmp_path)
    assert (record.corpus, record.uid, record.text) == ("synthemo", "spk-en-us+m3/cat/0", "cat")


def test_manifest_missing_columns_are_named(tmp_path):
    csv_path = _write_csv(tmp_path / "manifest.csv", ["path", "emotion"], [["a.wav", "sad"]])
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['speaker', 'text'\]"):
        load_corpus("manifest", csv_path)


def test_manifest_unknown_emotion_names_row_file_and_value(tmp_path):
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "b.wav")
    _write_csv(
        tmp_path / "manifest.csv",
        ["path", "emotion", "speaker", "text"],
        [["a.wav", "sad", "s", "t"], ["b.wav", "joyful", "s", "t"]],
    )
    with pytest.raises(ValueError, match=r"manifest\.csv line 3 \(.*b\.wav\): emotion 'joyful'"):
        load_corpus("manifest", tmp_path)


def test_manifest_nonexistent_path_is_named(tmp_path):
    _write_csv(
        tmp_path / "manifest.csv",
        ["path", "emotion", "speaker", "text"],
        [["gone.wav", "sad", "s", "t"]],
    )
    with pytest.raises(FileNotFoundError, match=r"gone\.wav: audio file does not exist"):
        load_corpus("manifest", tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        corpus = load_corpus("manifest", tmp_path, on_error="skip")
    assert len(corpus) == 0 and corpus.skipped[0][0] == str(tmp_path / "gone.wav")


def test_manifest_duplicate_paths_are_named_even_if_spelled_differently(tmp_path):
    write_wav(tmp_path / "a.wav")
    _write_csv(
        tmp_path / "manifest.csv",
        ["path", "emotion", "speaker", "text"],
        [["a.wav", "sad", "s", "t"], [str(tmp_path / "a.wav"), "sad", "s", "t"]],
    )
    with pytest.raises(ValueError, match=r"listed more than once: .*a\.wav \(lines \[2, 3\]\)"):
        load_corpus("manifest", tmp_path)


def test_manifest_bad_rating_and_empty_manifest(tmp_path):
    write_wav(tmp_path / "a.wav")
    header = ["path", "emotion", "speaker", "text", "valence"]
    _write_csv(tmp_path / "manifest.csv", header, [["a.wav", "sad", "s", "t", "high"]])
    with pytest.raises(ValueError, match=r"line 2: valence 'high' is not a number"):
        load_corpus("manifest", tmp_path)
    _write_csv(tmp_path / "manifest.csv", header, [])
    with pytest.raises(ValueError, match="has a header but no rows"):
        load_corpus("manifest", tmp_path)


# --------------------------------------------------------------------------- audio


def _wave_reference(path: Path) -> np.ndarray:
    """Decode PCM with the standard library (independent of libsndfile), float64 (n, ch)."""
    with wave.open(str(path)) as w:
        width, channels, raw = w.getsampwidth(), w.getnchannels(), w.readframes(w.getnframes())
    if width == 1:  # 8-bit WAV is unsigned with offset 128
        values = np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128
    elif width == 3:  # little-endian 24-bit: sign-extend the top byte
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int64)
        values = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)).astype(np.float64)
        values[values >= 2**23] -= 2**24
    else:
        values = np.frombuffer(raw, dtype=f"<i{width}").astype(np.float64)
    return values.reshape(-1, channels) / 2.0 ** (8 * width - 1)


def test_probe_reads_the_header(tmp_path):
    write_wav(tmp_path / "x.wav", frames=777, sample_rate=44100, channels=2, subtype="PCM_24")
    info = probe(tmp_path / "x.wav")
    assert tuple(info) == (44100, 2, 777, "PCM_24")
    assert info.duration == 777 / 44100


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_probe_rejects_bad_files_naming_file_and_reason(tmp_path, kind):
    write, reason = BAD_FILES[kind]
    path = tmp_path / "bad.wav"
    write(path)
    with pytest.raises(AudioError, match=rf"{re.escape(str(path))}: .*{reason}"):
        probe(path)


def test_probe_missing_file_is_both_audio_error_and_file_not_found(tmp_path):
    with pytest.raises(MissingAudioError, match=r"nothing\.wav: audio file does not exist") as info:
        probe(tmp_path / "nothing.wav")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    with pytest.raises(AudioError, match="expected an audio file"):
        probe(tmp_path)


def test_stereo_to_mono_is_the_channel_mean(tmp_path):
    path = tmp_path / "stereo.wav"
    write_wav(path, frames=1000, channels=2, seed=7)
    reference = _wave_reference(path).mean(axis=1)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == (1000,)
    np.testing.assert_allclose(y, reference, atol=1e-7)
    assert np.abs(reference).max() > 0.1  # a real signal, not near-zero


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32"])
def test_pcm_widths_are_scaled_to_unit_range(tmp_path, subtype):
    path = tmp_path / f"{subtype}.wav"
    write_wav(path, frames=600, subtype=subtype, seed=3)
    reference = _wave_reference(path)[:, 0]
    y = load_audio(path)
    np.testing.assert_allclose(y, reference, atol=1e-7)
    assert np.abs(reference).max() > 0.1


# Lengths chosen so that n * 16000 / rate has a fractional part below 0.5: rounding and the
# ceiling (librosa's convention, which load_audio follows) then disagree.
@pytest.mark.parametrize(
    ("rate", "n"), [(8000, 2001), (22050, 5513), (24414, 6104), (44100, 11026), (48000, 12001)]
)
def test_resampling_gives_the_right_length_and_waveform(tmp_path, rate, n):
    freq = 440.0
    t = np.arange(n) / rate
    path = tmp_path / f"sine_{rate}.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t), rate, subtype="FLOAT")
    y = load_audio(path, sample_rate=16000)
    assert y.shape == (math.ceil(n * 16000 / rate),)
    expected = 0.5 * np.sin(2 * np.pi * freq * np.arange(len(y)) / 16000)
    interior = slice(200, len(y) - 200)  # the filter's edge transients are not the point
    np.testing.assert_allclose(y[interior], expected[interior], atol=2e-3)


def test_native_rate_kept_when_sample_rate_is_none(tmp_path):
    path = tmp_path / "x.wav"
    data = write_wav(path, frames=500, sample_rate=22050, channels=1, subtype="FLOAT")
    y = load_audio(path, sample_rate=None)
    np.testing.assert_allclose(y, data[:, 0], atol=1e-7)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_samples_are_rejected_naming_the_file(tmp_path, bad_value):
    path = tmp_path / "nan.wav"
    signal = np.random.default_rng(0).uniform(-0.5, 0.5, 300)
    signal[17] = bad_value
    sf.write(path, signal, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: 1 of 300 samples are NaN or infinite"):
        load_audio(path)


@pytest.mark.parametrize("bad_rate", [0, -16000, 16000.0, "16k", True])
def test_load_audio_rejects_bad_sample_rate(tmp_path, bad_rate):
    write_wav(tmp_path / "x.wav")
    with pytest.raises(ValueError, match="sample_rate must be a positive int"):
        load_audio(tmp_path / "x.wav", sample_rate=bad_rate)


def test_is_near_silent_compares_the_peak_with_the_threshold():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(4000)
    noise /= np.abs(noise).max()  # peak exactly 1
    assert is_near_silent(0.9e-3 * noise, 1e-3)
    assert not is_near_silent(1.1e-3 * noise, 1e-3)
    click = np.zeros(16000)
    click[8000] = -0.01  # one short sound in a long silence is not silence
    assert not is_near_silent(click, 1e-3)
    assert is_near_silent(np.array([]), 1e-3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        is_near_silent(np.array([0.0, np.nan]), 1e-3)
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
        is_near_silent(noise, -1.0)


# ------------------------------------------------------------- manifest: strict CSV parsing

MANIFEST_HEADER = "path,emotion,speaker,text,valence\n"


def _manifest_text(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    """The raw text of a manifest (any malformation kept as written) beside a.wav, b.wav."""
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "b.wav")
    path = tmp_path / "manifest.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_manifest_repeated_column_is_an_error_naming_it(tmp_path):
    """Two emotion columns: the last one silently won before."""
    csv_path = _manifest_text(
        tmp_path, "path,emotion,speaker,emotion,text\na.wav,happy,s1,sad,yes\n"
    )
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(csv_path))} line 1: column name\(s\) repeated in the header: "
        r"'emotion' \(columns \[2, 4\]\)",
    ):
        load_corpus("manifest", csv_path)


def test_manifest_unnamed_columns_may_repeat(tmp_path):
    """Excel exports often end every line with empty cells: unnamed columns are ignored."""
    csv_path = _manifest_text(tmp_path, "path,emotion,speaker,text,,\na.wav,sad,s1,no,,\n")
    assert [r.uid for r in load_corpus("manifest", csv_path)] == ["a"]


def test_manifest_unquoted_comma_is_an_error_naming_the_line(tmp_path):
    """text `yes, please` unquoted: the row was silently cut to the header's width before,
    and valence read ' please'... or, here, the 0.7 dropped."""
    body = "a.wav,happy,s1,yes, please,0.7\nb.wav,sad,s2,no,\n"
    csv_path = _manifest_text(tmp_path, MANIFEST_HEADER + body)
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(csv_path))} line 2: 6 fields for 5 columns .*a comma inside a "
        "value",
    ):
        load_corpus("manifest", csv_path)
    # Quoted, the same value is read whole.
    _manifest_text(tmp_path, MANIFEST_HEADER + 'a.wav,happy,s1,"yes, please",0.7\n')
    (record,) = load_corpus("manifest", csv_path)
    assert (record.text, record.valence) == ("yes, please", 0.7)


def test_manifest_row_with_fewer_fields_is_an_error(tmp_path):
    csv_path = _manifest_text(tmp_path, MANIFEST_HEADER + "a.wav,happy,s1,yes,0.7\nb.wav,sad\n")
    with pytest.raises(ValueError, match=r"manifest\.csv line 3: 2 fields for 5 columns"):
        load_corpus("manifest", csv_path)


def test_manifest_nul_byte_is_an_error_naming_line_and_column(tmp_path):
    """A NUL inside `text` made a new word class ('ye\\x00s') before."""
    body = "a.wav,happy,s1,yes,0.7\nb.wav,sad,s2,n\x00o,\n"
    csv_path = _manifest_text(tmp_path, MANIFEST_HEADER + body)
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(csv_path))} line 3: column 'text' holds a NUL byte"
    ):
        load_corpus("manifest", csv_path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # The quote never closes: it swallows every later row (the last row's empty emotion
        # was blamed before).
        (
            'a.wav,happy,s1,"yes,0.7\nb.wav,sad,s2,no,\n',
            "line 2: a quote opened on line 2 is never",
        ),
        # It closes in a later row: the rows in between become part of one value.
        (
            'a.wav,happy,s1,"yes,0.7\nb.wav,sad,s2,no",\nc.wav,sad,s2,no,\n',
            r"line 2: a quote opened on line 2 \(column 'text'\) closes only on line 3",
        ),
        # A quote after a closing quote.
        ('a.wav,happy,s1,"yes"no,0.7\n', "line 2: not valid CSV"),
    ],
)
def test_manifest_unterminated_quote_names_the_line_where_it_opened(tmp_path, body, message):
    csv_path = _manifest_text(tmp_path, MANIFEST_HEADER + body)
    with pytest.raises(ValueError, match=rf"{re.escape(str(csv_path))} {message}"):
        load_corpus("manifest", csv_path)


def test_manifest_not_utf8_names_the_line(tmp_path):
    csv_path = _manifest_text(tmp_path, MANIFEST_HEADER + "a.wav,happy,s1,café,\n", "latin-1")
    with pytest.raises(ValueError, match=r"manifest\.csv line 2: not UTF-8 text \(byte 0xe9\)"):
        load_corpus("manifest", csv_path)


def test_manifest_blank_lines_and_empty_rows_are_skipped_with_right_line_numbers(tmp_path):
    body = "\na.wav,happy,s1,yes,0.7\r\n,,,,\r\n\r\nb.wav,joyful,s2,no,\r\n"
    csv_path = _manifest_text(tmp_path, "\ufeff" + MANIFEST_HEADER + body)
    with pytest.raises(ValueError, match=r"manifest\.csv line 6 \(.*b\.wav\): emotion 'joyful'"):
        load_corpus("manifest", csv_path)


def test_manifest_file_listed_under_a_link_too_is_named_with_both_paths(tmp_path):
    csv_path = _manifest_text(tmp_path, MANIFEST_HEADER + "a.wav,happy,s1,yes,\nl.wav,sad,s2,no,\n")
    write_link(tmp_path / "l.wav", "a.wav")
    with pytest.raises(
        ValueError,
        match=rf"listed more than once: {re.escape(str(tmp_path / 'a.wav'))} \(lines \[2, 3\]\), "
        rf"the same file as \['{re.escape(str(tmp_path / 'l.wav'))}'\]",
    ):
        load_corpus("manifest", csv_path)


# ------------------------------------------------------ corpus trees: links and duplicates


def _expected_tree(name: str, root: Path) -> dict:
    expected = BUILDERS[name](root)
    return _ravdess_default(expected) if name == "ravdess" else expected


@pytest.mark.parametrize("name", sorted(LINK_SITES))
def test_symlinked_duplicate_is_rejected_or_enters_once(tmp_path, name):
    """A link to a file of the corpus under another valid name entered as a second utterance
    (possibly with other labels) and could land in train and test."""
    expected = _expected_tree(name, tmp_path)
    folder, target, free, _ = LINK_SITES[name]
    link = write_link(tmp_path / folder / free, target)
    real = tmp_path / folder / target
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(link))}: the same file as {re.escape(str(real))} "
        r"\(a symbolic link\)",
    ):
        load_corpus(name, tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        corpus = load_corpus(name, tmp_path, on_error="skip")
    assert_records_match(corpus, expected, name)
    assert [path for path, _ in corpus.skipped] == [str(link)]


def test_a_link_sorting_before_its_target_leaves_the_real_path_in_the_corpus(tmp_path):
    expected = build_emodb(tmp_path)
    link = write_link(tmp_path / "wav" / "02a01Wa.wav", "03a01Fa.wav")  # sorts first
    with pytest.raises(ValueError, match=r"03a01Fa\.wav: the same file as .*02a01Wa\.wav"):
        load_corpus("emodb", tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        corpus = load_corpus("emodb", tmp_path, on_error="skip")
    assert_records_match(corpus, expected, "emodb")  # 03a01Fa, labelled happy, not angry
    assert corpus.skipped[0][0] == str(link)
    assert "the same file as" in corpus.skipped[0][1]


def test_hard_linked_duplicate_is_the_same_file(tmp_path):
    expected = build_emodb(tmp_path)
    os.link(tmp_path / "wav" / "03a01Fa.wav", tmp_path / "wav" / "09a01Fa.wav")
    with pytest.raises(ValueError, match=r"09a01Fa\.wav: the same file as .*\(a hard link\)"):
        load_corpus("emodb", tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        corpus = load_corpus("emodb", tmp_path, on_error="skip")
    assert_records_match(corpus, expected, "emodb")


BROKEN_LINKS = {
    "dangling": (lambda link: "missing.wav", "dangling symbolic link to 'missing.wav'"),
    "loop": (lambda link: link.name, "symbolic link loop"),
}


BROKEN_LINK_SITES = [
    (name, level)
    for name, (_, _, _, subfolder) in sorted(LINK_SITES.items())
    for level in ("file", "folder")
    if level == "file" or subfolder  # EmoDB reads one fixed folder: no subfolder level
]


@pytest.mark.parametrize("kind", sorted(BROKEN_LINKS))
@pytest.mark.parametrize(("name", "level"), BROKEN_LINK_SITES)
def test_broken_links_in_a_tree_are_reported_not_dropped(tmp_path, name, level, kind):
    """Dangling and looping links were left out without a word before."""
    folder, _, free, subfolder = LINK_SITES[name]
    expected = _expected_tree(name, tmp_path)
    at = tmp_path / (f"{folder}/{free}" if level == "file" else subfolder)
    target, reason = BROKEN_LINKS[kind]
    link = write_link(at, target(at))
    with pytest.raises(ValueError, match=rf"{re.escape(str(link))}: {reason}"):
        load_corpus(name, tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        corpus = load_corpus(name, tmp_path, on_error="skip")
    assert_records_match(corpus, expected, name)
    assert [path for path, _ in corpus.skipped] == [str(link)]
    assert reason in corpus.skipped[0][1]


def test_iemocap_utterance_whose_wav_is_a_dangling_link_is_reported(tmp_path):
    expected = build_iemocap(tmp_path)
    four = {u: f for u, f in expected.items() if f["emotion"] in FOUR_CLASSES}
    uid = sorted(four)[0]
    wav = Path(four.pop(uid)["path"])
    wav.unlink()
    write_link(wav, "elsewhere.wav")
    with pytest.raises(ValueError, match=rf"{re.escape(wav.name)}: dangling symbolic link"):
        load_corpus("iemocap", tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        corpus = load_corpus("iemocap", tmp_path, on_error="skip")
    assert_records_match(corpus, four, "iemocap")
