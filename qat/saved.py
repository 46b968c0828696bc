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

    trained_on                 sha256 of every audio file the network trained or was validated
                               on (qat evaluate flags a corpus that holds them); absent in
                               files written before it was recorded

Loading validates the file before anything the size of its config is built: tensors only, a
network no larger than its weights, as many emotions as classes, a normaliser of the features'
size, finite values; a file that fails is refused with one line naming it.

Prediction is raw features -> normaliser -> (RH-emo embedding) -> network -> softmax, the path
train_ser takes. A file is scored whole: its audio is cut into consecutive segments of the
model's length that cover the clip (`segments`), the near-silent ones are left out (there is no
speech to classify in them), and the probabilities of the others are averaged. Models live in
the cache (QAT_CACHE/models), never in the repository; run records name them relative to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from qat import io, paths, runs
from qat.config import label_of
from qat.data.audio import AudioError, is_near_silent, load_audio, probe, resample
from qat.data.dataset import LabelSpace, Normalizer
from qat.data.features import FEATURE_VERSION, FeatureConfig, compute_features
from qat.models import VGG, RHEmo, vgg16
from qat.progress import tqdm
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
    """Where the model of the run with record configuration `key` lives (the cache). A rerun
    with --force writes beside it (save_model's `beside`), never over it."""
    return paths.CACHE / "models" / f"ser-{runs.config_key(key)}.pt"


def stored_path(path: str | os.PathLike) -> str:
    """How a run record names a model file: relative to the cache root when it lies inside it
    (so a cache moved, copied or shared keeps its records usable), else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(paths.CACHE).as_posix()
    except ValueError:
        return str(path)


def resolve_stored(name: str | os.PathLike) -> Path:
    """The model file a record names: a relative name lies under the cache root; an absolute
    one (records written before names were relative) is taken as it is where it exists, and
    otherwise, when it named a file of some cache's models/ folder (another machine's or
    checkout's), read as the same file under this cache root. A model file this cache lacks
    but the kit ships (SHIPPED: a committed copy, qat.shipping) resolves to the shipped copy."""
    path = Path(name)
    if not path.is_absolute():
        path = paths.CACHE / path
    elif not path.exists() and path.parent.name == "models":
        path = paths.CACHE / "models" / path.name
    if not path.exists() and path.parent.name == "models":
        return shipped_copy(path.name) or path
    return path


SHIPPED = paths.ROOT / "models"  # model files committed with the kit (qat.shipping)
SHIPPED_INDEX = "index.json"  # {a run's model file name: its shipped copy's name}


def shipped_index(folder: Path) -> dict[str, str]:
    """{a run's model file name: its shipped copy's name} from `folder`'s index ({} if none)."""
    index = folder / SHIPPED_INDEX
    if not index.is_file():
        return {}
    try:
        copies = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        copies = err
    if not isinstance(copies, dict):
        raise ValueError(f"{index} is damaged ({copies}); expected {{model file: shipped "
                         "copy}} as JSON, written by `qat models --ship`")  # fmt: skip
    return copies


def shipped_copy(name: str) -> Path | None:
    """The committed copy of the run model file `name` (ser-<key>.pt), if the kit ships one."""
    copy = shipped_index(SHIPPED).get(name)
    return SHIPPED / copy if copy and (SHIPPED / copy).is_file() else None


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


def _serialised(payload: dict) -> bytes:
    """torch.save into memory: a full disk then fails in an ordinary write that says so."""
    buffer = BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


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
    trained_on: Sequence[str] = (),
    beside: bool = False,
) -> Path:
    """Write one self-contained model file atomically (see the module docstring); returns its
    path. `model_config`: vgg16's keyword arguments (num_classes, in_channels, quaternion,
    width, optionally batch_norm, hidden, dropout); `rhemo`: the frozen RH-emo whose embedding
    the network reads (quaternion models); `run`: the run record's configuration;
    `trained_on`: sha256 digests of the audio it trained and was validated on. `beside`: never
    replace a file at `path` (an earlier record may name it): write beside it instead, under
    a new name, which is returned."""
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
        "features": feature_config.as_dict(),
        "feature_version": FEATURE_VERSION,
        "normalizer": normalizer.state_dict(),
        "labels": label_space.to_dict(),
        "rhemo": None
        if rhemo is None
        else {"config": rhemo_config(rhemo), "state_dict": _weights(rhemo)},
        "run": json.loads(io.to_json(dict(run))),  # plain types only: weights_only loads them
        "trained_on": sorted(set(trained_on)),
        "code_version": runs.code_version(),
    }
    path = Path(path)
    io.ensure_folder(path.parent, "model")
    data = _serialised(payload)
    return io.write_bytes_beside(path, data) if beside else io.write_bytes(path, data)


# --------------------------------------------------------------------------------------------
# Validating a file before building anything from it


class _Refused(ValueError):
    """What is wrong with a model or RH-emo file; the loader names the file."""


def _tensors(state, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _Refused(f"is damaged: its {what} weights are not a dict of tensors")
    bad = [
        name
        for name, t in state.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise _Refused(
            f"holds NaN or infinite {what} weights in {len(bad)} of "
            f"{len(state)} tensors ({io.summarise(bad, 2)}): it cannot predict"
        )
    return state


def _check_vgg_size(config: dict, state: dict) -> None:
    """Refuse a config that would build a network far larger than the weights the file holds
    (a 0.5 MB file whose config says width=8 would otherwise build gigabytes before its
    weights are checked). The real VGG16 of the config is built on the meta device (shapes,
    no memory); a quaternion network holds at least a quarter of its real counterpart's
    elements (the Hamilton product shares each weight across four blocks; biases and the
    classifier are as large), so an honest file holds at least a quarter of that count."""
    width = config.get("width")
    if isinstance(width, bool) or not isinstance(width, int | float) or not math.isfinite(width):
        raise _Refused(f"is damaged: its network width is {width!r}, not a finite number")
    try:
        with torch.device("meta"):
            real = vgg16(**{**config, "quaternion": False})
    except (TypeError, ValueError) as err:
        raise _Refused(f"is damaged ({_gist(err)})") from err
    need = sum(t.numel() for t in real.state_dict().values())
    have = sum(t.numel() for t in state.values())
    if need > 4 * have:
        raise _Refused(
            f"is damaged: its config (width {width:g}) describes a network of "
            f"about {need:,} values but it holds {have:,}"
        )


def _check_rhemo_size(config, state: dict) -> None:
    """Every size an RH-emo config names is the size of one of its weights' dimensions (a
    quaternion one counts four real channels): a config no weight supports is refused before
    it is built."""
    sizes = [
        v
        for v in (
            config.get("hidden"),
            config.get("decoder_channels"),
            *(config.get("channels") or ()),
        )
        if isinstance(v, int)
    ]
    largest = max((d for t in state.values() for d in t.shape), default=0)
    if any(v > 4 * largest for v in sizes):
        raise _Refused(
            f"is damaged: its RH-emo config names sizes up to {max(sizes)} "
            f"but its largest weight dimension is {largest}"
        )


def _check_parts(payload: dict) -> tuple[FeatureConfig, Normalizer, LabelSpace]:
    """The file's features, normaliser and labels, each checked against the network's config."""
    config = payload["model"]["config"]
    features = FeatureConfig(**payload["features"])
    labels = LabelSpace.from_dict(payload["labels"])
    if len(labels.emotions) != config.get("num_classes"):
        raise _Refused(
            f"is damaged: it names {len(labels.emotions)} emotions "
            f"({io.summarise(labels.emotions)}) for a network of "
            f"{config.get('num_classes')!r} classes"
        )
    normalizer = Normalizer.from_state_dict(payload["normalizer"])
    sizes = {len(normalizer.mean), len(normalizer.std)}
    if sizes != {features.bins}:
        raise _Refused(
            f"is damaged: its normaliser has {sorted(sizes)} bins, its features {features.bins}"
        )
    if not (np.isfinite(normalizer.mean).all() and np.isfinite(normalizer.std).all()):
        raise _Refused("holds NaN or infinite normaliser statistics: it cannot predict")
    wants = 4 if payload["rhemo"] is not None else 1
    if config.get("in_channels") != wants:
        raise _Refused(
            f"is damaged: its network reads {config.get('in_channels')!r} "
            f"channel(s), but {wants} with{'' if wants == 4 else 'out'} an RH-emo"
        )
    return features, normalizer, labels


# --------------------------------------------------------------------------------------------
# Loading and predicting


class Prediction(NamedTuple):
    """One file's result: the emotion and the probability of every emotion ({emotion: p}, in
    `Predictor.emotions` order, averaged over the file's segments), how many segments were
    scored and how many left out as near-silent; or the reason it could not be predicted
    (`error`, with emotion and probabilities None)."""

    path: str
    emotion: str | None
    probabilities: dict[str, float] | None
    error: str | None = None
    segments: int | None = None
    silent_segments: int | None = None


class Classification(NamedTuple):
    """What `classify_batch` and `classify_file` return, in SpeechBrain's order (out_prob,
    score, index, text_lab): probabilities (N, K) over `Predictor.emotions` averaged over each
    utterance's segments, the winning probability (N,), its class index (N,) and emotion."""

    probabilities: torch.Tensor
    score: torch.Tensor
    index: torch.Tensor
    labels: list[str]


class SampleRateError(AudioError):
    """Audio at another sample rate than the model's features: never resampled silently."""


class SilentAudioError(AudioError):
    """Audio with no segment above the silence threshold: nothing to classify."""


def segment_windows(n: int, config: FeatureConfig, whole: bool = True) -> list[slice]:
    """The sample windows `segments` reads from an n-sample clip (see there), as slices."""
    length = config.segment_samples
    if n <= length:
        return [slice(0, n)]
    if not whole:
        return [slice((n - length) // 2, (n - length) // 2 + length)]
    starts = np.round(np.linspace(0, n - length, math.ceil(n / length))).astype(int)
    return [slice(int(s), int(s) + length) for s in starts]


def segments(y: np.ndarray, config: FeatureConfig, whole: bool = True) -> tuple[list, int]:
    """(the segments of a waveform the network reads, how many were left out as near-silent).

    whole=True: consecutive windows of the model's segment length that cover the whole clip,
    spread evenly from its first sample to its last (the last one ends on the clip's end, so
    each is full length and the overlap is as small as it can be); a clip no longer than one
    segment is one segment, padded as in training. whole=False: the centre segment only, the
    view a run's test items get in training. Near-silent windows (peak below the feature
    config's silence_peak) are left out; SilentAudioError if none is left."""
    windows = [y[w] for w in segment_windows(len(y), config, whole)]
    sounding = [w for w in windows if not is_near_silent(w, config.silence_peak)]
    if not sounding:
        raise SilentAudioError(
            f"near-silent: no {'' if whole else 'centre '}segment peaks above "
            f"{config.silence_peak:g}: no speech to classify"
        )
    return sounding, len(windows) - len(sounding)


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
        trained_on: Sequence[str] | None = None,
    ):
        self.net = net.eval()
        self.feature_config = feature_config
        self.normalizer = normalizer
        self.label_space = label_space
        self.rhemo = rhemo.eval() if rhemo is not None else None
        self.run = run or {}
        self.path = path
        # None: the file predates the record (what it trained on is unknown).
        self.trained_on = None if trained_on is None else frozenset(trained_on)

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
        (N, frames, bins) computed with `feature_config` (e.g. by extract_features). NaN or
        infinite outputs are refused (ValueError naming the model file), never returned."""
        shape = self.feature_config.shape
        if np.ndim(x) != 3 or tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"x: expected raw features of shape (N, {shape[0]}, {shape[1]}) (the model's "
                f"feature config), got {tuple(np.shape(x))}"
            )
        if len(x) == 0:
            return np.zeros((0, len(self.emotions)), dtype=np.float32)
        logits = torch.cat([self._logits(x[i : i + BLOCK]) for i in range(0, len(x), BLOCK)])
        probs = torch.softmax(logits, dim=1).numpy()
        bad = int((~np.isfinite(probs).all(axis=1)).sum())
        if bad:
            raise ValueError(
                f"model file {self.path}: the network gives NaN or infinite outputs for {bad} "
                f"of {len(probs)} input(s) (features finite): its weights cannot predict"
            )
        return probs

    def segment_features(self, y: np.ndarray, whole: bool = True) -> tuple[np.ndarray, int]:
        """(raw features (S, frames, bins) of a waveform's sounding segments, how many were
        left out as near-silent): see `segments`."""
        kept, silent = segments(np.asarray(y), self.feature_config, whole)
        return np.stack([compute_features(w, self.feature_config) for w in kept]), silent

    def _waveform(self, path: str | os.PathLike, resample: bool) -> np.ndarray:
        config = self.feature_config
        rate = probe(path).samplerate
        if rate != config.sample_rate and not resample:
            raise SampleRateError(
                f"{path}: sample rate {rate} Hz, but the model's features are computed at "
                f"{config.sample_rate} Hz; resample it yourself (e.g. `sox in.wav -r "
                f"{config.sample_rate} out.wav`) or ask for resampling explicitly (--resample)"
            )
        return load_audio(path, config.sample_rate)

    def features_of(
        self, path: str | os.PathLike, resample: bool = False, whole: bool = True
    ) -> tuple[np.ndarray, int]:
        """segment_features of one file, read as the training pipeline reads it. AudioError
        naming the file if it cannot be read, if every segment is near-silent
        (SilentAudioError: training drops such files too) or if its sample rate is not the
        model's (SampleRateError) unless `resample`."""
        try:
            return self.segment_features(self._waveform(path, resample), whole)
        except SilentAudioError as err:
            raise SilentAudioError(f"{path}: {err}") from None

    def _average(self, stacks: list[np.ndarray]) -> list[np.ndarray]:
        """Each utterance's probabilities: the mean over its segments, all scored at once."""
        if not stacks:
            return []
        probs = self.predict_features(np.concatenate(stacks))
        ends = np.cumsum([len(s) for s in stacks])[:-1]
        return [p.mean(axis=0) for p in np.split(probs, ends)]

    def score_files(
        self,
        files: Sequence[str | os.PathLike],
        resample: bool = False,
        whole: bool = True,
        progress: bool = False,
    ) -> list[tuple[np.ndarray | None, int, int, Exception | None]]:
        """(probabilities or None, segments scored, segments left out as silent, the error or
        None) of each file, in order. Files are read one at a time, so memory follows the
        files' segments, not the corpus."""
        out: list = [None] * len(files)
        stacks, done = [], []
        for i, file in enumerate(tqdm(files, desc="scoring", unit="file", disable=not progress)):
            try:
                x, silent = self.features_of(file, resample, whole)
            except (OSError, ValueError) as err:  # AudioError is a ValueError
                out[i] = (None, 0, 0, err)
                continue
            stacks.append(x)
            done.append((i, len(x), silent))
            if sum(len(s) for s in stacks) >= BLOCK or i == len(files) - 1:
                for (j, n, quiet), p in zip(done, self._average(stacks), strict=True):
                    out[j] = (p, n, quiet, None)
                stacks, done = [], []
        for (j, n, quiet), p in zip(done, self._average(stacks), strict=True):
            out[j] = (p, n, quiet, None)
        return out

    def predict_files(
        self, files: list[str | os.PathLike], resample: bool = False, whole: bool = True
    ) -> list[Prediction]:
        """One Prediction per file, in order, each file scored whole (see `segments`; whole=
        False scores the centre segment only, as a run's test items are in training). A file
        that cannot be used gets a Prediction with its `error` (the reason) and the others are
        still predicted."""
        rows = []
        for file, (p, n, silent, err) in zip(
            files, self.score_files(files, resample, whole), strict=True
        ):
            if err is not None:
                rows.append(Prediction(str(file), None, None, str(err).removeprefix(f"{file}: ")))
            else:
                probabilities = dict(zip(self.emotions, p.tolist(), strict=True))
                emotion = self.emotions[int(np.argmax(p))]
                rows.append(Prediction(str(file), emotion, probabilities, None, n, silent))
        return rows

    def classify_batch(self, waveforms, sample_rate: int) -> Classification:
        """SpeechBrain's classify_batch: the emotion of each waveform, scored whole.

        waveforms: one 1-D waveform, a 2-D (N, samples) array or tensor, or a list of 1-D
        waveforms of any lengths, at `sample_rate` Hz (resampled to the model's rate if it
        differs: the caller states the rate, so nothing is guessed). AudioError naming the
        waveform's position if it holds NaN, or if every segment is near-silent."""
        items = _waveform_list(waveforms)
        stacks = []
        for i, y in enumerate(items):
            if y.size == 0 or not np.isfinite(y).all():
                raise AudioError(f"waveform {i}: empty, or holds NaN or infinite samples")
            if sample_rate != self.feature_config.sample_rate:
                y = resample(y, int(sample_rate), self.feature_config.sample_rate)
            try:
                stacks.append(self.segment_features(y)[0])
            except SilentAudioError as err:
                raise SilentAudioError(f"waveform {i}: {err}") from None
        probs = torch.from_numpy(np.stack(self._average(stacks)))
        score, index = probs.max(dim=1)
        return Classification(probs, score, index, [self.emotions[int(i)] for i in index])

    def classify_file(self, path: str | os.PathLike, resample: bool = False) -> Classification:
        """SpeechBrain's classify_file: one file's emotion, scored whole (a batch of one).
        AudioError naming the file if it cannot be read, is near-silent throughout, or is not
        at the model's sample rate (unless `resample`)."""
        x, _ = self.features_of(path, resample)
        probs = torch.from_numpy(np.stack(self._average([x])))
        score, index = probs.max(dim=1)
        return Classification(probs, score, index, [self.emotions[int(i)] for i in index])


def _waveform_list(waveforms) -> list[np.ndarray]:
    if isinstance(waveforms, torch.Tensor):
        waveforms = waveforms.detach().cpu().numpy()
    if isinstance(waveforms, np.ndarray):
        if waveforms.ndim not in (1, 2):
            raise ValueError(
                f"waveforms: expected 1-D or (N, samples), got shape {waveforms.shape}"
            )
        waveforms = [waveforms] if waveforms.ndim == 1 else list(waveforms)
    items = [
        np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w, np.float64)
        for w in waveforms
    ]
    if not items or any(w.ndim != 1 for w in items):
        raise ValueError("waveforms: expected one or more 1-D waveforms")
    return items


def _gist(err: BaseException, limit: int = 160) -> str:
    """An error in one short line: its type and first sentence (torch's are paragraphs of
    advice), with the next line when the first only announces it ("Error(s) in ...:")."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines or [""])[0]
    text = text.split(". ")[0]
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


PICKLED = (
    "holds pickled Python objects, which qat never runs (weights_only): refused. If you trust "
    "its source, convert it once in a session of your own with torch's full unpickler, then "
    "save only tensors, numbers, strings, lists and dicts (as qat.saved.save_model writes)"
)


def _read(path: Path, fmt: str = FORMAT, expected: str = EXPECTED) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist; expected {expected}")
    if path.is_dir():
        raise ValueError(f"model file {path} is a folder; expected {expected}")
    if not path.is_file():
        raise ValueError(
            f"model file {path} is not a regular file (a named pipe, socket or "
            f"device?); expected {expected}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise ValueError(f"model file {path} {PICKLED}") from err
        raise ValueError(
            f"model file {path} cannot be read ({_gist(err)}): it is truncated, or not {expected}"
        ) from err
    except Exception as err:  # torch reports truncation, foreign files, ... in many types
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


def _locate(path: str | os.PathLike) -> Path:
    """A model file as given, or, for a relative name not found from here, the one a run
    record names under the cache root (records name models relative to it)."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and resolve_stored(path).exists():
        return resolve_stored(path)
    return path


def _build(payload: dict) -> tuple[VGG, RHEmo | None]:
    """The network (and RH-emo) of a file, each checked against its weights before it is
    built (so a config never builds more than its weights justify), then loaded."""
    config = payload["model"]["config"]
    state = _tensors(payload["model"]["state_dict"], "network")
    if not isinstance(config, dict):
        raise _Refused("is damaged: its network config is not a dict")
    _check_vgg_size(config, state)
    net = vgg16(**config)
    net.load_state_dict(state)
    rhemo = None
    if payload["rhemo"] is not None:
        rhemo_state = _tensors(payload["rhemo"]["state_dict"], "RH-emo")
        _check_rhemo_size(payload["rhemo"]["config"], rhemo_state)
        rhemo = RHEmo(**payload["rhemo"]["config"])
        rhemo.load_state_dict(rhemo_state)
    return net, rhemo


def load_model(path: str | os.PathLike) -> Predictor:
    """The Predictor of a model file (networks in eval mode, on the CPU); a relative path that
    does not exist from here is looked up under the cache root, where run records name it. A
    missing file gets FileNotFoundError; a truncated, damaged, foreign, pickled or
    non-finite one ValueError, each naming the file and what was expected."""
    path = _locate(path)
    payload = _read(path)
    try:
        features, normalizer, labels = _check_parts(payload)
        net, rhemo = _build(payload)
    except _Refused as err:
        raise ValueError(f"model file {path} {err}; expected {EXPECTED}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise ValueError(
            f"model file {path} is damaged ({_gist(err)}); expected {EXPECTED}"
        ) from err
    trained_on = payload.get("trained_on")
    return Predictor(
        net, features, normalizer, labels, rhemo, payload.get("run"), path.resolve(), trained_on
    )


# ---------------------------------------------------------------- the saved models


def saved_models(reports: str | os.PathLike | None = None) -> list[dict]:
    """The saved models the run records under <reports>/runs/ name, best test UA first within
    each setting: {"label", "setting", "ua", "path", "exists"} (`exists`: the file is in this
    cache)."""
    rows = []
    for record in runs.load_records(Path(reports) if reports else None, kind="ser"):
        if not record.get("model"):
            continue
        config, path = record["config"], resolve_stored(record["model"])
        split = config.get("split") or {}
        setting = " ".join(
            str(part)
            for part in (
                config.get("corpus"),
                config.get("setup"),
                f"rho {split['rho']:g}" if split.get("rho") is not None else None,
                f"by {split['factor']}" if split.get("factor") not in (None, "word") else None,
                f"fold {split['fold']}" if split.get("fold") is not None else None,
                f"profile {config.get('profile')}",
            )
            if part is not None
        )
        rows.append(
            {
                "label": label_of(config, ("setup",)),
                "setting": setting,
                "ua": record["metrics"]["ua"],
                "path": path,
                "exists": path.is_file(),
            }
        )
    return sorted(rows, key=lambda r: (r["setting"], -r["ua"], r["label"]))


# ---------------------------------------------------------------- a reusable RH-emo

RHEMO_FORMAT = "qat-rhemo"
RHEMO_EXPECTED = "a file written by `qat rhemo`"


def save_rhemo(path, rhemo: RHEmo, *, feature_config: FeatureConfig, source: dict) -> Path:
    """A frozen RH-emo in one file, to be reused on other corpora with the same features (the
    WASPAA paper pretrains it once, on IEMOCAP): weights, constructor settings, the feature
    config it reads and where it was trained (`source`)."""
    payload = {
        "format": RHEMO_FORMAT, "format_version": FORMAT_VERSION,
        "feature_version": FEATURE_VERSION, "features": feature_config.as_dict(),
        "rhemo": {"config": rhemo_config(rhemo), "state_dict": _weights(rhemo)},
        "source": source, "code_version": runs.code_version(),
    }  # fmt: skip
    return io.write_bytes(Path(path), _serialised(payload))


def load_rhemo(path, feature_config: FeatureConfig | None = None) -> tuple[RHEmo, dict]:
    """The frozen RH-emo of a `qat rhemo` file and where it was trained. With `feature_config`
    (the run's), a file trained on other features is refused, naming both."""
    path = Path(path)
    payload = _read(path, RHEMO_FORMAT, RHEMO_EXPECTED)
    ours_all = feature_config.as_dict() if feature_config is not None else None
    if ours_all is not None and payload["features"] != ours_all:
        # A file of level="raw" (written without the field) against a run of another level:
        # its level is named too.
        theirs = {k: v for k, v in {"level": "raw", **payload["features"]}.items()
                  if dataclasses.asdict(feature_config).get(k) != v}  # fmt: skip
        ours = {k: dataclasses.asdict(feature_config)[k] for k in theirs if
                k in dataclasses.asdict(feature_config)}  # fmt: skip
        raise ValueError(
            f"rhemo={str(path)!r} reads features {theirs}; this run's profile computes {ours}. "
            "Pretrain RH-emo with the same profile (qat rhemo --profile ...)"
        )
    try:
        state = _tensors(payload["rhemo"]["state_dict"], "RH-emo")
        _check_rhemo_size(payload["rhemo"]["config"], state)
        rhemo = RHEmo(**payload["rhemo"]["config"])
        rhemo.load_state_dict(state)
    except _Refused as err:
        raise ValueError(f"rhemo file {path} {err}; expected {RHEMO_EXPECTED}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise ValueError(f"rhemo file {path} is damaged ({_gist(err)})") from err
    rhemo.eval()
    for p in rhemo.parameters():
        p.requires_grad_(False)
    return rhemo, payload["source"]
