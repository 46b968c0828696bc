"""Saved models: one self-contained file that predicts exactly as the trained network did, on
features and on audio files; a missing, truncated or foreign file, or audio at another sample
rate, gets a message naming the file instead of a wrong answer."""

from __future__ import annotations

import functools
import pickle
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import qat
from qat import paths, runs, saved
from qat.data.audio import AudioError, load_audio
from qat.data.dataset import LabelSpace, Normalizer, SERDataset
from qat.data.features import FeatureConfig, compute_features, extract_features
from qat.data.synth import make_synthemo, to_pcm16, write_wav
from qat.models import RHEmo, vgg16
from qat.saved import load_model, model_path, save_model
from qat.train import TrainConfig, fit, predict

FEATURES = FeatureConfig(kind="logmel", segment_seconds=0.5, n_mels=32)  # the smoke profile's
SPEAKERS = ("en-us+m3", "en+f2", "en+klatt4")
TEST_SPEAKER = "en+klatt4"
RUN = {"corpus": "synthemo", "setup": "speaker", "model": "real", "method": "baseline", "seed": 0}


def model_config(num_classes: int, quaternion: bool = False) -> dict:
    return dict(num_classes=num_classes, in_channels=4 if quaternion else 1,
                quaternion=quaternion, width=1 / 16, hidden=16)  # fmt: skip


@functools.cache
def build_model(base: Path) -> SimpleNamespace:
    """A tiny real VGG16 trained one epoch on a 36-utterance SynthEmo (4 emotions, 3 speakers,
    the third held out for testing), saved; shared by this module and test_evaluate."""
    records = make_synthemo(
        base / "corpus", speakers=SPEAKERS, words=("seven", "water", "morning"),
        emotions=("neutral", "happy", "sad", "angry"), repetitions=1, seed=0, progress=False,
    )  # fmt: skip
    feats = extract_features(records, FEATURES, base / "features", progress=False)
    assert not feats.silent.any()
    test = [i for i, r in enumerate(records) if r.speaker == TEST_SPEAKER]
    train = [i for i, r in enumerate(records) if r.speaker != TEST_SPEAKER]
    labels = LabelSpace.from_records(records)
    normalizer = Normalizer.fit(np.asarray(feats.x), train)
    train_set, test_set = (
        SERDataset(feats.x, records, idx, labels, normalizer) for idx in (train, test)
    )
    torch.manual_seed(0)
    net = vgg16(**model_config(len(labels.emotions)))
    fit(net, train_set, test_set, TrainConfig(epochs=1, batch_size=8), progress=False)
    path = save_model(
        base / "model.pt", net, model_config=model_config(len(labels.emotions)),
        feature_config=FEATURES, normalizer=normalizer, label_space=labels, run=RUN,
    )  # fmt: skip
    probabilities = torch.softmax(predict(net, test_set.x), 1)  # straight from the network
    return SimpleNamespace(
        path=path, net=net, records=records, feats=feats, labels=labels, normalizer=normalizer,
        test_files=[records[i].path for i in test], test_x=np.asarray(feats.x[test]),
        probabilities=probabilities,
    )  # fmt: skip


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return build_model(tmp_path_factory.getbasetemp() / "saved-model")


def test_loaded_model_predicts_exactly_as_the_trained_network(model):
    predictor = load_model(model.path)
    assert predictor.emotions == model.labels.emotions
    assert not predictor.net.training and predictor.rhemo is None
    assert predictor.feature_config == FEATURES and predictor.run == RUN
    probabilities = predictor.predict_features(model.test_x)
    assert torch.equal(torch.from_numpy(probabilities), model.probabilities)


def test_the_centre_segment_reproduces_the_networks_predictions_from_audio(model):
    """whole=False scores what a run's test items are in training: the centre segment."""
    rows = load_model(model.path).predict_files(model.test_files, whole=False)
    assert [r.path for r in rows] == model.test_files
    assert all(r.error is None for r in rows)
    expected = model.probabilities.numpy()
    assert [r.emotion for r in rows] == [model.labels.emotions[i] for i in expected.argmax(1)]
    got = np.array([list(r.probabilities.values()) for r in rows], dtype=np.float32)
    assert np.array_equal(got, expected)
    assert list(rows[0].probabilities) == list(model.labels.emotions)


def segment_reference(model, y: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(mean probabilities, segments scored, silent segments) of a waveform, from the rule
    written out here: windows of the segment length, the first at sample 0, the last ending
    on the last sample, evenly spaced, as few as cover the clip; near-silent ones left out;
    the network's softmax averaged."""
    n, length = len(y), FEATURES.segment_samples
    count = -(-n // length)
    starts = [round(i * (n - length) / (count - 1)) for i in range(count)] if count > 1 else [0]
    windows = [y[s : s + length] for s in starts] if n > length else [y]
    sounding = [w for w in windows if np.max(np.abs(w - w.mean())) >= FEATURES.silence_peak]
    x = np.stack([model.normalizer(compute_features(w, FEATURES)) for w in sounding])
    with torch.no_grad():
        probs = torch.softmax(predict(model.net, torch.from_numpy(x).unsqueeze(1)), 1)
    return probs.mean(0).numpy(), len(sounding), len(windows) - len(sounding)


def test_predict_files_scores_every_segment_of_each_file_and_averages(model):
    rows = load_model(model.path).predict_files(model.test_files)
    for row, path in zip(rows, model.test_files, strict=True):
        expected, n, silent = segment_reference(model, load_audio(path, 16000))
        assert row.error is None and (row.segments, row.silent_segments) == (n, silent)
        assert n == 2  # a 1 s clip, 0.5 s segments
        got = np.array(list(row.probabilities.values()))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert row.emotion == model.labels.emotions[int(np.argmax(expected))]


def _seven_seconds(model) -> np.ndarray:
    return np.concatenate([load_audio(p, 16000) for p in model.test_files[:7]])


def test_classify_file_scores_every_segment_of_a_7_s_clip(model, tmp_path, monkeypatch):
    y = _seven_seconds(model)
    path = tmp_path / "seven.wav"
    write_wav(path, to_pcm16(y), 16000)
    y = load_audio(path, 16000)
    predictor = load_model(model.path)
    scored = []
    real = predictor.predict_features
    monkeypatch.setattr(predictor, "predict_features", lambda x: scored.append(len(x)) or real(x))
    probabilities, score, index, labels = predictor.classify_file(path)  # SpeechBrain's order
    assert scored == [14]  # 7 s in 0.5 s segments, every one scored
    expected, n, silent = segment_reference(model, y)
    assert (n, silent) == (14, 0)
    np.testing.assert_allclose(probabilities.numpy()[0], expected, rtol=0, atol=1e-6)
    assert score.item() == pytest.approx(float(expected.max()), abs=1e-6)
    assert labels == [model.labels.emotions[int(index.item())]]
    assert labels == [model.labels.emotions[int(np.argmax(expected))]]


def test_classify_batch_takes_waveforms_of_any_length_at_their_rate(model):
    predictor = load_model(model.path)
    seven, one = _seven_seconds(model), load_audio(model.test_files[0], 16000)
    out = predictor.classify_batch([seven, one], 16000)
    assert out.probabilities.shape == (2, len(model.labels.emotions))
    for row, y in zip(out.probabilities.numpy(), (seven, one), strict=True):
        np.testing.assert_allclose(row, segment_reference(model, y)[0], rtol=0, atol=1e-6)
    same = predictor.classify_batch(torch.from_numpy(np.stack([one, one])), 16000)
    np.testing.assert_allclose(same.probabilities.numpy()[0], out.probabilities.numpy()[1],
                               rtol=0, atol=1e-6)  # fmt: skip
    at_8k = predictor.classify_batch(one[::2], 8000)  # resampled to the model's 16 kHz
    assert at_8k.probabilities.shape == (1, len(model.labels.emotions))
    with pytest.raises(AudioError, match="waveform 1: empty, or holds NaN"):
        predictor.classify_batch([one, np.full(100, np.nan)], 16000)
    with pytest.raises(AudioError, match="waveform 0: near-silent"):
        predictor.classify_batch(np.zeros(16000), 16000)


def test_silent_segments_are_never_scored(model, tmp_path):
    """Two 10 s files with speech in their first second only: each is scored on its speech
    (its silent centre, once the whole answer, is left out), so they differ."""
    rows = []
    for i, source in enumerate(model.test_files[:2]):
        speech = load_audio(source, 16000)
        path = tmp_path / f"late_silence_{i}.wav"
        write_wav(path, to_pcm16(np.concatenate([speech, np.zeros(9 * 16000)])), 16000)
        (row,) = load_model(model.path).predict_files([path])
        expected, _, _ = segment_reference(model, load_audio(path, 16000))
        assert (row.segments, row.silent_segments) == (2, 18)
        np.testing.assert_allclose(list(row.probabilities.values()), expected, atol=1e-6)
        rows.append(row)
    assert rows[0].probabilities != rows[1].probabilities


def test_one_unreadable_file_gets_its_error_and_the_others_are_predicted(model, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    files = [model.test_files[0], str(bad), str(tmp_path / "missing.wav"), model.test_files[1]]
    rows = load_model(model.path).predict_files(files)
    assert [r.path for r in rows] == files
    assert rows[0].emotion and rows[3].emotion and rows[0].error is None
    assert rows[1].emotion is None and "not a readable audio file" in rows[1].error
    assert "does not exist" in rows[2].error


def test_quaternion_model_carries_its_rhemo(model, tmp_path):
    torch.manual_seed(1)
    rhemo = RHEmo(4, pools=((2, 1), (1, 1), (1, 1)))
    net = vgg16(**model_config(4, quaternion=True))
    x = torch.from_numpy(model.normalizer(model.test_x)).unsqueeze(1)
    rhemo.train()(x)  # move the batch-norm running statistics off their initial values
    net.train()(rhemo.encode(x).detach())
    path = save_model(
        tmp_path / "q.pt", net, model_config=model_config(4, quaternion=True),
        feature_config=FEATURES, normalizer=model.normalizer, label_space=model.labels,
        rhemo=rhemo, run={**RUN, "model": "quaternion"},
    )  # fmt: skip
    predictor = load_model(path)
    assert predictor.rhemo is not None and not predictor.rhemo.training
    assert saved.rhemo_config(predictor.rhemo) == saved.rhemo_config(rhemo)
    with torch.no_grad():
        expected = torch.softmax(predict(net, rhemo.eval().encode(x)), 1)
    assert torch.equal(torch.from_numpy(predictor.predict_features(model.test_x)), expected)


def test_model_file_holds_only_plain_data(model):
    payload = torch.load(model.path, weights_only=True)  # no pickled class needed
    assert payload["format"] == saved.FORMAT and payload["format_version"] == saved.FORMAT_VERSION
    assert set(payload) >= {"model", "features", "normalizer", "labels", "rhemo", "run"}
    assert payload["model"]["config"]["num_classes"] == len(model.labels.emotions)


def test_missing_model_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt does not exist; expected a model"):
        load_model(missing)


@pytest.mark.parametrize(
    "damage",
    ["truncated", "text", "foreign pickle", "plain state dict", "wrong version", "bad weights"],
)
def test_damaged_or_foreign_model_file_is_named(model, tmp_path, damage):
    path = tmp_path / "model.pt"
    good = model.path.read_bytes()
    payload = torch.load(model.path, weights_only=True)
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "text":
        path.write_text("hello")
    elif damage == "foreign pickle":
        path.write_bytes(pickle.dumps(SimpleNamespace(a=1), protocol=2))
    elif damage == "plain state dict":
        torch.save(model.net.state_dict(), path)
    elif damage == "wrong version":
        torch.save({**payload, "format_version": saved.FORMAT_VERSION + 1}, path)
    else:
        payload["model"]["state_dict"].popitem()
        torch.save(payload, path)
    with pytest.raises(
        ValueError, match=rf"model file {re.escape(str(path))} .*(written by qat|up to|pickled)"
    ):
        load_model(path)


def test_audio_at_another_sample_rate_is_an_error_not_a_silent_resample(model, tmp_path):
    path = tmp_path / "m8k.pt"
    eight_k = FeatureConfig(kind="logmel", segment_seconds=0.5, n_mels=32, sample_rate=8000)
    save_model(
        path, model.net, model_config=model_config(len(model.labels.emotions)),
        feature_config=eight_k, normalizer=model.normalizer, label_space=model.labels, run=RUN,
    )  # fmt: skip
    predictor = load_model(path)
    rows = predictor.predict_files(model.test_files[:2])
    assert all(r.emotion is None for r in rows)
    assert "sample rate 16000 Hz" in rows[0].error and "8000 Hz" in rows[0].error
    assert all(r.error is None for r in predictor.predict_files(model.test_files[:2], True))


def test_near_silent_file_is_not_classified(model, tmp_path):
    quiet = tmp_path / "quiet.wav"
    write_wav(quiet, to_pcm16(np.zeros(8000)), 16000)
    (row,) = load_model(model.path).predict_files([quiet])
    assert row.emotion is None and "near-silent" in row.error


def test_save_refuses_a_label_space_that_does_not_match_the_network(model, tmp_path):
    with pytest.raises(ValueError, match="num_classes=3 but the label space has 4"):
        save_model(
            tmp_path / "x.pt", vgg16(3, width=1 / 16, hidden=16), model_config=model_config(3),
            feature_config=FEATURES, normalizer=model.normalizer, label_space=model.labels,
            run=RUN,
        )  # fmt: skip
    assert not (tmp_path / "x.pt").exists()


def test_models_live_in_the_cache():
    key = {"corpus": "synthemo", "seed": 3}
    assert model_path(key) == paths.CACHE / "models" / f"ser-{runs.config_key(key)}.pt"


def test_qat_load_model_without_importing_torch_at_import_qat():
    assert qat.load_model is load_model
    code = "import sys, qat; assert 'torch' not in sys.modules; assert callable(qat.__getattr__)"
    subprocess.run([sys.executable, "-c", code], check=True)


class _Payload:
    """Unpickling this runs Path.touch(marker): harmless, and visible if it ever runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["model", "rhemo"])
def test_a_model_file_that_carries_code_is_refused_never_run(model, tmp_path, kind):
    marker = tmp_path / "code-ran"
    payload = torch.load(model.path, weights_only=True)
    if kind == "rhemo":
        payload = {**payload, "format": saved.RHEMO_FORMAT, "source": _Payload(marker)}
    else:
        payload["run"] = _Payload(marker)
    path = tmp_path / f"{kind}.pt"
    torch.save(payload, path)
    load = load_model if kind == "model" else saved.load_rhemo
    with pytest.raises(ValueError, match=r"pickled Python objects.*never runs.*convert it once"):
        load(path)
    assert not marker.exists()


def test_a_rerun_writes_its_model_beside_never_over_the_earlier_one(model, tmp_path):
    path = tmp_path / "models" / "ser-x.pt"
    args = dict(model_config=model_config(len(model.labels.emotions)), feature_config=FEATURES,
                normalizer=model.normalizer, label_space=model.labels, run=RUN)  # fmt: skip
    first = save_model(path, model.net, **args, beside=True)
    before = first.read_bytes()
    torch.manual_seed(5)
    other = vgg16(**model_config(len(model.labels.emotions)))
    second = save_model(path, other, **args, beside=True)
    assert first == path and second != path and second.parent == path.parent
    assert first.read_bytes() == before
    assert load_model(second).net.state_dict().keys() == other.state_dict().keys()
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([first.name, second.name])


def test_records_name_models_relative_to_the_cache_and_old_absolute_names_still_load(
    model, tmp_path, monkeypatch
):
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")
    inside = tmp_path / "cache" / "models" / "ser-x.pt"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(model.path.read_bytes())
    assert saved.stored_path(inside) == "models/ser-x.pt"
    assert saved.stored_path(model.path) == str(model.path)  # outside the cache: absolute
    assert saved.resolve_stored("models/ser-x.pt") == inside
    assert saved.resolve_stored(str(model.path)) == model.path
    # An absolute name from another machine's cache reads as this cache's file.
    elsewhere = "/another/machine/qat/cache/models/ser-x.pt"
    assert saved.resolve_stored(elsewhere) == inside
    monkeypatch.chdir(tmp_path)  # a relative name found nowhere from here: the cache's
    assert load_model("models/ser-x.pt").path == inside.resolve()
    assert load_model(str(model.path)).path == model.path.resolve()


def test_a_full_disk_while_saving_a_model_says_so_and_leaves_nothing(model, tmp_path, monkeypatch):
    import errno
    import os

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    path = tmp_path / "m.pt"
    with pytest.raises(OSError, match=r"could not write .*m\.pt: No space left on device"):
        save_model(
            path, model.net, model_config=model_config(len(model.labels.emotions)),
            feature_config=FEATURES, normalizer=model.normalizer, label_space=model.labels,
            run=RUN,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_the_model_file_records_what_it_trained_on(model, tmp_path):
    digests = ["ab" * 32, "cd" * 32]
    path = save_model(
        tmp_path / "m.pt", model.net, model_config=model_config(len(model.labels.emotions)),
        feature_config=FEATURES, normalizer=model.normalizer, label_space=model.labels,
        run=RUN, trained_on=digests[::-1],
    )  # fmt: skip
    assert load_model(path).trained_on == frozenset(digests)
    assert load_model(model.path).trained_on == frozenset()  # saved with none given


def test_a_forced_rerun_never_changes_the_model_an_earlier_record_names(tmp_path, monkeypatch):
    from qat import experiments
    from qat.config import RunConfig

    monkeypatch.setattr(paths, "REPORTS", tmp_path / "reports")
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")
    config = RunConfig(setup="random", profile="smoke")
    first = experiments.train_ser(config, progress=False)
    assert first["model"] == f"models/ser-{config.key()}.pt"  # relative to the cache root
    before = (tmp_path / "cache" / first["model"]).read_bytes()
    second = experiments.train_ser(config, force=True, progress=False)
    assert second["model"] != first["model"] and second["model"].startswith("models/ser-")
    assert (tmp_path / "cache" / first["model"]).read_bytes() == before
    assert load_model(second["model"]).path == (tmp_path / "cache" / second["model"]).resolve()
    assert experiments.train_ser(config, progress=False)["model"] == first["model"]
    seen = load_model(first["model"]).trained_on  # the run's training and validation audio
    assert len(seen) == first["split"]["sizes"]["train"] + first["split"]["sizes"]["val"]
