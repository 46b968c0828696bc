"""The one record type every corpus loader returns, its CSV form (the manifest), and the content
digest of a corpus."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qat import io

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
    records = list(records)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            for r in records:
                row = dataclasses.asdict(r)
                row["path"] = os.path.relpath(r.path, csv_path.parent)
                writer.writerow({k: "" if v is None else v for k, v in row.items()})

    io.write_atomic(csv_path, write)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in chunks; FileNotFoundError naming a missing file.

    The content, not the size and mtime: a file replaced by other content of the same size with
    its mtime kept (cp -p, rsync -a, tar) gets another digest. Hashing is I/O-bound: about
    0.3 s for the cpu-profile SynthEmo and its orthogonal corpus (8,640 files, 277 MB) from
    the page cache, about 1 s from disk, on our 2-core machine.
    """
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        raise FileNotFoundError(f"audio file not found: {path}") from None


def content_digests(records: Sequence[Utterance]) -> list[str]:
    """file_digest of every record's audio, in order."""
    return [file_digest(r.path) for r in records]


def check_conflicting_copies(records: Sequence[Utterance], digests: Sequence[str]) -> None:
    """ValueError naming both paths if two records hold the same audio (byte for byte) under
    different emotions: one recording cannot be two emotions, and the copy would put the same
    utterance in training and test with opposite labels. Copies under the same emotion are
    left alone. Links are caught by the loaders; copies only by their content."""
    first: dict[str, Utterance] = {}
    conflicts = []
    for record, digest in zip(records, digests, strict=True):
        earlier = first.setdefault(digest, record)
        if earlier.emotion != record.emotion:
            conflicts.append((earlier, record))
    if conflicts:
        a, b = conflicts[0]
        more = f" ({len(conflicts)} such files in all)" if len(conflicts) > 1 else ""
        raise ValueError(
            f"{b.path} holds the same audio as {a.path} (byte for byte) but is labelled "
            f"{b.emotion!r}, not {a.emotion!r}{more}; remove one copy or relabel it"
        )


def corpus_digest(records: Sequence[Utterance], digests: Sequence[str] | None = None) -> str:
    """sha256 (hex) of a corpus's content: every record's manifest fields except its absolute
    path (uid, corpus, labels, speaker, text, dimensions, duration) and the digest of its audio
    bytes, in order. Relabelling a row, editing or replacing a file, or reordering the records
    changes it; moving the corpus folder does not. For keys of results computed from the
    corpus (run records); reads every audio file once (or takes `digests`, content_digests of
    the records). The same audio under two emotions is refused (check_conflicting_copies)."""
    digests = content_digests(records) if digests is None else digests
    check_conflicting_copies(records, digests)
    fields = [f.name for f in dataclasses.fields(Utterance) if f.name != "path"]
    h = hashlib.sha256(json.dumps(["qat-corpus-digest-v1", *fields, "audio_sha256"]).encode())
    for r, digest in zip(records, digests, strict=True):
        row = [getattr(r, name) for name in fields]
        h.update(b"\n" + json.dumps([*row, digest]).encode())
    return h.hexdigest()


def emotions_of(records: Sequence[Utterance]) -> list[str]:
    """The emotions present, in the common vocabulary's order (the class index order)."""
    present = {r.emotion for r in records}
    return [e for e in EMOTIONS if e in present]
