"""A saved model on other data: cross-corpus evaluation (`qat evaluate`) and prediction for
files and folders (`qat predict`).

Cross-corpus evaluation applies the model as trained: the other corpus's features are computed
with the MODEL's feature config and normalised with the MODEL's normaliser (never refitted on
the new corpus, which would leak its statistics into the model). Emotions are matched through
an explicit mapping from the corpus's emotions to the model's; an item whose emotion maps to
nothing, or to an emotion the model does not know, is dropped, and the record says how many
items were dropped for which reason, and which. Predictions are restricted to the shared
emotions (those of the model that some kept item carries): an emotion the corpus cannot hold
can never be the right answer; how often the unrestricted answer fell outside is recorded.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections import Counter
from io import StringIO
from pathlib import Path

import numpy as np

from qat import io, metrics, paths, runs
from qat.config import label_of
from qat.data.audio import probe
from qat.data.corpora import load_corpus
from qat.data.features import extract_features
from qat.data.records import EMOTIONS, corpus_digest, file_digest
from qat.saved import BLOCK, Prediction, load_model

# Corpus emotion -> model emotion (None: dropped) unless the caller says otherwise. Every
# loader already maps its own codes onto the common vocabulary (TESS "fear" and EmoDB's "A"
# are "fearful", TESS "ps" is "surprised"); what remains are classes most corpora lack.
DEFAULT_MAPPING: dict[str, str | None] = {"calm": None, "boredom": None}

# Spellings a user may type in a mapping, onto the common vocabulary (records.EMOTIONS).
SYNONYMS = {
    "fear": "fearful", "afraid": "fearful", "anger": "angry", "happiness": "happy",
    "joy": "happy", "sadness": "sad", "surprise": "surprised", "ps": "surprised",
    "disgusted": "disgust", "bored": "boredom", "excitement": "excited",
    "frustration": "frustrated", "neutrality": "neutral",
}  # fmt: skip
DROP_WORDS = ("", "none", "drop", "-")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def _emotion(name: str, what: str) -> str:
    emotion = SYNONYMS.get(name.strip().lower(), name.strip().lower())
    if emotion not in EMOTIONS:
        raise ValueError(f"mapping: {what} {name!r} is not an emotion; expected one of {EMOTIONS}")
    return emotion


def normalise_mapping(mapping: dict | None) -> dict[str, str | None]:
    """DEFAULT_MAPPING updated with `mapping` ({corpus emotion: model emotion or None}),
    synonyms resolved ("fear" -> "fearful"), sorted by the common vocabulary's order."""
    merged = dict(DEFAULT_MAPPING)
    for source, target in (mapping or {}).items():
        drop = target is None or str(target).strip().lower() in DROP_WORDS
        merged[_emotion(source, "emotion")] = None if drop else _emotion(target, "target")
    return {e: merged[e] for e in EMOTIONS if e in merged}


def parse_mapping(text: str | None) -> dict[str, str | None]:
    """ "calm=neutral,boredom=" -> {"calm": "neutral", "boredom": None} (empty: dropped)."""
    out: dict[str, str | None] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        source, sep, target = part.partition("=")
        if not sep or not source.strip():
            raise ValueError(
                f"--mapping {text!r}: expected comma-separated EMOTION=MODEL_EMOTION pairs "
                "(an empty MODEL_EMOTION drops the emotion), e.g. calm=neutral,boredom="
            )
        out[source.strip()] = target.strip() or None
    return out


def _drop(dropped: dict, reason: str, uid: str, detail: str | None = None) -> None:
    entry = dropped.setdefault(reason, {"count": 0, "uids": []})
    entry["count"] += 1
    entry["uids"].append(uid)
    if detail is not None:
        entry.setdefault("details", []).append(detail)


def _off_rate(records, sample_rate: int) -> tuple[dict[str, int], str | None]:
    """({rate in Hz: file count}, the first such file) of the files not at `sample_rate`."""
    rates: Counter[int] = Counter()
    first = None
    for r in records:
        rate = probe(r.path).samplerate
        if rate != sample_rate:
            rates[rate] += 1
            first = first or f"{r.path} ({rate} Hz)"
    return {str(rate): n for rate, n in sorted(rates.items())}, first


def evaluate_corpus(
    model_path: str | os.PathLike,
    corpus: str,
    root: str | os.PathLike,
    mapping: dict | None = None,
    *,
    resample: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate a saved model on every item of another corpus and write a run record of kind
    "eval" (reports/runs/eval-<hash>.json); returns the record, with the file written under
    "record_path". If a record with the same configuration (the same model file, corpus
    content, mapping) exists it is returned instead, unless `force`.

    mapping: {corpus emotion: model emotion or None (drop)}, over DEFAULT_MAPPING; other
    emotions map onto themselves. A corpus whose audio is not at the model's sample rate is
    refused with the rate and a file named, unless `resample` (each file is then resampled to
    the model's rate, and the record says so)."""
    t_start = time.perf_counter()
    model_path = Path(model_path)
    predictor = load_model(model_path)
    fc = predictor.feature_config
    mapping = normalise_mapping(mapping)
    records = load_corpus(corpus, root, on_error="skip")
    config = {
        "model": {
            "path": str(model_path.resolve()),
            "sha256": file_digest(model_path),
            "run": predictor.run,
        },
        "corpus": corpus,
        "root": str(Path(root).resolve()),
        "mapping": mapping,
        "resample": resample,
        "data_digest": corpus_digest(records),
    }
    target = runs.record_path("eval", config)
    if target.exists() and not force:
        return {**runs.load_record(target), "record_path": str(target)}

    dropped: dict[str, dict] = {}
    for where, why in records.skipped:
        _drop(dropped, "unreadable audio (skipped by the loader)", where, why)
    for reason, count in records.dropped.items():
        dropped[f"left out by the {corpus} loader: {reason}"] = {"count": count, "uids": []}

    model_emotions = set(predictor.emotions)
    corpus_emotions = {r.emotion for r in records}
    candidates = []
    for r in records:
        to = mapping.get(r.emotion, r.emotion)
        if to is None:
            _drop(dropped, f"{r.emotion}: dropped by the mapping", r.uid)
        elif to not in model_emotions:
            _drop(dropped, f"{r.emotion}: not among the model's emotions", r.uid)
        else:
            candidates.append((r, to))
    if not candidates:
        raise ValueError(
            f"{corpus} at {root}: no item has an emotion the model knows ({predictor.emotions}) "
            f"after the mapping {mapping}; corpus emotions: {sorted(corpus_emotions)}"
        )

    kept_records = [r for r, _ in candidates]
    off_rate, first = _off_rate(kept_records, fc.sample_rate)
    if off_rate and not resample:
        raise ValueError(
            f"{corpus} audio is not at the model's {fc.sample_rate} Hz: {sum(off_rate.values())} "
            f"of {len(kept_records)} files are at other rates (Hz: files) {off_rate}, e.g. "
            f"{first}. Resample the corpus yourself, or pass --resample (resample=True) to "
            f"resample each file to {fc.sample_rate} Hz explicitly"
        )
    feats = extract_features(kept_records, fc, paths.CACHE / "features", progress=progress)
    keep = []
    for i, (r, _) in enumerate(candidates):
        if feats.silent[i]:
            _drop(dropped, "near-silent", r.uid)
        else:
            keep.append(i)
    keep = np.asarray(keep, dtype=np.int64)
    targets = [candidates[i][1] for i in keep]
    shared = [e for e in predictor.emotions if e in set(targets)]
    if len(shared) < 2:
        raise ValueError(
            f"{corpus}: only {shared} of the model's emotions {predictor.emotions} remain after "
            "the mapping; a score over fewer than two emotions would mean nothing"
        )
    probs = np.concatenate(
        [predictor.predict_features(np.asarray(feats.x[keep[i : i + BLOCK]]))
         for i in range(0, len(keep), BLOCK)]
    )  # fmt: skip
    columns = [predictor.emotions.index(e) for e in shared]
    pred = probs[:, columns].argmax(1)
    y = np.asarray([shared.index(t) for t in targets])
    outside = int(np.sum(~np.isin(probs.argmax(1), columns)))

    total = len(records) + len(records.skipped) + sum(records.dropped.values())
    record = {
        "kind": "eval",
        "config": config,
        "model": {
            "path": str(model_path.resolve()),
            "label": label_of(predictor.run) if predictor.run else "",
            "emotions": list(predictor.emotions),
            "features": dataclasses.asdict(fc),
        },
        "labels": {
            "emotions": shared,
            "mapping": {e: mapping.get(e, e) for e in EMOTIONS if e in corpus_emotions},
            "model_only": [e for e in predictor.emotions if e not in shared],
        },
        "items": {"total": total, "kept": len(keep), "dropped": dropped},
        "metrics": {**metrics.summary(y, pred, len(shared)), "predicted_outside_shared": outside},
        "predictions": {
            "uids": [candidates[i][0].uid for i in keep],
            "emotions": [shared[p] for p in pred],
        },
        "resampled": off_rate or None,
        "code_version": runs.code_version(),
        "wall_time_s": time.perf_counter() - t_start,
    }
    path = io.write_json_beside(target, record)
    return {**record, "record_path": str(path)}


def summary_lines(record: dict) -> list[str]:
    """What `qat evaluate` prints: metrics, the shared emotions, what was dropped, the
    confusion matrix and the record's path."""
    m, items, emotions = record["metrics"], record["items"], record["labels"]["emotions"]
    model = record["model"]["label"] or record["model"]["path"]
    lines = [
        f"{model} on {record['config']['corpus']}: UA {m['ua']:.4f}  WA {m['wa']:.4f}  "
        f"macro-F1 {m['macro_f1']:.4f}",
        f"emotions: {', '.join(emotions)}; {items['kept']} of {items['total']} items kept",
    ]
    for reason, entry in items["dropped"].items():
        lines.append(f"dropped {entry['count']}: {reason}")
    if m["predicted_outside_shared"]:
        lines.append(f"{m['predicted_outside_shared']} items' unrestricted answer was an emotion "
                     "outside the shared ones")  # fmt: skip
    width = max(len(e) for e in emotions)
    lines.append("confusion (rows true, columns predicted):")
    lines.append(" " * (width + 1) + " ".join(f"{e[:6]:>6}" for e in emotions))
    for e, row in zip(emotions, m["confusion"], strict=True):
        lines.append(f"{e:>{width}} " + " ".join(f"{n:>6}" for n in row))
    lines.append(f"record: {record['record_path']}")
    return lines


# --------------------------------------------------------------------------------------------
# Prediction


def audio_files(folder: Path) -> list[Path]:
    """The audio files under a folder (recursively, hidden ones skipped), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def predict_paths(
    model_path: str | os.PathLike,
    files_or_folders: list[str | os.PathLike],
    *,
    resample: bool = False,
) -> list[Prediction]:
    """One Prediction per file given or found under a folder given, in order. A file that
    cannot be read (or is missing, or at another sample rate unless `resample`) gets a row
    with its error, and the others are still predicted; so does a folder without audio."""
    predictor = load_model(model_path)
    entries: list[Path | Prediction] = []
    for item in map(Path, files_or_folders):
        if not item.is_dir():
            entries.append(item)
            continue
        found = audio_files(item)
        entries.extend(found)
        if not found:
            suffixes = ", ".join(AUDIO_SUFFIXES)
            entries.append(Prediction(str(item), None, None, f"no audio files ({suffixes})"))
    predicted = iter(predictor.predict_files([e for e in entries if isinstance(e, Path)], resample))
    return [e if isinstance(e, Prediction) else next(predicted) for e in entries]


def format_rows(rows: list[Prediction], fmt: str = "csv") -> list[str]:
    """`qat predict`'s lines: csv (a header, then one line per file: path, emotion, one
    probability per emotion, error) or json (one object per line)."""
    if fmt == "json":
        return [json.dumps(r._asdict()) for r in rows]
    if fmt != "csv":
        raise ValueError(f"format={fmt!r}: expected csv or json")
    emotions = next((list(r.probabilities) for r in rows if r.error is None), [])
    buffer = StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "emotion", *emotions, "error"])
    for r in rows:
        if r.error is not None:
            writer.writerow([r.path, "", *[""] * len(emotions), r.error])
        else:
            probabilities = (f"{p:.6f}" for p in r.probabilities.values())
            writer.writerow([r.path, r.emotion, *probabilities, ""])
    return buffer.getvalue().splitlines()
