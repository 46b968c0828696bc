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
from qat.data.dataset import LabelSpace, Normalizer, SERDataset
from qat.data.features import FeatureConfig, extract_features
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


def test_predict_files_reproduces_the_networks_predictions_from_audio(model):
    rows = load_model(model.path).predict_files(model.test_files)
    assert [r.path for r in rows] == model.test_files
    assert all(r.error is None for r in rows)
    expected = model.probabilities.numpy()
    assert [r.emotion for r in rows] == [model.labels.emotions[i] for i in expected.argmax(1)]
    got = np.array([list(r.probabilities.values()) for r in rows], dtype=np.float32)
    assert np.array_equal(got, expected)
    assert list(rows[0].probabilities) == list(model.labels.emotions)


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
        ValueError, match=rf"model file {re.escape(str(path))} .*(written by qat|up to)"
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
