"""From cached features to training tensors: label encoding (LabelSpace), per-bin
normalisation with training statistics only (Normalizer), and the dataset (SERDataset), whose
inputs are an in-memory tensor or, for a split larger than memory, read batch by batch from
the memory-mapped feature cache (Rows, StreamedInputs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qat.data.records import EMOTIONS, Utterance, emotions_of

# --------------------------------------------------------------------------------------------
# Normalisation and labels


class Normalizer:
    """Per-frequency-bin standardisation with statistics of the TRAINING items only (mean and
    population std over items and frames); fitting on all items would leak the test set."""

    # A constant bin (e.g. all padding) has std 0; the floor keeps it finite and at 0.
    STD_FLOOR = 1e-8

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.maximum(np.asarray(std, dtype=np.float64), self.STD_FLOOR)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ValueError(
                f"mean/std: expected two 1-D arrays of equal length, got {self.mean.shape} "
                f"and {self.std.shape}"
            )

    @classmethod
    def fit(
        cls, x: np.ndarray, indices: Sequence[int] | np.ndarray | None = None, block: int = 256
    ):
        """Fit on x[indices] (x: (N, frames, bins)), reading `block` items at a time so that a
        memory-mapped corpus is never loaded whole; blocks are merged with Chan's formula."""
        indices = np.arange(len(x)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            raise ValueError("indices: expected at least one training item to fit the normaliser")
        count, mean, m2 = 0, np.zeros(x.shape[-1]), np.zeros(x.shape[-1])
        for start in range(0, len(indices), block):
            chunk = np.asarray(x[np.sort(indices[start : start + block])], dtype=np.float64)
            chunk = chunk.reshape(-1, x.shape[-1])
            n_b, mean_b = len(chunk), chunk.mean(axis=0)
            m2_b = ((chunk - mean_b) ** 2).sum(axis=0)
            delta, total = mean_b - mean, count + n_b
            mean = mean + delta * n_b / total
            m2 = m2 + m2_b + delta**2 * count * n_b / total
            count = total
        return cls(mean, np.sqrt(m2 / count))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std over the last (bin) axis, as float32."""
        if x.shape[-1] != len(self.mean):
            raise ValueError(
                f"x: expected {len(self.mean)} bins on the last axis, got shape {x.shape}"
            )
        return ((x - self.mean.astype(np.float32)) / self.std.astype(np.float32)).astype(np.float32)

    apply = __call__

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> Normalizer:
        return cls(np.asarray(state["mean"]), np.asarray(state["std"]))


LABEL_FIELDS = ("emotion", "speaker", "word")
DIMENSIONS = ("valence", "arousal", "dominance")


@dataclass(frozen=True)
class LabelSpace:
    """Ordered vocabularies that turn records into class indices: emotions in the common
    EMOTIONS order, speakers and words (the records' `text`) sorted."""

    emotions: tuple[str, ...]
    speakers: tuple[str, ...]
    words: tuple[str, ...]

    @classmethod
    def from_records(cls, records: Sequence[Utterance]) -> LabelSpace:
        return cls(
            emotions=tuple(emotions_of(records)),
            speakers=tuple(sorted({r.speaker for r in records})),
            words=tuple(sorted({r.text for r in records})),
        )

    def vocabulary(self, field: str) -> tuple[str, ...]:
        if field not in LABEL_FIELDS:
            raise ValueError(f"field={field!r}: expected one of {LABEL_FIELDS}")
        return {"emotion": self.emotions, "speaker": self.speakers, "word": self.words}[field]

    def encode(self, records: Sequence[Utterance]) -> dict[str, np.ndarray]:
        """int64 class indices for emotion/speaker/word and float32 valence/arousal/dominance
        (NaN where a record has none)."""
        out = {}
        for field, attr in zip(LABEL_FIELDS, ("emotion", "speaker", "text"), strict=True):
            index = {label: i for i, label in enumerate(self.vocabulary(field))}
            codes = np.empty(len(records), dtype=np.int64)
            for i, r in enumerate(records):
                label = getattr(r, attr)
                if label not in index:
                    raise ValueError(
                        f"{field} label {label!r} (record {r.uid!r}) is not in this label "
                        f"space's {len(index)} {field} labels"
                    )
                codes[i] = index[label]
            out[field] = codes
        for dim in DIMENSIONS:
            values = [getattr(r, dim) for r in records]
            out[dim] = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        return out

    def to_dict(self) -> dict:
        return {
            "emotions": list(self.emotions),
            "speakers": list(self.speakers),
            "words": list(self.words),
        }

    @classmethod
    def from_dict(cls, state: dict) -> LabelSpace:
        unknown = [e for e in state["emotions"] if e not in EMOTIONS]
        if unknown:
            raise ValueError(f"emotions: {unknown} are not in the common vocabulary {EMOTIONS}")
        return cls(tuple(state["emotions"]), tuple(state["speakers"]), tuple(state["words"]))


# --------------------------------------------------------------------------------------------
# Reading a split from disk, batch by batch


def _positions(key) -> np.ndarray | int:
    """An int, slice, integer array or integer tensor as numpy indices."""
    if isinstance(key, torch.Tensor):
        return key.numpy()
    return key


class Rows:
    """The rows `positions` of an (N, ...) array (a memory-mapped cache file, or another Rows),
    read on demand: indexing by an int, a slice or an integer array reads only those rows, in
    file order (sequential reads), and returns them as an ndarray in the order asked."""

    def __init__(self, base, positions: Sequence[int] | np.ndarray):
        self.base = base
        self.positions = np.asarray(positions, dtype=np.int64)
        self.shape = (len(self.positions), *base.shape[1:])
        self.dtype = base.dtype

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key) -> np.ndarray:
        wanted = self.positions[_positions(key)]
        if wanted.ndim == 0:
            return np.asarray(self.base[int(wanted)])
        order = np.argsort(wanted, kind="stable")
        out = np.empty((len(wanted), *self.shape[1:]), dtype=self.dtype)
        out[order] = self.base[wanted[order]]
        return out


class StreamedInputs:
    """A dataset's network inputs read from disk as they are asked for: rows of a cache file,
    normalised when read, as float32 tensors. It stands where SERDataset.x is a tensor for the
    trainers, which only slice it (len, shape, x[slice], x[integer tensor]): each item goes
    through the same arithmetic as on the in-memory path, so the batches are bitwise equal.

    `channel`: insert the channel axis (features (frames, bins) -> (1, frames, bins)), as
    SERDataset does; embeddings are stored with theirs."""

    dtype = torch.float32

    def __init__(self, rows: Rows, normalizer: Normalizer | None = None, channel: bool = True):
        self.rows, self.normalizer, self.channel = rows, normalizer, channel
        self.shape = (len(rows), *((1,) if channel else ()), *rows.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> torch.Tensor:
        features = np.asarray(self.rows[key], dtype=np.float32)
        if self.normalizer is not None:
            features = self.normalizer(features)
        out = torch.from_numpy(np.ascontiguousarray(features))
        return out.unsqueeze(-len(self.rows.shape[1:]) - 1) if self.channel else out

    def take(self, positions) -> StreamedInputs:
        """The items at `positions` (within these inputs), still read from disk."""
        rows = Rows(self.rows.base, self.rows.positions[_positions(positions)])
        return StreamedInputs(rows, self.normalizer, self.channel)

    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4


def split_bytes(n_items: int, item_shape: Sequence[int]) -> int:
    """What a split of `n_items` items of `item_shape` takes in memory as float32."""
    return int(n_items) * int(np.prod(item_shape)) * 4


# --------------------------------------------------------------------------------------------
# Dataset


class SERDataset(torch.utils.data.Dataset):
    """A subset of a corpus as ready tensors.

    .x: float32 (n, 1, frames, bins), normalised; .labels: dict of (n,) tensors (see
    LabelSpace.encode); .indices: the items' positions in the corpus. Trainers slice .x and
    .labels in batches directly, which is much faster than a DataLoader over __getitem__.

    `stream=True` (a split larger than memory): .x is a StreamedInputs that reads and
    normalises each batch from `x` (the memory-mapped cache) when it is sliced; nothing is
    copied whole, and every batch equals the in-memory path's.
    """

    def __init__(
        self,
        x: np.ndarray,
        records: Sequence[Utterance],
        indices: Sequence[int] | np.ndarray,
        label_space: LabelSpace,
        normalizer: Normalizer | None,
        stream: bool = False,
    ):
        if len(x) != len(records):
            raise ValueError(f"x has {len(x)} items but records has {len(records)}: expected equal")
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= len(x))):
            raise ValueError(f"indices: expected positions in [0, {len(x)}), got {indices!r}")
        if stream:
            self.x = StreamedInputs(Rows(x, indices), normalizer)
        else:
            features = np.asarray(x[indices], dtype=np.float32)
            if normalizer is not None:
                features = normalizer(features)
            self.x = torch.from_numpy(np.ascontiguousarray(features)).unsqueeze(1).contiguous()
        encoded = label_space.encode([records[i] for i in indices])
        self.labels = {name: torch.from_numpy(values) for name, values in encoded.items()}
        self.indices = indices
        self.label_space = label_space

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        labels = {name: values[i] for name, values in self.labels.items()}
        labels["index"] = int(self.indices[i])
        return self.x[i], labels
