"""SynthEmo: determinism, layout, prosody that is audible, reuse, and input checking."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qat.data import espeak, synth
from qat.data.audio import resample
from qat.data.espeak import list_voices
from qat.data.synth import (
    DEFAULT_SPEAKERS,
    DEFAULT_WORDS,
    JITTER,
    MORE_SPEAKERS,
    PROSODY,
    VAD,
    Prosody,
    draw_prosody,
    make_orthogonal_corpus,
    make_synthemo,
    place,
    speaker_dirname,
    to_pcm16,
    trim_silence,
    white_noise,
    write_wav,
)

SMALL = dict(
    speakers=["en-us+m3", "en+f2"],
    words=["seven", "water", "morning"],
    emotions=["happy", "sad", "angry"],
    repetitions=2,
    progress=False,
)
TINY = dict(speakers=["en-us+m3"], words=["seven"], emotions=["neutral"], repetitions=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The SMALL corpus built with one worker (seed 0), with two workers (seed 0), and with one
    worker and seed 1."""
    dirs = {k: tmp_path_factory.mktemp(k) for k in ("w1", "w2", "seed1")}
    return {
        "w1": (dirs["w1"], make_synthemo(dirs["w1"], workers=1, seed=0, **SMALL)),
        "w2": (dirs["w2"], make_synthemo(dirs["w2"], workers=2, seed=0, **SMALL)),
        "seed1": (dirs["seed1"], make_synthemo(dirs["seed1"], workers=1, seed=1, **SMALL)),
    }


def corpus_files(root: Path) -> dict[str, bytes]:
    """Every file of a corpus (wavs, manifest, prosody, config) by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def wav_bytes(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in corpus_files(root).items() if k.endswith(".wav")}


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_corpus_with_one_or_two_workers(built):
    (dir1, recs1), (dir2, recs2) = built["w1"], built["w2"]
    files1, files2 = corpus_files(dir1), corpus_files(dir2)
    assert len(wav_bytes(dir1)) == 2 * 3 * 3 * 2
    assert files1.keys() == files2.keys()
    for name in files1:
        assert files1[name] == files2[name], name
    assert [r.uid for r in recs1] == [r.uid for r in recs2]


def test_rebuilding_with_the_same_seed_reproduces_the_files(built, tmp_path):
    make_synthemo(tmp_path, workers=1, seed=0, **SMALL)
    assert wav_bytes(tmp_path) == wav_bytes(built["w1"][0])


def test_different_seed_gives_different_audio_and_prosody(built):
    a, b = wav_bytes(built["w1"][0]), wav_bytes(built["seed1"][0])
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)
    prosody_a = (built["w1"][0] / "prosody.csv").read_text()
    prosody_b = (built["seed1"][0] / "prosody.csv").read_text()
    assert prosody_a != prosody_b


def test_a_fresh_engine_forgets_what_the_previous_one_said(tmp_path):
    # eSpeak keeps state across calls within one engine; the factory must hand out clean ones
    library, data = espeak.espeak_paths()
    factory = espeak.EngineFactory(library, data, tmp_path)
    args = ("water", "en-us+m3", Prosody(175, 50, 50, 100), 7)
    with factory.open() as engine:
        first = engine.synthesise(*args)
        again = engine.synthesise(*args)
    with factory.open() as engine:
        engine.synthesise("morning", "en+f2", Prosody(230, 70, 20, 150), 3)
    with factory.open() as engine:
        fresh = engine.synthesise(*args)
    assert engine.sample_rate == 22050
    assert first.dtype == np.int16 and len(first) > 2000
    assert not np.array_equal(first, again)  # the history matters within one engine ...
    assert np.array_equal(first, fresh)  # ... but never across engines


# --- layout and records -------------------------------------------------------------------------


def test_every_speaker_word_emotion_repetition_is_present_exactly_once(built):
    root, records = built["w1"]
    keys = Counter((r.speaker, r.text, r.emotion, Path(r.path).stem) for r in records)
    expected = {
        (s, w, e, f"{w}_{rep}")
        for s in SMALL["speakers"]
        for w in SMALL["words"]
        for e in SMALL["emotions"]
        for rep in range(SMALL["repetitions"])
    }
    assert set(keys) == expected and set(keys.values()) == {1}
    assert len({r.uid for r in records}) == len(records)
    wavs = {p.resolve() for p in (root / "wav").rglob("*.wav")}
    assert wavs == {Path(r.path) for r in records}


def test_records_carry_labels_vad_and_layout(built):
    root, records = built["w1"]
    for r in records:
        assert r.corpus == "synthemo" and r.label == r.emotion
        assert (r.valence, r.arousal, r.dominance) == VAD[r.emotion]
        rel = Path(r.path).relative_to(root)
        assert rel.parts == ("wav", speaker_dirname(r.speaker), r.emotion, rel.name)
        assert r.uid == rel.with_suffix("").as_posix()
        assert r.duration == 1.0


def test_manifest_lists_the_records_in_order(built):
    root, records = built["w1"]
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["path"] for row in rows] == [os.path.relpath(r.path, root) for r in records]
    assert [(row["speaker"], row["text"], row["emotion"]) for row in rows] == [
        (r.speaker, r.text, r.emotion) for r in records
    ]
    assert [float(row["valence"]) for row in rows] == [r.valence for r in records]


def test_wavs_are_mono_pcm16_at_the_requested_rate_and_duration(built, tmp_path):
    for record in built["w1"][1]:
        info = sf.info(record.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == 16000
    records = make_synthemo(
        tmp_path, **TINY, duration=0.6, sample_rate=8000, noise_dbfs=None, progress=False
    )
    info = sf.info(records[0].path)
    assert (info.samplerate, info.frames) == (8000, 4800)
    assert records[0].duration == pytest.approx(0.6)


def test_prosody_csv_records_in_range_integer_controls(built):
    root, records = built["w1"]
    with open(root / "prosody.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["uid"] for row in rows] == [r.uid for r in records]
    for row in rows:
        for field, (low, high) in zip(Prosody._fields, synth.PROSODY_LIMITS, strict=True):
            assert low <= int(row[field]) <= high
        assert -50 <= float(row["noise_dbfs"]) <= -32
        assert 0 <= float(row["offset_s"]) < 1.0


# --- the emotions are audible -------------------------------------------------------------------


def speech_features(path: str) -> tuple[float, float, float]:
    """(RMS of the loud frames, median F0 of the loud frames in Hz, seconds of loud frames)."""
    import librosa

    x, sr = sf.read(path)
    frames = librosa.util.frame(x, frame_length=640, hop_length=160)
    rms = np.sqrt((frames**2).mean(axis=0))
    loud = rms > 0.1 * rms.max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f0 = librosa.yin(
            x, fmin=60, fmax=450, sr=sr, frame_length=640, hop_length=160, center=False
        )
    return float(rms[loud].mean()), float(np.median(f0[loud])), loud.sum() * 160 / sr


@pytest.mark.parametrize("speaker", SMALL["speakers"])
def test_angry_is_louder_faster_and_happy_higher_than_sad(built, speaker):
    by_emotion: dict[str, list] = {}
    for r in built["w1"][1]:
        if r.speaker == speaker:
            by_emotion.setdefault(r.emotion, []).append(speech_features(r.path))
    mean = {e: np.mean(v, axis=0) for e, v in by_emotion.items()}
    assert mean["angry"][0] > 1.3 * mean["sad"][0]  # volume 135 vs 75
    assert mean["happy"][1] > 1.1 * mean["sad"][1]  # pitch 64 vs 40
    assert mean["sad"][2] > 1.1 * mean["angry"][2]  # 145 vs 205 words per minute


# --- reuse and rebuild --------------------------------------------------------------------------


def mtimes(root: Path) -> dict[str, int]:
    return {p.as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_reuse_returns_identical_records_without_rewriting(built):
    root, records = built["w1"]
    before = mtimes(root)
    again = make_synthemo(root, workers=2, seed=0, **SMALL)  # workers do not enter the config
    assert again == records
    assert mtimes(root) == before


def test_changed_config_rebuilds_without_mixing(tmp_path):
    first = make_synthemo(tmp_path, **{**TINY, "words": ["seven", "water"]}, progress=False)
    second = make_synthemo(tmp_path, **{**TINY, "words": ["water", "river"]}, progress=False)
    names = sorted(p.name for p in (tmp_path / "wav").rglob("*.wav"))
    assert names == ["river_0.wav", "water_0.wav"]
    assert [r.text for r in second] == ["water", "river"] and first[0].text == "seven"
    config = json.loads((tmp_path / "synthemo_config.json").read_text())
    assert config["complete"] and config["config"]["words"] == ["water", "river"]
    with open(tmp_path / "manifest.csv", newline="") as fh:
        assert [row["text"] for row in csv.DictReader(fh)] == ["water", "river"]


def test_a_missing_file_triggers_an_identical_rebuild(tmp_path):
    records = make_synthemo(tmp_path, **{**TINY, "repetitions": 2}, progress=False)
    original = Path(records[1].path).read_bytes()
    Path(records[1].path).unlink()
    assert make_synthemo(tmp_path, **{**TINY, "repetitions": 2}, progress=False) == records
    assert Path(records[1].path).read_bytes() == original


def test_refuses_to_clear_a_wav_folder_it_did_not_write(tmp_path):
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav" / "mine.wav").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="out_dir"):
        make_synthemo(tmp_path, **TINY, progress=False)
    assert (tmp_path / "wav" / "mine.wav").read_bytes() == b"not ours"


def test_orthogonal_corpus_is_neutral_and_not_a_copy_of_synthemo(tmp_path):
    kwargs = dict(speakers=["en-us+m3", "en+f2"], words=["seven", "water"], repetitions=2)
    ortho = make_orthogonal_corpus(tmp_path / "o", **kwargs, progress=False)
    emo = make_synthemo(tmp_path / "e", **kwargs, emotions=["neutral"], progress=False)
    assert {r.emotion for r in ortho} == {"neutral"} and {r.corpus for r in ortho} == {
        "synthemo_orthogonal"
    }
    assert [r.uid for r in ortho] == [r.uid for r in emo]
    for a, b in zip(ortho, emo, strict=True):
        assert Path(a.path).read_bytes() != Path(b.path).read_bytes()


# --- voices -------------------------------------------------------------------------------------


def test_default_voices_exist_and_load(tmp_path):
    assert len(DEFAULT_SPEAKERS) == 12 and len(set(MORE_SPEAKERS)) == 24
    assert set(DEFAULT_SPEAKERS) <= set(MORE_SPEAKERS)
    assert {"m3", "f2", "klatt4"} <= set(list_voices())
    synth._check_speakers(MORE_SPEAKERS)
    library, data = espeak.espeak_paths()
    version = synth._check_voices_load(MORE_SPEAKERS, espeak.EngineFactory(library, data, tmp_path))
    assert version[:1].isdigit()


def test_speaker_dirname_is_path_safe():
    assert speaker_dirname("en-us+m3") == "en-us_m3"
    assert speaker_dirname("en+Mr serious") == "en_Mr_serious"


def test_defaults_match_the_design():
    assert len(DEFAULT_WORDS) == 40 == len(set(DEFAULT_WORDS))
    assert PROSODY["angry"] == (205, 60, 72, 135) and PROSODY["sad"] == (145, 40, 28, 75)
    assert JITTER == (15, 6, 10, 15)
    # Mehrabian's octants relative to neutral: anger -P+A+D, fear -P+A-D, joy +P+A+D, sad -P-A-D
    signs = {"angry": (-1, 1, 1), "fearful": (-1, 1, -1), "happy": (1, 1, 1), "sad": (-1, -1, -1)}
    for emotion, expected in signs.items():
        got = np.sign(np.subtract(VAD[emotion], VAD["neutral"]))
        assert tuple(got) == expected, emotion
    assert all(0 <= v <= 1 for vad in VAD.values() for v in vad)


# --- the signal pieces, against explicit references ---------------------------------------------


def test_draw_prosody_is_mean_plus_jitter_clipped_and_rounded():
    mean, jitter = Prosody(200, 95, 50, 100), Prosody(15, 10, 10, 15)
    rng, reference_rng = np.random.default_rng(3), np.random.default_rng(3)
    draws = np.array([draw_prosody(mean, jitter, rng) for _ in range(3000)])
    z = reference_rng.standard_normal((3000, 4))
    expected = np.rint(
        np.clip(np.add(mean, np.multiply(jitter, z)), [80, 0, 0, 0], [450, 100, 100, 200])
    )
    np.testing.assert_array_equal(draws, expected)
    assert draws[:, 1].max() == 100  # pitch clipped at the engine's maximum
    assert abs(draws[:, 0].mean() - 200) < 4 * 15 / math.sqrt(3000)
    assert draws[:, 0].std() == pytest.approx(15, rel=0.06)


def test_trim_silence_keeps_everything_within_50_db_of_the_peak():
    audio = np.zeros(100)
    audio[[10, 20, 50, 90]] = [0.002, 0.004, -1.0, 0.0031]  # -54, -48, 0, -50.2 dB
    trimmed = trim_silence(audio)
    np.testing.assert_array_equal(trimmed, audio[20:51])
    assert len(trim_silence(np.zeros(10))) == 0


def test_place_pads_at_a_random_offset_or_crops_a_random_window():
    rng = np.random.default_rng(0)
    speech = np.arange(1, 31, dtype=float)
    offsets = set()
    for _ in range(300):
        clip, offset = place(speech, 40, rng)
        assert len(clip) == 40 and 0 <= offset <= 10
        np.testing.assert_array_equal(clip[offset : offset + 30], speech)
        assert clip.sum() == speech.sum()
        offsets.add(offset)
    assert offsets == set(range(11))  # every offset reachable
    clip, offset = place(speech, 12, rng)
    np.testing.assert_array_equal(clip, speech[-offset : -offset + 12])


def test_white_noise_has_the_requested_rms_level():
    noise = white_noise(200_000, -30.0, np.random.default_rng(1))
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(10 ** (-30 / 20), rel=0.01)
    assert abs(noise.mean()) < 5 * 10 ** (-30 / 20) / math.sqrt(200_000)


def test_resample_matches_an_analytic_sine():
    t_in = np.arange(11025) / 22050
    out = resample(0.5 * np.sin(2 * np.pi * 440 * t_in), 22050, 16000)
    assert len(out) == 8000 and out.dtype == np.float64
    t_out = np.arange(len(out)) / 16000
    middle = slice(500, len(out) - 500)
    np.testing.assert_allclose(
        out[middle], 0.5 * np.sin(2 * np.pi * 440 * t_out[middle]), atol=2e-3
    )


def test_wav_round_trip_is_exact_and_clips(tmp_path):
    audio = np.random.default_rng(2).uniform(-1.2, 1.2, 1000)
    pcm = to_pcm16(audio)
    write_wav(tmp_path / "x.wav", pcm, 16000)
    back, sr = sf.read(tmp_path / "x.wav", dtype="int16")
    assert sr == 16000
    np.testing.assert_array_equal(back, pcm)
    np.testing.assert_array_equal(pcm, np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16))
    assert not list(tmp_path.glob("*.tmp"))


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"speakers": ["en-us+nosuch"]}, r"speakers.*'en-us\+nosuch'"),
        ({"speakers": ["xx+m3"]}, r"speakers.*'xx\+m3'"),
        ({"speakers": []}, "speakers"),
        ({"speakers": ["en+m3", "en+m3"]}, "speakers.*unique"),
        ({"emotions": ["disgust"]}, "emotions.*'disgust'.*prosody"),
        ({"emotions": ["bored"], "prosody": {"bored": (150, 40, 20, 80)}}, "emotions.*'bored'"),
        ({"emotions": []}, "emotions"),
        ({"words": []}, "words"),
        ({"words": ["two words"]}, "words.*'two words'"),
        ({"words": ["seven", "Seven"]}, "words.*unique"),
        ({"repetitions": 0}, "repetitions=0"),
        ({"repetitions": 1.5}, r"repetitions=1\.5"),
        ({"duration": 0}, "duration=0"),
        ({"duration": -1.0}, r"duration=-1\.0"),
        ({"duration": float("nan")}, "duration=nan"),
        ({"noise_dbfs": (-10, -20)}, "noise_dbfs"),
        ({"jitter": (1, 2, 3)}, "jitter"),
        ({"prosody": {"neutral": (175, 50, 50, 500)}}, "volume=500"),
        ({"workers": 0}, "workers=0"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_bad_input_raises_value_error_naming_the_parameter(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        make_synthemo(tmp_path, **{**TINY, **override}, progress=False)
    assert not (tmp_path / "wav").exists()


def test_missing_library_raises_runtime_error_naming_the_path(tmp_path, monkeypatch):
    _, data = espeak.espeak_paths()
    missing = tmp_path / "no-such-libespeak.so"
    monkeypatch.setattr(espeak, "espeak_paths", lambda: (missing, data))
    with pytest.raises(RuntimeError, match=re.escape(str(missing))):
        make_synthemo(tmp_path / "out", **TINY, progress=False)
    not_a_library = tmp_path / "fake.so"
    not_a_library.write_text("not a shared object")
    with pytest.raises(RuntimeError, match=re.escape(str(not_a_library))):
        espeak._load_library(not_a_library)


# --- the kit never loses a user's files -------------------------------------------------------


@pytest.mark.parametrize("users_file", ["manifest.csv", "prosody.csv", "synthemo_config.json"])
@pytest.mark.parametrize("build", [make_synthemo, make_orthogonal_corpus])
def test_refuses_a_folder_holding_a_users_file_it_would_overwrite(tmp_path, users_file, build):
    (tmp_path / users_file).write_text("path,emotion\nmine.wav,happy\n")
    (tmp_path / "prosody.csv").write_text("the user's own table\n")
    before = corpus_files(tmp_path)
    tiny = {k: v for k, v in TINY.items() if k != "emotions"}
    with pytest.raises(ValueError, match=r"out_dir=.*was not written by make_synthemo"):
        build(tmp_path, **tiny, progress=False)
    assert corpus_files(tmp_path) == before and not (tmp_path / "wav").exists()


def test_refuses_a_non_empty_folder_that_holds_no_synthemo(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"out_dir=.* is not empty \(notes\.txt\)"):
        make_synthemo(tmp_path, **TINY, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match=r"out_dir=.*a-file.* is a file"):
        make_synthemo(tmp_path / "a-file", **TINY, progress=False)


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_out_dir_is_an_error_not_the_current_folder(tmp_path, monkeypatch, empty):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"out_dir='\s*': expected a folder path"):
        make_synthemo(empty, **TINY, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_rebuilding_with_another_seed_deletes_only_its_own_files(tmp_path):
    first = make_synthemo(tmp_path, **{**TINY, "repetitions": 2}, progress=False)
    mine = {
        tmp_path / "README.txt": b"my notes",
        tmp_path / "wav" / "mine.wav": b"my recording",
        tmp_path / "wav" / "en-us_m3" / "neutral" / "extra_0.wav": b"another one",
        tmp_path / "wav" / "my-folder" / "take.wav": b"and one more",
    }
    for path, data in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    second = make_synthemo(tmp_path, **{**TINY, "repetitions": 2}, seed=1, progress=False)
    assert [r.path for r in second] == [r.path for r in first]
    assert all(path.read_bytes() == data for path, data in mine.items())
    config = json.loads((tmp_path / "synthemo_config.json").read_text())
    assert config["complete"] and config["config"]["seed"] == 1
    # a smaller corpus: the files and folders of the old one go, the user's stay
    make_synthemo(
        tmp_path,
        **{**TINY, "speakers": ["en+f2"], "words": ["water"], "emotions": ["sad"]},
        progress=False,
    )
    wavs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.wav"))
    assert wavs == [
        "wav/en-us_m3/neutral/extra_0.wav",
        "wav/en_f2/sad/water_0.wav",
        "wav/mine.wav",
        "wav/my-folder/take.wav",
    ]


def test_refuses_to_overwrite_a_users_file_at_a_new_utterance_path(tmp_path):
    make_synthemo(tmp_path, **TINY, progress=False)
    users = tmp_path / "wav" / "en-us_m3" / "neutral" / "water_0.wav"
    users.write_bytes(b"the user's water")
    with pytest.raises(ValueError, match=r"water_0\.wav exists and is not part of the SynthEmo"):
        make_synthemo(tmp_path, **{**TINY, "words": ["seven", "water"]}, progress=False)
    assert users.read_bytes() == b"the user's water"


CONCURRENT_CHILD = """
import sys
from qat.data.synth import make_synthemo

if __name__ == "__main__":
    records = make_synthemo(
        sys.argv[1], speakers=["en-us+m3"], words=["seven", "water", "river"],
        emotions=["neutral", "sad"], repetitions=6, workers=1, progress=False,
    )
    print(len(records), "records")
"""


def test_two_builds_into_one_new_folder_take_turns(tmp_path):
    from process_tools import spawn

    out = tmp_path / "corpus"
    logs = [tmp_path / f"child{i}.log" for i in range(2)]
    children = [spawn(CONCURRENT_CHILD, out, log=log) for log in logs]
    for child, log in zip(children, logs, strict=True):
        assert child.wait(timeout=240) == 0, log.read_text()
        assert "36 records" in log.read_text()
    config = json.loads((out / "synthemo_config.json").read_text())
    assert config["complete"]
    assert len(list(out.rglob("*.wav"))) == 36
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


KILLED_CHILD = """
import sys
from qat.data.synth import DEFAULT_WORDS, make_synthemo

if __name__ == "__main__":
    make_synthemo(
        sys.argv[1], speakers=["en-us+m3", "en+f2"], words=DEFAULT_WORDS[:20],
        emotions=["neutral", "happy", "sad", "angry", "fearful"], repetitions=4, workers=2,
        progress=False,
    )
"""


def test_a_killed_build_leaves_no_orphan_and_the_next_start_cleans_up(tmp_path, monkeypatch):
    import tempfile

    from process_tools import kill_and_list_survivors, spawn, wait_until

    out, scratch, log = tmp_path / "corpus", tmp_path / "tmp", tmp_path / "child.log"
    scratch.mkdir()
    child = spawn(KILLED_CHILD, out, log=log, env={"TMPDIR": str(scratch)})
    wait_until(lambda: any((out / "wav").rglob("*.wav")), child, log)
    assert kill_and_list_survivors(child) == []  # the workers ended with their parent
    left = list(scratch.glob(f"qat-espeak-{child.pid}-*"))
    assert left, "expected the killed run's engine folder (the case to clean up)"
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    records = make_synthemo(out, **TINY, progress=False)  # the next start
    assert not any(p.exists() for p in left)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert sorted(out.rglob("*.wav")) == [Path(r.path) for r in records]  # killed build's gone
