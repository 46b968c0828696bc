"""The data of a run: its corpus (SynthEmo built by the kit, or a real corpus read from the
user's disk), features, split, groups and datasets, and the profile's training recipe.
Features are normalised with the training statistics only."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qat import io, paths, robust, runs
from qat.config import PROFILES, RunConfig, check_choice
from qat.data import corpora, splits, synth
from qat.data.dataset import LabelSpace, Normalizer, Rows, SERDataset, StreamedInputs, split_bytes
from qat.data.features import FeatureConfig, extract_features
from qat.models import RHEmo
from qat.train import (
    TrainConfig,
)

# Execution settings: where and how runs compute, not what they compute (never in a record's
# key). Environment variables, like the folders, so that the sweep's workers and Ray's tasks
# (which get the $QAT_* variables of the process that starts the grid) read what `qat ...
# --device/--memory-budget` set.
DEVICE_VARIABLE = "QAT_DEVICE"
MEMORY_VARIABLE = "QAT_MEMORY_BUDGET"
# Default budget: a quarter of RAM per split. A run holds its three splits and its network,
# and the jobs beside it theirs.
MEMORY_SHARE = 4


def check_device(text: str, variable: str = "device") -> str:
    """`text` if it names a device runs can use here: cpu, cuda or cuda:N."""
    if not isinstance(text, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise ValueError(f"{variable}={text!r}: expected cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        count = torch.cuda.device_count()
        if count == 0:
            build = "a CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise ValueError(f"{variable}={text!r}: no CUDA device here (torch "
                             f"{torch.__version__}, {build}); use cpu")  # fmt: skip
        if ":" in text and int(text.split(":")[1]) >= count:
            raise ValueError(f"{variable}={text!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")  # fmt: skip
    return text


def device_setting() -> str:
    """$QAT_DEVICE (set by --device), else cuda when CUDA is available, else cpu."""
    value = os.environ.get(DEVICE_VARIABLE)
    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(value, f"${DEVICE_VARIABLE}")


def device() -> str:
    """The device a run trains on (device_setting). Plain cuda is cuda:$LOCAL_RANK under
    torchrun (a GPU per rank), cuda:0 otherwise: a local pool's worker or a Ray task sees only
    its own GPU (CUDA_VISIBLE_DEVICES), which is then device 0."""
    chosen = device_setting()
    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if chosen == "cuda" else chosen


def worker_gpus() -> tuple[int, ...]:
    """The GPUs a local pool's workers take in turn (qat.sweep.Engine.gpus): every GPU when
    runs go to plain cuda and there are several; none for cpu, an explicit cuda:N or one GPU."""
    count = torch.cuda.device_count() if device_setting() == "cuda" else 0
    return tuple(range(count)) if count > 1 else ()


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str, variable: str = "memory_budget") -> int:
    """A size in bytes from `1000000`, `512M`, `1.5G` or `2T` (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text), re.IGNORECASE)
    size = match and float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not size or size < 1:
        raise ValueError(f"{variable}={text!r}: expected a size > 0, e.g. 8G, 512M or 1000000")
    return int(size)


def memory_budget() -> int:
    """The most bytes one split may take in memory before it is read from disk batch by batch:
    $QAT_MEMORY_BUDGET (set by --memory-budget), else RAM / MEMORY_SHARE."""
    value = os.environ.get(MEMORY_VARIABLE)
    if value is not None:
        return parse_bytes(value, f"${MEMORY_VARIABLE}")
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MEMORY_SHARE


def load_records(corpus: str = "synthemo", profile: str = "cpu", root=None, progress=True):
    """The corpus's utterance records: SynthEmo is synthesised (or reused) under
    qat.paths.DATA; a real corpus is read from `root`, the folder in its official layout."""
    check_choice("profile", profile, PROFILES)
    if corpus == "synthemo" and root is None:
        options = _synth_options(PROFILES[profile]["corpus"], synth.DEFAULT_SPEAKERS)
        return synth.make_synthemo(synthemo_folder(profile), progress=progress, **options)
    if root is None:
        raise FileNotFoundError(
            f"corpus={corpus!r} needs root=<folder of the corpus in its official layout>; "
            "or use corpus='synthemo', which the kit builds itself"
        )
    check_choice("corpus", corpus, corpora.CORPORA)
    return corpora.load_corpus(corpus, root)


def synthemo_folder(profile: str) -> Path:
    """The profile's SynthEmo folder: profiles with the same corpus sizes share one."""
    return paths.DATA / f"synthemo-{runs.config_key(PROFILES[profile]['corpus'])[:8]}"


def load_orthogonal_records(profile: str = "cpu", progress=True):
    """Neutral-prosody SynthEmo with more speakers: data for the word and speaker networks."""
    sizes = PROFILES[profile]["orthogonal_corpus"]
    out = paths.DATA / f"synthemo-orthogonal-{runs.config_key(sizes)[:8]}"
    options = _synth_options(sizes, synth.MORE_SPEAKERS)
    return synth.make_orthogonal_corpus(out, progress=progress, **options)


def _synth_options(sizes: dict, speakers) -> dict:
    """A profile names corpus sizes (n_speakers, n_words); SynthEmo takes the lists."""
    options = dict(sizes)
    if "n_speakers" in options:
        options["speakers"] = speakers[: options.pop("n_speakers")]
    if "n_words" in options:
        options["words"] = synth.DEFAULT_WORDS[: options.pop("n_words")]
    return options


def feature_config(profile: str, level: str = "raw") -> FeatureConfig:
    """The profile's features at the run's input `level` (the run setting)."""
    return FeatureConfig(**PROFILES[profile]["features"], level=level)


@dataclass
class Data:
    """A corpus with its features, split and datasets (features normalised with the training
    statistics only). `label_space` maps emotions, speakers and words to class indices."""

    records: list
    split: splits.Split
    label_space: LabelSpace
    train: SERDataset
    val: SERDataset
    test: SERDataset
    dropped_silent: int
    warnings: list[str]
    normalizer: Normalizer | None = None
    x: np.ndarray | Rows | None = None  # the kept items' raw features (e.g. DFR's held-out set)


MIN_TEST_PER_CLASS = 5  # below this a test class's recall moves in steps of 20 points or more


def _check_task(records, kept, split, test_idx, x, target: str = "emotion") -> list[str]:
    """Refuse a degenerate task; return the warnings a run record carries."""
    attr = {"emotion": "emotion", "word": "text", "speaker": "speaker"}[target]
    lost = sorted({getattr(r, attr) for r in records} - {getattr(r, attr) for r in kept})
    if lost:
        raise ValueError(
            f"{target}(s) {lost}: every file is near-silent (peak below the silence threshold); "
            "the task would silently lose the class. Check those files or leave the class out"
        )
    classes = sorted({getattr(r, attr) for r in kept})
    if len(classes) < 2:
        raise ValueError(f"{target} classes {classes}: a classification task needs at least two")
    test_classes = {getattr(kept[i], attr) for i in test_idx}
    if len(test_idx) < 2 or len(test_classes) < 2:
        raise ValueError(
            f"the {split.setup} split's test set holds {len(test_idx)} item(s) of "
            f"{len(test_classes)} {target} class(es) (test speakers/words "
            f"{split.meta.get('test_speakers') or split.meta.get('test_words')}); a score on it "
            "would mean nothing. Choose another setup or a corpus with more test items"
        )
    bad = [
        kept[start + i].uid
        for start in range(0, len(kept), 512)
        for i in np.flatnonzero(~np.isfinite(np.asarray(x[start : start + 512])).all(axis=(1, 2)))
    ]
    if bad:
        raise ValueError(
            f"{len(bad)} item(s) have NaN or infinite features, e.g. {bad[:3]}; check their "
            "audio files, or delete the feature cache under QAT_CACHE/features"
        )
    counts = {c: sum(getattr(kept[i], attr) == c for i in test_idx) for c in classes}
    few = {c: n for c, n in counts.items() if n < MIN_TEST_PER_CLASS}
    out = []
    if few and target == "emotion":
        out.append(f"test set: fewer than {MIN_TEST_PER_CLASS} items for {few}; per-class "
                   "recall, and so UA, is coarse")  # fmt: skip
    if len(kept) < len(records):
        out.append(f"{len(records) - len(kept)} near-silent file(s) dropped")
    return out


def prepare_data(
    records,
    setup: str,
    profile: str,
    seed: int = 0,
    progress: bool = True,
    target: str = "emotion",
    level: str = "raw",
    **split_options,
) -> Data:
    check_choice("setup", setup, splits.SETUPS)
    config = feature_config(profile, level)
    feats = extract_features(records, config, paths.CACHE / "features", progress=progress)
    keep = np.flatnonzero(~feats.silent)
    if len(keep) == 0:
        raise ValueError(f"all {len(records)} audio files are near-silent (peak below the silence "
                         "threshold); expected speech. Check the files or their level")  # fmt: skip
    kept = [records[i] for i in keep]
    synthemo = kept[0].corpus == synth.CORPUS
    split_options.setdefault("val_fraction", PROFILES[profile].get("val_fraction", 0.1))
    if synthemo and setup not in ("random", "word") and "fold" not in split_options:
        # SynthEmo's held-out speakers; a real corpus takes its share (or its folds).
        split_options.setdefault("n_test_speakers", PROFILES[profile]["n_test_speakers"])
    if "fold" in split_options:
        real_folds = not synthemo and setup == "speaker"
        speakers = [r.speaker for r in kept]
        folds = splits.default_folds(kept[0].corpus, speakers) if real_folds else None
        split_options.setdefault("folds", folds or PROFILES[profile].get("folds", 5))
    split = splits.make_split(kept, setup, seed=seed, **split_options)
    parts = split.indices(kept)
    budget = memory_budget()
    stream = [split_bytes(len(idx), feats.x.shape[1:]) > budget for idx in parts]
    if any(stream):  # read from the cache file as needed, never copied whole
        x = Rows(feats.x, keep) if len(keep) < len(records) else feats.x
    else:
        x = feats.x[keep] if len(keep) < len(records) else feats.x
    train_idx, _, test_idx = parts
    notes = _check_task(records, kept, split, test_idx, x, target)
    label_space = LabelSpace.from_records(kept)
    # Streaming, the training items are read in the same blocks, so the statistics are equal.
    normalizer = Normalizer.fit(Rows(x, train_idx) if stream[0] else np.asarray(x[train_idx]))
    datasets = [
        SERDataset(x, kept, idx, label_space, normalizer, stream=s)
        for idx, s in zip(parts, stream, strict=True)
    ]
    dropped = len(records) - len(kept)
    return Data(kept, split, label_space, *datasets, dropped_silent=dropped, warnings=notes,
                normalizer=normalizer, x=x)  # fmt: skip


RECIPE = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "device"}


def train_config(profile: str, seed: int, **overrides) -> TrainConfig:
    """The training recipe of a profile (every TrainConfig field it names), with per-run
    overrides."""
    recipe = {k: v for k, v in PROFILES[profile].items() if k in RECIPE}
    return TrainConfig(**{**recipe, "seed": seed, "device": device(), **overrides})


def with_inputs(dataset: SERDataset, x: torch.Tensor | StreamedInputs) -> SERDataset:
    """The same items and labels with other network inputs (e.g. RH-emo embeddings)."""
    out = copy.copy(dataset)
    out.x = x
    return out


def subset(dataset: SERDataset, n: int | None, seed: int = 0) -> SERDataset:
    """At most `n` items of a dataset, drawn once with a fixed seed (all of them if n is None)."""
    if n is None or n >= len(dataset.x):
        return dataset
    return take(dataset, np.sort(np.random.default_rng(seed).permutation(len(dataset.x))[:n]))


@torch.no_grad()
def embed(rhemo: RHEmo, dataset: SERDataset, batch_size: int = 256) -> SERDataset:
    """The dataset with RH-emo's embeddings as its inputs, computed in batches; a streamed
    dataset's are written to a cache file and streamed from it in turn."""
    rhemo.eval()
    if isinstance(dataset.x, StreamedInputs):
        return with_inputs(dataset, _embedded_on_disk(rhemo, dataset.x, batch_size))
    x = torch.cat(
        [rhemo.encode(dataset.x[i : i + batch_size]) for i in range(0, len(dataset.x), batch_size)]
    )
    return with_inputs(dataset, x)


def _inputs_digest(inputs: StreamedInputs) -> str:
    """What streamed inputs read: the cache file (by name, size and time: a rebuilt file is
    new) or in-memory array (by content), the rows, and the normaliser."""
    rows = inputs.rows
    base, positions = rows.base, rows.positions
    while isinstance(base, Rows):
        base, positions = base.base, base.positions[positions]
    h = hashlib.sha256(np.ascontiguousarray(positions).tobytes())
    filename = getattr(base, "filename", None)
    if filename:
        stat = os.stat(filename)
        h.update(f"{filename}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    else:
        h.update(np.ascontiguousarray(base[np.sort(positions)]).tobytes())
    if inputs.normalizer is not None:
        h.update(inputs.normalizer.mean.tobytes() + inputs.normalizer.std.tobytes())
    return h.hexdigest()


def _embedded_on_disk(rhemo: RHEmo, inputs: StreamedInputs, batch_size: int) -> StreamedInputs:
    """RH-emo's embeddings of streamed inputs, cached under QAT_CACHE/embeddings keyed by the
    network's weights and the inputs, written batch by batch into a memory-mapped file."""
    h = hashlib.sha256(_inputs_digest(inputs).encode() + str(batch_size).encode())
    for name, tensor in rhemo.state_dict().items():
        h.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    path = paths.CACHE / "embeddings" / f"rhemo-{h.hexdigest()[:24]}.npy"
    if not path.exists():
        io.ensure_folder(path.parent, "embedding cache")
        n, shape = len(inputs), tuple(rhemo.encode(inputs[:1]).shape[1:])

        def write(tmp):
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *shape))
            for i in range(0, n, batch_size):
                out[i : i + batch_size] = rhemo.encode(inputs[i : i + batch_size]).numpy()
            out.flush()
            del out

        io.write_atomic(path, write)  # a parallel run writing the same file: either is whole
    x = np.load(path, mmap_mode="r")
    return StreamedInputs(Rows(x, np.arange(len(x))), channel=False)


def fold_count(run: RunConfig) -> int:
    """How many folds the run's corpus and setup have: the profile's for SynthEmo, the corpus's
    speaker folds (splits.default_folds) for a real corpus."""
    if run.corpus == "synthemo" and run.root is None:
        return PROFILES[run.profile].get("folds") or 0
    records = load_records(run.corpus, run.profile, run.root, progress=False)
    if run.setup == "speaker":
        return len(splits.default_folds(records[0].corpus, [r.speaker for r in records]))
    return PROFILES[run.profile].get("folds", 5)


def run_data(run: RunConfig, progress: bool = True, records=None) -> Data:
    """The corpus, features and split of a run (`records`: the corpus, if already loaded)."""
    records = records or load_records(run.corpus, run.profile, run.root, progress)
    return prepare_data(records, run.setup, run.profile, run.seed, progress, level=run.level,
                        **run.split_options)  # fmt: skip


def attach_groups(data: Data) -> None:
    """Each item's group, (emotion, the emotion its word or speaker was paired with in
    training), as the label "group" of the training, validation and test sets."""
    emotions = data.label_space.emotions
    for part in (data.train, data.val, data.test):
        ids = data.split.groups(data.records, part.indices, emotions)
        part.labels[robust.GROUP_LABEL] = torch.from_numpy(ids)


def take(dataset: SERDataset, positions: np.ndarray) -> SERDataset:
    """The items of a dataset at `positions` (positions within the dataset); from a streamed
    dataset, read into memory if they fit the memory budget, else streamed too."""
    keep = torch.as_tensor(np.asarray(positions))
    x = dataset.x
    if isinstance(x, StreamedInputs) and split_bytes(len(keep), x.shape[1:]) > memory_budget():
        out = with_inputs(dataset, x.take(keep))
    else:
        out = with_inputs(dataset, x[keep])
    out.labels = {k: v[keep] for k, v in dataset.labels.items()}
    out.indices = np.asarray(dataset.indices)[keep.numpy()]
    return out


def held_out_set(data: Data, per_group: int, seed: int, rhemo=None) -> SERDataset:
    """A group-balanced set of training-speaker items no run trains on: the items the
    confounded split left out and the validation items. The split keeps every congruent
    training item, so the left-out items are all incongruent; the validation items supply the
    congruent groups. At most `per_group` items of each group, drawn with `seed`."""
    pool = np.concatenate([data.split.unused_indices(data.records), data.val.indices])
    groups = data.split.groups(data.records, pool, data.label_space.emotions)
    rng = np.random.default_rng(seed)
    chosen = np.concatenate(
        [rng.permutation(pool[groups == g])[:per_group] for g in np.unique(groups)]
    )
    held = SERDataset(data.x, data.records, np.sort(chosen), data.label_space, data.normalizer)
    attach = data.split.groups(data.records, held.indices, data.label_space.emotions)
    held.labels[robust.GROUP_LABEL] = torch.from_numpy(attach)
    return embed(rhemo, held) if rhemo is not None else held
