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

Both score each file whole (qat.saved.segments): consecutive segments of the model's length
over the whole clip, near-silent ones left out, probabilities averaged. An item whose audio
the model trained or was validated on (by content digest, as the model file records it) is
refused unless allowed, and then flagged in the record.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from io import StringIO
from pathlib import Path

import numpy as np

from qat import io, metrics, runs
from qat.config import label_of
from qat.data.audio import probe
from qat.data.corpora import link_problem, load_corpus
from qat.data.records import EMOTIONS, content_digests, corpus_digest, file_digest
from qat.saved import Prediction, Predictor, SilentAudioError, load_model, stored_path

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
    merged, given = dict(DEFAULT_MAPPING), {}
    for source, target in (mapping or {}).items():
        drop = target is None or str(target).strip().lower() in DROP_WORDS
        emotion = _emotion(source, "emotion")
        if emotion in given:  # "fear" and "fearful" are one emotion: two targets for it
            raise ValueError(f"mapping: {given[emotion]!r} and {source!r} are both {emotion!r}; "
                             "expected one target per emotion")  # fmt: skip
        given[emotion] = source
        merged[emotion] = None if drop else _emotion(target, "target")
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
        if source.strip() in out:  # the last one would win without a word
            raise ValueError(
                f"--mapping {text!r}: {source.strip()!r} is given more than one target; "
                "expected one EMOTION=MODEL_EMOTION pair per emotion"
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


def _check_readable(records, corpus: str, root) -> None:
    """A corpus whose every file the loader skipped is refused for what it is (unreadable),
    not later as one whose emotions the model does not know."""
    if records or not records.skipped:
        return
    where, why = records.skipped[0]
    raise ValueError(
        f"{corpus} at {root}: none of its {len(records.skipped)} file(s) could be read; the "
        f"first: {why if where in why else f'{where}: {why}'}"
    )


def _overlap(predictor: Predictor, candidates, digests, allow: bool) -> dict | None:
    """The items whose audio the model trained or was validated on (by content), refused
    unless `allow`; {"count", "uids"} (None when the model file does not say what it trained
    on: written before qat recorded it)."""
    if predictor.trained_on is None:
        return None
    seen = [r.uid for (r, _), d in zip(candidates, digests, strict=True)
            if d in predictor.trained_on]  # fmt: skip
    if seen and not allow:
        raise ValueError(
            f"{len(seen)} of {len(candidates)} items are audio the model trained or was "
            f"validated on (by content: {io.summarise(seen)}): its score there is not a "
            "cross-corpus one; evaluate on other data, or pass --allow-overlap (allow_overlap="
            "True) to score them anyway, flagged in the record"
        )
    return {"count": len(seen), "uids": seen}


def evaluate_corpus(
    model_path: str | os.PathLike,
    corpus: str,
    root: str | os.PathLike,
    mapping: dict | None = None,
    *,
    resample: bool = False,
    force: bool = False,
    progress: bool = True,
    allow_overlap: bool = False,
) -> dict:
    """Evaluate a saved model on every item of another corpus and write a run record of kind
    "eval" (reports/runs/eval-<hash>.json); returns the record, with the file written under
    "record_path". If a record with the same configuration (the same model file, corpus
    content, mapping) exists it is returned instead, unless `force`.

    mapping: {corpus emotion: model emotion or None (drop)}, over DEFAULT_MAPPING; other
    emotions map onto themselves. A corpus whose audio is not at the model's sample rate is
    refused with the rate and a file named, unless `resample` (each file is then resampled to
    the model's rate, and the record says so). Items the model trained or was validated on
    (by content) are refused unless `allow_overlap`, which scores them and flags them in the
    record (items.overlap). Each item is scored whole (qat.saved.segments)."""
    t_start = time.perf_counter()
    model_path = Path(model_path)
    predictor = load_model(model_path)
    fc = predictor.feature_config
    mapping = normalise_mapping(mapping)
    records = load_corpus(corpus, root, on_error="skip")
    _check_readable(records, corpus, root)
    digests = content_digests(records)
    config = {
        "model": {
            "path": stored_path(predictor.path),
            "sha256": file_digest(predictor.path),
            "run": predictor.run,
        },
        "corpus": corpus,
        "root": str(Path(root).resolve()),
        "mapping": mapping,
        "resample": resample,
        "data_digest": corpus_digest(records, digests),
    }
    found = runs.find_record("eval", config)
    if found is not None and not force:
        return {**found[1], "record_path": str(found[0])}

    dropped: dict[str, dict] = {}
    for where, why in records.skipped:
        _drop(dropped, "unreadable audio (skipped by the loader)", where, why)
    for reason, count in records.dropped.items():
        dropped[f"left out by the {corpus} loader: {reason}"] = {"count": count, "uids": []}

    model_emotions = set(predictor.emotions)
    corpus_emotions = {r.emotion for r in records}
    candidates, candidate_digests = [], []
    for r, digest in zip(records, digests, strict=True):
        to = mapping.get(r.emotion, r.emotion)
        if to is None:
            _drop(dropped, f"{r.emotion}: dropped by the mapping", r.uid)
        elif to not in model_emotions:
            _drop(dropped, f"{r.emotion}: not among the model's emotions", r.uid)
        else:
            candidates.append((r, to))
            candidate_digests.append(digest)
    if not candidates:
        raise ValueError(
            f"{corpus} at {root}: no item has an emotion the model knows ({predictor.emotions}) "
            f"after the mapping {mapping}; corpus emotions: {sorted(corpus_emotions)}"
        )
    overlap = _overlap(predictor, candidates, candidate_digests, allow_overlap)

    kept_records = [r for r, _ in candidates]
    off_rate, first = _off_rate(kept_records, fc.sample_rate)
    if off_rate and not resample:
        raise ValueError(
            f"{corpus} audio is not at the model's {fc.sample_rate} Hz: {sum(off_rate.values())} "
            f"of {len(kept_records)} files are at other rates (Hz: files) {off_rate}, e.g. "
            f"{first}. Resample the corpus yourself, or pass --resample (resample=True) to "
            f"resample each file to {fc.sample_rate} Hz explicitly"
        )
    scored = predictor.score_files([r.path for r in kept_records], resample, progress=progress)
    keep, probs, segments, silent_segments = [], [], 0, 0
    for i, ((r, _), (p, n, silent, err)) in enumerate(zip(candidates, scored, strict=True)):
        if isinstance(err, SilentAudioError):
            _drop(dropped, "near-silent", r.uid)
        elif err is not None:
            _drop(dropped, "unreadable audio", r.uid, str(err))
        else:
            keep.append(i)
            probs.append(p)
            segments, silent_segments = segments + n, silent_segments + silent
    if not keep:
        why = ("near-silent", "unreadable audio")
        reasons = {k: v["count"] for k, v in dropped.items() if k in why}
        raise ValueError(
            f"{corpus} at {root}: none of the {len(candidates)} items with an emotion the model "
            f"knows could be scored: {reasons}"
        )
    targets = [candidates[i][1] for i in keep]
    shared = [e for e in predictor.emotions if e in set(targets)]
    if len(shared) < 2:
        raise ValueError(
            f"{corpus}: only {shared} of the model's emotions {predictor.emotions} remain after "
            "the mapping; a score over fewer than two emotions would mean nothing"
        )
    probs = np.stack(probs)
    columns = [predictor.emotions.index(e) for e in shared]
    pred = probs[:, columns].argmax(1)
    y = np.asarray([shared.index(t) for t in targets])
    outside = int(np.sum(~np.isin(probs.argmax(1), columns)))

    total = len(records) + len(records.skipped) + sum(records.dropped.values())
    record = {
        "kind": "eval",
        "config": config,
        "model": {
            "path": stored_path(predictor.path),
            "label": label_of(predictor.run) if predictor.run else "",
            "emotions": list(predictor.emotions),
            "features": fc.as_dict(),
        },
        "labels": {
            "emotions": shared,
            "mapping": {e: mapping.get(e, e) for e in EMOTIONS if e in corpus_emotions},
            "model_only": [e for e in predictor.emotions if e not in shared],
        },
        "items": {"total": total, "kept": len(keep), "dropped": dropped, "overlap": overlap},
        "scoring": {
            "rule": "whole utterance: segments over the whole clip, near-silent ones left "
            "out, probabilities averaged",
            "segment_seconds": fc.segment_seconds,
            "segments": segments,
            "silent_segments": silent_segments,
        },
        "metrics": {**metrics.summary(y, pred, len(shared)), "predicted_outside_shared": outside},
        "predictions": {
            "uids": [candidates[i][0].uid for i in keep],
            "emotions": [shared[p] for p in pred],
        },
        "resampled": off_rate or None,
        "code_version": runs.code_version(),
        "wall_time_s": time.perf_counter() - t_start,
    }
    path = io.write_json_beside(runs.record_path("eval", config), record)
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
    scoring = record.get("scoring")
    if scoring:
        lines.append(
            f"each item scored whole: {scoring['segments']} segments of "
            f"{scoring['segment_seconds']:g} s over the clips, {scoring['silent_segments']} "
            "near-silent ones left out, probabilities averaged per item"
        )
    for reason, entry in items["dropped"].items():
        lines.append(f"dropped {entry['count']}: {reason}")
    overlap = items.get("overlap", {})
    if overlap is None:
        lines.append("overlap with the model's training data: unknown (its file predates the "
                     "record of what it trained on)")  # fmt: skip
    elif overlap.get("count"):
        lines.append(f"warning: {overlap['count']} items are audio the model trained or was "
                     "validated on (--allow-overlap): not a cross-corpus score")  # fmt: skip
    if m["predicted_outside_shared"]:
        lines.append(f"{m['predicted_outside_shared']} items' unrestricted answer was an emotion "
                     "outside the shared ones")  # fmt: skip
    width = max(len(e) for e in emotions)
    cell = max(width, 6)  # whole names as column heads
    lines.append("confusion (rows true, columns predicted):")
    lines.append(" " * (width + 1) + " ".join(f"{e:>{cell}}" for e in emotions))
    for e, row in zip(emotions, m["confusion"], strict=True):
        lines.append(f"{e:>{width}} " + " ".join(f"{n:>{cell}}" for n in row))
    lines.append(f"record: {record['record_path']}")
    return lines


# --------------------------------------------------------------------------------------------
# Prediction


def audio_files(folder: Path) -> list[Path | Prediction]:
    """The audio files under a folder (recursively, hidden names skipped, symbolic links to
    folders followed once), sorted; what cannot be read becomes a Prediction row with its
    reason instead of vanishing: a dangling link, a link loop, a folder that cannot be listed
    or that a link leads back into."""
    found: list[Path | Prediction] = []
    seen: set[str] = set()

    def walk(directory: Path) -> None:
        real = os.path.realpath(directory)
        if real in seen:
            why = "a symbolic link back into a folder already listed"
            found.append(Prediction(str(directory), None, None, why))
            return
        seen.add(real)
        try:
            entries = sorted(directory.iterdir())
        except OSError as err:
            why = f"folder cannot be listed ({err.strerror or err})"
            found.append(Prediction(str(directory), None, None, why))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if problem := link_problem(entry):
                if entry.suffix.lower() in AUDIO_SUFFIXES or not entry.suffix:
                    found.append(Prediction(str(entry), None, None, problem))
            elif entry.is_dir():
                walk(entry)
            elif entry.suffix.lower() in AUDIO_SUFFIXES and entry.is_file():
                found.append(entry)

    walk(folder)
    return sorted(found, key=lambda e: str(e.path if isinstance(e, Prediction) else e))


def predict_paths(
    model: str | os.PathLike | Predictor,
    files_or_folders: list[str | os.PathLike],
    *,
    resample: bool = False,
) -> list[Prediction]:
    """One Prediction per file given or found under a folder given, in order, each file scored
    whole. A file that cannot be read (or is missing, or at another sample rate unless
    `resample`) gets a row with its error, and the others are still predicted; so does a
    folder without audio and every link under a folder that cannot be followed."""
    predictor = model if isinstance(model, Predictor) else load_model(model)
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


SEGMENT_COLUMNS = ("segments", "silent_segments")


def format_rows(
    rows: list[Prediction], fmt: str = "csv", emotions: Sequence[str] | None = None
) -> list[str]:
    """`qat predict`'s lines: csv (a header, then one line per file: path, emotion, one
    probability per emotion, the segments scored and those left out as near-silent, error) or
    json (one object per line, strict JSON). `emotions`: the model's (Predictor.emotions), so
    that the columns are the same whatever the outcome; by default those of the rows."""
    if fmt == "json":
        return [json.dumps(r._asdict(), allow_nan=False) for r in rows]
    if fmt != "csv":
        raise ValueError(f"format={fmt!r}: expected csv or json")
    if emotions is None:
        emotions = next((list(r.probabilities) for r in rows if r.error is None), [])
    buffer = StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "emotion", *emotions, *SEGMENT_COLUMNS, "error"])
    for r in rows:
        if r.error is not None:
            writer.writerow([r.path, "", *[""] * len(emotions), "", "", r.error])
        else:
            probabilities = (f"{r.probabilities[e]:.6f}" for e in emotions)
            writer.writerow([r.path, r.emotion, *probabilities, r.segments, r.silent_segments, ""])
    return buffer.getvalue().splitlines()
