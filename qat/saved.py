"""Saved SER models: one self-contained file per trained network, and `load_model`, which turns
it back into a Predictor ready for new audio.

A model file is `torch.save` of a plain dict (tensors, numbers, strings, lists) and is read with
`torch.load(weights_only=True)`: loading runs no pickled code, so a model file from someone else
is data, not a program. It holds what prediction needs and nothing of the training:

    format, format_version     "qat-model", FORMAT_VERSION
    model                      {"config": vgg16's keyword arguments, "state_dict": weights}
    features, feature_version  the FeatureConfig (as a dict) and the feature code's version
    normalizer                 the training statistics ({"mean", "std"} per bin)
    labels                     the LabelSpace (emotions in class-index order, speakers, words)
    rhemo                      None, or the frozen RH-emo a quaternion network reads:
                               {"config": RHEmo's keyword arguments, "state_dict": weights}
    run                        the run record's configuration
    code_version               the qat that wrote it

Prediction is raw features -> normaliser -> (RH-emo embedding) -> network -> softmax, the path
train_ser takes. Models live in the cache (QAT_CACHE/models), never in the repository.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from qat import io, paths, runs
from qat.data.audio import AudioError, is_near_silent, load_audio, probe
from qat.data.dataset import LabelSpace, Normalizer
from qat.data.features import FEATURE_VERSION, FeatureConfig, compute_features
from qat.models import VGG, RHEmo, vgg16
from qat.train import predict

FORMAT = "qat-model"
FORMAT_VERSION = 1
VGG_ARGS = ("num_classes", "in_channels", "quaternion", "width", "batch_norm", "hidden", "dropout")
REQUIRED_VGG_ARGS = ("num_classes", "in_channels", "quaternion", "width")
# Items per block when predicting: bounds memory on a memory-mapped corpus, and is a multiple of
# train.predict's batch so that the batches (and so the logits) are those of one whole call.
BLOCK = 256
EXPECTED = "a model file written by qat (qat.saved.save_model; a run record names it under 'model')"


def model_path(key: dict) -> Path:
    """Where the model of the run with record configuration `key` lives (the cache)."""
    return paths.CACHE / "models" / f"ser-{runs.config_key(key)}.pt"


# --------------------------------------------------------------------------------------------
# Saving


def _weights(module: torch.nn.Module) -> dict:
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


def rhemo_config(rhemo: RHEmo) -> dict:
    """RHEmo's constructor arguments, read back from a built network."""
    return {
        "num_emotions": rhemo.num_emotions,
        "pools": [list(pool) for pool in rhemo.pools],
        "hidden": rhemo.heads["emotion"][0].out_channels,
        "decoder_channels": rhemo.decoder[0].out_channels,
        "channels": list(rhemo.channels),
    }


def _vgg_config(net: VGG, model_config: dict) -> dict:
    config = dict(model_config)
    unknown = sorted(set(config) - set(VGG_ARGS))
    missing = [k for k in REQUIRED_VGG_ARGS if k not in config]
    if unknown or missing:
        raise ValueError(
            f"model_config: expected vgg16's arguments {REQUIRED_VGG_ARGS} (optionally "
            f"{VGG_ARGS[len(REQUIRED_VGG_ARGS) :]}); unknown {unknown}, missing {missing}"
        )
    config.setdefault("hidden", net.hidden)  # a custom width of the hidden layers is kept
    return config


def save_model(
    path: str | os.PathLike,
    net: VGG,
    *,
    model_config: dict,
    feature_config: FeatureConfig,
    normalizer: Normalizer,
    label_space: LabelSpace,
    rhemo: RHEmo | None = None,
    run: dict,
) -> Path:
    """Write one self-contained model file atomically (see the module docstring); returns its
    path. `model_config`: vgg16's keyword arguments (num_classes, in_channels, quaternion,
    width, optionally batch_norm, hidden, dropout); `rhemo`: the frozen RH-emo whose embedding
    the network reads (quaternion models); `run`: the run record's configuration."""
    config = _vgg_config(net, model_config)
    if config["num_classes"] != len(label_space.emotions):
        raise ValueError(
            f"model_config num_classes={config['num_classes']} but the label space has "
            f"{len(label_space.emotions)} emotions {label_space.emotions}"
        )
    expected_channels = 4 if rhemo is not None else 1
    if config["in_channels"] != expected_channels:
        reads = "the RH-emo embedding" if rhemo is not None else "spectrograms (no rhemo given)"
        raise ValueError(
            f"model_config in_channels={config['in_channels']}: a network that reads {reads} "
            f"has {expected_channels} input channel(s)"
        )
    if len(normalizer.mean) != feature_config.bins:
        raise ValueError(
            f"normalizer has {len(normalizer.mean)} bins, the feature config {feature_config.bins}"
        )
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"config": config, "state_dict": _weights(net)},
        "features": dataclasses.asdict(feature_config),
        "feature_version": FEATURE_VERSION,
        "normalizer": normalizer.state_dict(),
        "labels": label_space.to_dict(),
        "rhemo": None
        if rhemo is None
        else {"config": rhemo_config(rhemo), "state_dict": _weights(rhemo)},
        "run": json.loads(io.to_json(dict(run))),  # plain types only: weights_only loads them
        "code_version": runs.code_version(),
    }
    path = Path(path)
    io.ensure_folder(path.parent, "model")
    return io.write_atomic(path, lambda tmp: torch.save(payload, tmp))


# --------------------------------------------------------------------------------------------
# Loading and predicting


class Prediction(NamedTuple):
    """One file's result: the emotion and the probability of every emotion ({emotion: p}, in
    `Predictor.emotions` order), or the reason it could not be predicted (`error`, with
    emotion and probabilities None)."""

    path: str
    emotion: str | None
    probabilities: dict[str, float] | None
    error: str | None = None


class SampleRateError(AudioError):
    """Audio at another sample rate than the model's features: never resampled silently."""


class Predictor:
    """A trained SER network with everything between a file and its emotion: the feature
    config, the training normaliser, the label space and, for a quaternion network, its frozen
    RH-emo. Built by `load_model`."""

    def __init__(
        self,
        net: VGG,
        feature_config: FeatureConfig,
        normalizer: Normalizer,
        label_space: LabelSpace,
        rhemo: RHEmo | None = None,
        run: dict | None = None,
        path: Path | None = None,
    ):
        self.net = net.eval()
        self.feature_config = feature_config
        self.normalizer = normalizer
        self.label_space = label_space
        self.rhemo = rhemo.eval() if rhemo is not None else None
        self.run = run or {}
        self.path = path

    @property
    def emotions(self) -> tuple[str, ...]:
        return self.label_space.emotions

    def __repr__(self) -> str:
        kind = "quaternion on RH-emo" if self.rhemo is not None else "real"
        return f"Predictor({self.path}, {kind}, emotions={self.emotions})"

    @torch.no_grad()
    def _logits(self, x: np.ndarray) -> torch.Tensor:
        inputs = torch.from_numpy(self.normalizer(np.asarray(x, dtype=np.float32))).unsqueeze(1)
        if self.rhemo is not None:
            inputs = self.rhemo.eval().encode(inputs)
        return predict(self.net, inputs)

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N, K) over `emotions` for raw (unnormalised) features x of shape
        (N, frames, bins) computed with `feature_config` (e.g. by extract_features)."""
        shape = self.feature_config.shape
        if np.ndim(x) != 3 or tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"x: expected raw features of shape (N, {shape[0]}, {shape[1]}) (the model's "
                f"feature config), got {tuple(np.shape(x))}"
            )
        if len(x) == 0:
            return np.zeros((0, len(self.emotions)), dtype=np.float32)
        logits = torch.cat([self._logits(x[i : i + BLOCK]) for i in range(0, len(x), BLOCK)])
        return torch.softmax(logits, dim=1).numpy()

    def features_of(self, path: str | os.PathLike, resample: bool = False) -> np.ndarray:
        """Raw features (frames, bins) of one file, as the training pipeline computes them.

        AudioError naming the file if it cannot be read, if it is near-silent (training drops
        such files: there is no speech to classify) or if its sample rate is not the model's
        (SampleRateError) unless `resample`."""
        config = self.feature_config
        rate = probe(path).samplerate
        if rate != config.sample_rate and not resample:
            raise SampleRateError(
                f"{path}: sample rate {rate} Hz, but the model's features are computed at "
                f"{config.sample_rate} Hz; resample it yourself (e.g. `sox in.wav -r "
                f"{config.sample_rate} out.wav`) or ask for resampling explicitly (--resample)"
            )
        y = load_audio(path, config.sample_rate)
        if is_near_silent(y, config.silence_peak):
            raise AudioError(
                f"{path}: near-silent (peak below {config.silence_peak:g}): no speech to classify"
            )
        return compute_features(y, config)

    def predict_files(
        self, files: list[str | os.PathLike], resample: bool = False
    ) -> list[Prediction]:
        """One Prediction per file, in order. A file that cannot be used gets a Prediction
        with its `error` (the reason) and the others are still predicted."""
        rows: list[Prediction | None] = [None] * len(files)
        good, features = [], []
        for i, file in enumerate(files):
            try:
                features.append(self.features_of(file, resample))
                good.append(i)
            except (OSError, ValueError) as err:  # AudioError is a ValueError
                reason = str(err).removeprefix(f"{file}: ")
                rows[i] = Prediction(str(file), None, None, reason)
        shape = (0, *self.feature_config.shape)
        probs = self.predict_features(np.stack(features) if features else np.zeros(shape))
        for i, p in zip(good, probs, strict=True):
            probabilities = dict(zip(self.emotions, p.tolist(), strict=True))
            rows[i] = Prediction(str(files[i]), self.emotions[int(np.argmax(p))], probabilities)
        return rows  # type: ignore[return-value]


def _gist(err: BaseException, limit: int = 160) -> str:
    """An error in one short line: its type and first sentence (torch's are paragraphs of
    advice), with the next line when the first only announces it ("Error(s) in ...:")."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines or [""])[0]
    text = text.split(". ")[0]
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _read(path: Path, fmt: str = FORMAT, expected: str = EXPECTED) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist; expected {expected}")
    if not path.is_file():
        raise ValueError(f"model file {path} is a folder; expected {expected}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch reports truncation, foreign pickles, ... in many types
        raise ValueError(
            f"model file {path} cannot be read ({_gist(err)}): it is truncated, or not {expected}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(
            f"model file {path} holds no format entry {fmt!r} (a plain state dict, or another "
            f"program's file?); expected {expected}"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"model file {path} has format version {version!r}; this qat reads versions up to "
            f"{FORMAT_VERSION} (a newer qat wrote it?)"
        )
    if payload.get("feature_version") != FEATURE_VERSION:
        raise ValueError(
            f"model file {path} was trained on features of version "
            f"{payload.get('feature_version')!r}; this qat computes version {FEATURE_VERSION}, "
            "so its predictions would not be those of the trained network"
        )
    return payload


def load_model(path: str | os.PathLike) -> Predictor:
    """The Predictor of a model file (networks in eval mode, on the CPU). A missing file gets
    FileNotFoundError, a truncated, damaged or foreign one ValueError, each naming the file and
    what was expected."""
    path = Path(path)
    payload = _read(path)
    try:
        net = vgg16(**payload["model"]["config"])
        net.load_state_dict(payload["model"]["state_dict"])
        rhemo = None
        if payload["rhemo"] is not None:
            rhemo = RHEmo(**payload["rhemo"]["config"])
            rhemo.load_state_dict(payload["rhemo"]["state_dict"])
        feature_config = FeatureConfig(**payload["features"])
        normalizer = Normalizer.from_state_dict(payload["normalizer"])
        label_space = LabelSpace.from_dict(payload["labels"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"model file {path} is damaged ({_gist(err)}); expected {EXPECTED}"
        ) from err
    return Predictor(
        net, feature_config, normalizer, label_space, rhemo, payload.get("run"), path.resolve()
    )


# ---------------------------------------------------------------- a reusable RH-emo

RHEMO_FORMAT = "qat-rhemo"
RHEMO_EXPECTED = "a file written by `qat rhemo`"


def save_rhemo(path, rhemo: RHEmo, *, feature_config: FeatureConfig, source: dict) -> Path:
    """A frozen RH-emo in one file, to be reused on other corpora with the same features (the
    WASPAA paper pretrains it once, on IEMOCAP): weights, constructor settings, the feature
    config it reads and where it was trained (`source`)."""
    payload = {
        "format": RHEMO_FORMAT, "format_version": FORMAT_VERSION,
        "feature_version": FEATURE_VERSION, "features": dataclasses.asdict(feature_config),
        "rhemo": {"config": rhemo_config(rhemo), "state_dict": _weights(rhemo)},
        "source": source, "code_version": runs.code_version(),
    }  # fmt: skip
    return io.write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def load_rhemo(path, feature_config: FeatureConfig | None = None) -> tuple[RHEmo, dict]:
    """The frozen RH-emo of a `qat rhemo` file and where it was trained. With `feature_config`
    (the run's), a file trained on other features is refused, naming both."""
    path = Path(path)
    payload = _read(path, RHEMO_FORMAT, RHEMO_EXPECTED)
    if feature_config is not None and payload["features"] != dataclasses.asdict(feature_config):
        theirs = {k: v for k, v in payload["features"].items()
                  if dataclasses.asdict(feature_config).get(k) != v}  # fmt: skip
        ours = {k: dataclasses.asdict(feature_config)[k] for k in theirs if
                k in dataclasses.asdict(feature_config)}  # fmt: skip
        raise ValueError(
            f"rhemo={str(path)!r} reads features {theirs}; this run's profile computes {ours}. "
            "Pretrain RH-emo with the same profile (qat rhemo --profile ...)"
        )
    try:
        rhemo = RHEmo(**payload["rhemo"]["config"])
        rhemo.load_state_dict(payload["rhemo"]["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"rhemo file {path} is damaged ({_gist(err)})") from err
    rhemo.eval()
    for p in rhemo.parameters():
        p.requires_grad_(False)
    return rhemo, payload["source"]
