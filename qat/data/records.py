"""The one record type every corpus loader returns, and its CSV form (the manifest)."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Common emotion vocabulary across corpora; each loader maps its own codes onto it and
# keeps the original code in `Utterance.label`.
EMOTIONS = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
    "boredom",
    "excited",
    "frustrated",
)

MANIFEST_COLUMNS = (
    *("path", "emotion", "speaker", "text", "corpus", "label"),
    *("valence", "arousal", "dominance", "duration", "uid"),
)
REQUIRED_MANIFEST_COLUMNS = ("path", "emotion", "speaker", "text")


@dataclass(frozen=True)
class Utterance:
    """One utterance of any corpus.

    `path` is absolute; `uid` is unique within the corpus and stable across machines (the
    path relative to the corpus root, without extension); `text` is the word or sentence id;
    valence/arousal/dominance are floats in the corpus's own scale, or None.
    """

    path: str
    corpus: str
    emotion: str
    speaker: str
    text: str
    label: str = ""
    valence: float | None = None
    arousal: float | None = None
    dominance: float | None = None
    duration: float = math.nan
    uid: str = ""

    def __post_init__(self):
        if self.emotion not in EMOTIONS:
            raise ValueError(
                f"{self.path}: emotion {self.emotion!r} is not in the common vocabulary {EMOTIONS}"
            )
        if not self.uid:
            object.__setattr__(self, "uid", Path(self.path).with_suffix("").name)


def write_manifest(records: Iterable[Utterance], csv_path: str | os.PathLike) -> None:
    """Write records as a CSV manifest, paths relative to the CSV's folder, atomically."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for r in records:
            row = dataclasses.asdict(r)
            row["path"] = os.path.relpath(r.path, csv_path.parent)
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    os.replace(tmp, csv_path)


def emotions_of(records: Sequence[Utterance]) -> list[str]:
    """The emotions present, in the common vocabulary's order (the class index order)."""
    present = {r.emotion for r in records}
    return [e for e in EMOTIONS if e in present]
