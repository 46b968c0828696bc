"""Cross-corpus evaluation and prediction with a saved model: `qat predict` reproduces the
network's predictions exactly and reports an unreadable file on its own line; `qat evaluate`
writes an eval record whose confusion matrix counts exactly the items kept and which says what
it dropped and why; audio at another sample rate and a missing or corrupt model file get a
message, not a wrong answer."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import test_saved
import torch

from qat import cli, runs
from qat.data.audio import load_audio
from qat.data.features import FeatureConfig
from qat.data.records import Utterance, content_digests, write_manifest
from qat.data.synth import make_synthemo, to_pcm16, write_wav
from qat.evaluate import evaluate_corpus, format_rows, normalise_mapping, parse_mapping
from qat.saved import Prediction, load_model, save_model


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return test_saved.build_model(tmp_path_factory.getbasetemp() / "saved-model")


@pytest.fixture(scope="session")
def other(tmp_path_factory):
    """A second SynthEmo: other seed, speakers and words, and "fearful", which the model (trained
    on neutral/happy/sad/angry) has never seen; no neutral. 2 x 2 x 4 = 16 utterances."""
    root = tmp_path_factory.getbasetemp() / "other-corpus"
    records = make_synthemo(
        root, speakers=("en-us+f4", "en+f2"), words=("river", "seven"),
        emotions=("happy", "sad", "angry", "fearful"), repetitions=1, seed=1, progress=False,
    )  # fmt: skip
    return root, records


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


# ---------------------------------------------------------------- qat predict


def test_qat_predict_scores_each_file_whole_as_the_rule_says(model, capsys):
    code, lines, err = run_cli(capsys, "predict", "--model", model.path, *model.test_files,
                               "--format", "json")  # fmt: skip
    assert code == 0 and err == []
    rows = [json.loads(line) for line in lines]
    assert [r["path"] for r in rows] == model.test_files
    for row, path in zip(rows, model.test_files, strict=True):
        expected, n, silent = test_saved.segment_reference(model, load_audio(path, 16000))
        assert (row["segments"], row["silent_segments"], row["error"]) == (n, silent, None)
        got = np.array(list(row["probabilities"].values()))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert row["emotion"] == model.labels.emotions[int(np.argmax(expected))]


def test_qat_predict_help_says_how_files_are_scored(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "scored whole" in text and "near-silent segments are left out" in text
    assert "averaged" in text and "silent_segments" in text


def test_csv_columns_are_the_same_whatever_the_outcome(model, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    _, good_lines, _ = run_cli(capsys, "predict", "--model", model.path, model.test_files[0])
    code, bad_lines, _ = run_cli(capsys, "predict", "--model", model.path, bad)
    assert code == 1
    header = ["path", "emotion", *model.labels.emotions, "segments", "silent_segments", "error"]
    assert good_lines[0].split(",") == bad_lines[0].split(",") == header
    (row,) = csv.DictReader(bad_lines)
    assert row["emotion"] == "" and "not a readable audio file" in row["error"]


def test_qat_predict_folder_with_one_unreadable_file(model, tmp_path, capsys):
    for path in model.test_files[:3]:
        shutil.copy(path, tmp_path)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00")
    (tmp_path / "notes.txt").write_text("not audio, not listed")
    code, lines, err = run_cli(capsys, "predict", "--model", model.path, tmp_path)
    assert code == 1
    assert err == ["qat: 1 of 4 file(s) could not be predicted"]
    rows = list(csv.DictReader(lines))
    assert len(lines) == 5 and len(rows) == 4  # a header, then one line per audio file
    (bad,) = [r for r in rows if r["path"].endswith("bad.wav")]
    assert bad["emotion"] == "" and "not a readable audio file" in bad["error"]
    good = [r for r in rows if r is not bad]
    assert all(r["emotion"] in model.labels.emotions and r["error"] == "" for r in good)
    assert all(abs(sum(float(r[e]) for e in model.labels.emotions) - 1) < 1e-5 for r in good)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_missing_or_corrupt_model_file_gets_one_line_naming_it(model, other, tmp_path, capsys,
                                                               command):  # fmt: skip
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model.path.read_bytes()[:1000])
    rest = [model.test_files[0]] if command == "predict" else ["--corpus", "synthemo",
                                                                "--root", other[0]]  # fmt: skip
    for path, what in ((tmp_path / "missing.pt", "does not exist"), (corrupt, "truncated")):
        code, lines, err = run_cli(capsys, command, "--model", path, *rest)
        assert code == 2 and lines == [] and len(err) == 1
        assert err[0].startswith(f"qat: error: model file {path} ") and what in err[0]


# ---------------------------------------------------------------- qat evaluate


def test_cross_corpus_record_counts_every_item_kept_and_dropped(model, other, capsys):
    root, records = other
    code, lines, _ = run_cli(capsys, "evaluate", "--model", model.path, "--corpus", "synthemo",
                             "--root", root)  # fmt: skip
    assert code == 0
    path = lines[-1].removeprefix("record: ")
    record = runs.load_record(path)
    assert Path(path) == runs.record_path("eval", record["config"])
    assert record["kind"] == "eval" and record["config"]["corpus"] == "synthemo"
    assert record["config"]["root"] == str(root.resolve())
    assert record["config"]["model"]["run"] == test_saved.RUN
    assert record["labels"]["emotions"] == ["happy", "sad", "angry"]
    assert record["labels"]["model_only"] == ["neutral"]
    items = record["items"]
    fearful = [r.uid for r in records if r.emotion == "fearful"]
    assert items["dropped"] == {
        "fearful: not among the model's emotions": {"count": 4, "uids": fearful}
    }
    assert items["kept"] == 12 and items["total"] == len(records) == 16
    confusion = np.array(record["metrics"]["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == items["kept"]
    assert record["predictions"]["uids"] == [r.uid for r in records if r.emotion != "fearful"]
    assert {"ua", "wa", "macro_f1"} <= set(record["metrics"])
    assert any(line.startswith("dropped 4: fearful") for line in lines)


def test_mapping_silence_and_unreadable_files_are_dropped_with_reasons(model, other, tmp_path):
    _, records = other
    relabelled = [replace(r, emotion="calm") if r.emotion == "happy" else r for r in records]
    quiet, broken = tmp_path / "quiet.wav", tmp_path / "broken.wav"
    write_wav(quiet, to_pcm16(np.zeros(8000)), 16000)
    broken.write_text("not audio")
    extra = [Utterance(str(p), "manifest", "sad", speaker="x", text="w", uid=p.stem)
             for p in (quiet, broken)]  # fmt: skip
    write_manifest(relabelled + extra, tmp_path / "manifest.csv")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        record = evaluate_corpus(model.path, "manifest", tmp_path, {"sad": "sad"}, progress=False)
    dropped = record["items"]["dropped"]
    assert dropped["calm: dropped by the mapping"]["count"] == 4
    assert dropped["fearful: not among the model's emotions"]["count"] == 4
    assert dropped["near-silent"] == {"count": 1, "uids": ["quiet"]}
    (unreadable,) = [v for k, v in dropped.items() if k.startswith("unreadable")]
    assert unreadable["count"] == 1 and "broken.wav" in unreadable["uids"][0]
    kept = record["items"]["kept"]
    assert kept == 8 and record["items"]["total"] == 18
    assert kept + sum(v["count"] for v in dropped.values()) == record["items"]["total"]
    assert np.array(record["metrics"]["confusion"]).sum() == kept
    assert record["labels"]["emotions"] == ["sad", "angry"]
    assert record["labels"]["mapping"]["calm"] is None
    with pytest.warns(UserWarning, match="skipped 1 file"):
        again = evaluate_corpus(model.path, "manifest", tmp_path, {"sad": "sad"}, progress=False)
    assert again["record_path"] == record["record_path"]  # an existing record is reused


def test_features_are_normalised_with_the_models_statistics(model, other):
    root, records = other
    record = evaluate_corpus(model.path, "synthemo", root, progress=False)
    predictor = load_model(model.path)
    kept = [r for r in records if r.emotion != "fearful"]
    probs = predictor.predict_files([r.path for r in kept])
    shared = record["labels"]["emotions"]
    columns = [predictor.emotions.index(e) for e in shared]
    expected = [shared[int(np.argmax(np.array(list(p.probabilities.values()))[columns]))]
                for p in probs]  # fmt: skip
    assert record["predictions"]["emotions"] == expected


def test_corpus_at_another_sample_rate_is_refused_not_resampled(model, other, tmp_path, capsys):
    root, _ = other
    path = tmp_path / "m8k.pt"
    save_model(
        path, model.net, model_config=test_saved.model_config(len(model.labels.emotions)),
        feature_config=FeatureConfig(kind="logmel", segment_seconds=0.5, n_mels=32,
                                     sample_rate=8000),
        normalizer=model.normalizer, label_space=model.labels, run=test_saved.RUN,
    )  # fmt: skip
    code, out, err = run_cli(capsys, "evaluate", "--model", path, "--corpus", "synthemo",
                             "--root", root)  # fmt: skip
    assert code == 2 and out == [] and len(err) == 1
    assert "not at the model's 8000 Hz" in err[0] and "(16000 Hz)" in err[0]
    assert str(root) in err[0] and "--resample" in err[0]


def test_mapping_spellings():
    assert parse_mapping("calm=neutral, boredom=,fear=fearful") == {
        "calm": "neutral", "boredom": None, "fear": "fearful",
    }  # fmt: skip
    assert normalise_mapping({"fear": "afraid", "calm": "neutral"}) == {
        "calm": "neutral", "fearful": "fearful", "boredom": None,
    }  # fmt: skip
    assert normalise_mapping(None) == {"calm": None, "boredom": None}
    with pytest.raises(ValueError, match="'glee' is not an emotion"):
        normalise_mapping({"glee": "happy"})
    with pytest.raises(ValueError, match="EMOTION=MODEL_EMOTION"):
        parse_mapping("calm")


def test_a_mapping_that_gives_one_emotion_two_targets_is_refused():
    with pytest.raises(ValueError, match=r"'angry' is given more than one target"):
        parse_mapping("angry=sad,angry=happy")
    with pytest.raises(ValueError, match=r"'fear' and 'fearful' are both 'fearful'"):
        normalise_mapping({"fear": "sad", "fearful": "happy"})


def test_the_models_own_training_audio_is_refused_unless_allowed_then_flagged(
    model, tmp_path, capsys
):
    train = [r for r in model.records if r.speaker != test_saved.TEST_SPEAKER]
    path = save_model(
        tmp_path / "m.pt", model.net, model_config=test_saved.model_config(4),
        feature_config=test_saved.FEATURES, normalizer=model.normalizer,
        label_space=model.labels, run=test_saved.RUN, trained_on=content_digests(train),
    )  # fmt: skip
    root = Path(model.records[0].path).parents[3]
    argv = ["evaluate", "--model", path, "--corpus", "synthemo", "--root", root]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == [] and len(err) == 1
    assert f"{len(train)} of {len(model.records)} items are audio the model trained" in err[0]
    assert "--allow-overlap" in err[0]
    code, out, _ = run_cli(capsys, *argv, "--allow-overlap")
    assert code == 0
    record = runs.load_record(out[-1].removeprefix("record: "))
    assert record["items"]["overlap"] == {"count": len(train), "uids": [r.uid for r in train]}
    assert any(line.startswith(f"warning: {len(train)} items are audio") for line in out)
    assert record["scoring"]["segments"] == 2 * len(model.records)


def test_probabilities_sum_to_one(model):
    probs = load_model(model.path).predict_features(model.test_x)
    assert torch.allclose(torch.from_numpy(probs).sum(1), torch.ones(len(probs)))


def test_json_lines_are_strict_json_never_bare_nan():
    row = Prediction("a.wav", "happy", {"happy": float("nan"), "sad": 0.5}, None, 2, 0)
    with pytest.raises(ValueError, match="not JSON compliant"):
        format_rows([row], "json")
    good = Prediction("a.wav", "happy", {"happy": 0.75, "sad": 0.25}, None, 2, 1)
    (line,) = format_rows([good], "json")
    assert json.loads(line, parse_constant=pytest.fail)["silent_segments"] == 1
