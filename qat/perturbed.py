"""A saved model under the recording chain (`qat perturb`, issue 38): its run's own test split
scored clean and under each declared perturbation (qat.perturb.PERTURBATIONS), item by item,
so that every perturbed answer is paired with the clean answer to the same item.

Which items: the test split of the run that trained the model. The model file records its
run's configuration; the run's record (reports/runs/ser-<key>.json) names its split by digest
(reports/splits/<digest>.json), and the split names its items by uid in the run's corpus.

How an item is scored: whole, as `qat evaluate` and `qat predict` score a file
(qat.saved.segments): consecutive segments of the model's length over the clip, near-silent
ones left out, probabilities averaged. The segments are chosen on the CLEAN clip and the same
sample windows are read from the perturbed clip (every perturbation keeps the length), so a
quieter copy is not scored on fewer segments than the clean one: clean and perturbed differ in
the signal only. Clean and perturbed features go through the network in the same batches.

Randomness: each item's noise (and babble start) comes from a seed drawn from (seed, uid);
rooms are ROOMS simulated rooms per RT60 (pyroomacoustics is slow for long tails), each item
in one of them by its seed. Babble mixes TALKERS other speakers than the item's: from the test
split's speakers when it holds several, else from the corpus's; BABBLE_POOL sounding
utterances per speaker, drawn once by the seed. All of it is named in the record.

Each perturbation's result is one "eval" record, keyed by the model file's content, its run,
the test items, the perturbation and the seed; an existing record is returned unless `force`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qat import io, metrics, paths, runs
from qat.config import label_of
from qat.data.audio import is_near_silent, load_audio
from qat.data.features import compute_features
from qat.data.records import file_digest
from qat.data.splits import Split
from qat.perturb import PERTURBATIONS, Perturbation, perturb
from qat.progress import tqdm
from qat.saved import BLOCK, Predictor, load_model, segment_windows, stored_path

TALKERS = 3  # babble: other speakers mixed per item
BABBLE_POOL = 6  # babble: sounding utterances per speaker the talkers are drawn from
ROOMS = 8  # simulated rooms per RT60
SCORING = (
    "whole utterance: the clean clip's segments (qat.saved.segments: the model's length, over "
    "the whole clip, near-silent ones left out), the same sample windows of the perturbed clip, "
    "probabilities averaged per item"
)
NAMES = tuple(p.name for p in PERTURBATIONS)


def declared(names: Sequence[str] | None = None) -> list[Perturbation]:
    """The declared perturbations named (all of them for None), in declaration order; an
    unknown name is refused with the list of declared ones."""
    if names is None:
        return list(PERTURBATIONS)
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise ValueError(
            f"perturbation {', '.join(map(repr, unknown)) or '(none)'}: not a declared "
            f"perturbation; expected one or more of {', '.join(NAMES)}"
        )
    return [p for p in PERTURBATIONS if p.name in set(names)]


def item_seed(seed: int, uid: str) -> int:
    """The seed of one item's noise: from (seed, uid), so an item gets the same noise
    whichever other items are scored with it."""
    return int(np.random.SeedSequence([seed, zlib.crc32(uid.encode())]).generate_state(1)[0])


def room_seed(seed: int, uid: str) -> int:
    """The seed of the room an item is heard in: one of ROOMS per (seed, RT60)."""
    room = item_seed(seed, uid) % ROOMS
    return int(np.random.SeedSequence([seed, ROOMS, room]).generate_state(1)[0])


def model_name(predictor: Predictor) -> str:
    """A model's label (its run's), else its file's name."""
    run = predictor.run
    return label_of(run) if run else Path(str(predictor.path)).name


# --------------------------------------------------------------------------------------------
# The test items of a model's run


@dataclasses.dataclass
class SplitItems:
    """The test items of a model's run: `items` (utterance records, the split's order),
    `corpus` (all the corpus's records, for babble), the split's digest and the run record's
    path."""

    items: list
    corpus: list
    digest: str
    record_path: Path
    total: int


def split_items(predictor: Predictor, reports: Path | None = None, progress: bool = True):
    """The model's run's test split (SplitItems). A model file that names no run, a run without
    a record or split file here, or a corpus that lacks the split's items is refused, naming
    what is missing."""
    reports = Path(reports or paths.REPORTS)
    run = predictor.run
    if not run or "profile" not in run:
        raise ValueError(
            f"model file {predictor.path} names no run of `qat train` (its 'run' holds "
            f"{sorted(run) if run else 'nothing'}): its test split is unknown; perturb "
            "evaluates a model that a run record under reports/runs/ names"
        )
    found = runs.find_record("ser", run, reports)
    if found is None:
        raise ValueError(
            f"model file {predictor.path}: its run's record "
            f"{runs.record_path('ser', run, reports)} does not exist, so its test split is "
            "unknown; copy the run record (and its split under reports/splits/) beside it"
        )
    record_path, record = found
    digest = (record.get("split") or {}).get("digest")
    split_path = reports / "splits" / f"{digest}.json"
    if not digest or not split_path.is_file():
        raise ValueError(
            f"{record_path}: its split {split_path} does not exist; expected the split file "
            "the run saved under reports/splits/"
        )
    split = Split.from_dict(json.loads(split_path.read_text()))
    if split.digest() != digest:
        raise ValueError(f"{split_path}: its items do not have the digest {digest} it is named by")

    from qat.rundata import load_records  # the run's corpus, as the run loaded it

    corpus = list(load_records(run["corpus"], run["profile"], run.get("root"), progress))
    _, _, test = split.indices(corpus)
    items = [corpus[i] for i in test]
    emotions = sorted({r.emotion for r in items})
    if len(items) < 2 or len(emotions) < 2:
        raise ValueError(
            f"model file {predictor.path}: its run's test split holds {len(items)} item(s) of "
            f"{len(emotions)} emotion(s) {emotions}; a UA on it would mean nothing"
        )
    unknown = sorted({e for e in emotions if e not in predictor.emotions})
    if unknown:
        raise ValueError(
            f"model file {predictor.path}: its test split holds emotions {unknown} the model "
            f"does not know ({', '.join(predictor.emotions)}); is the record another run's?"
        )
    return SplitItems(items, corpus, digest, record_path, len(items))


def subsample(items: list, count: int | None, seed: int) -> list:
    """`count` of the items drawn by the seed (without replacement, in their order), or all."""
    if count is None:
        return items
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ValueError(f"items={count!r}: expected an integer >= 2 (or None: every test item)")
    if count >= len(items):
        return items
    chosen = np.random.default_rng([seed, len(items)]).choice(len(items), count, replace=False)
    return [items[i] for i in sorted(chosen)]


# --------------------------------------------------------------------------------------------
# Scoring


def windows(y: np.ndarray, predictor: Predictor) -> list[slice]:
    """The sample windows qat.saved.segments reads from `y` (whole=True), as slices: the
    sounding ones only (empty when every window is near-silent)."""
    config = predictor.feature_config
    cuts = segment_windows(len(y), config)
    return [w for w in cuts if not is_near_silent(y[w], config.silence_peak)]


def _predict(predictor: Predictor, items, cuts, waveform, desc: str, progress: bool):
    """Probabilities (items, emotions): each item's waveform(i, item) read at its windows
    `cuts[i]`, the segments' probabilities averaged. Blocks follow the items and their window
    counts only, so two calls with the same items and windows batch alike."""
    config = predictor.feature_config
    out = np.zeros((len(items), len(predictor.emotions)), dtype=np.float32)
    stacks: list[np.ndarray] = []
    owners: list[int] = []

    def flush():
        probs = predictor.predict_features(np.concatenate(stacks))
        ends = np.cumsum([len(s) for s in stacks])[:-1]
        for j, p in zip(owners, np.split(probs, ends), strict=True):
            out[j] = p.mean(axis=0)
        stacks.clear()
        owners.clear()

    for i, item in enumerate(tqdm(items, desc=desc, unit="item", disable=not progress)):
        y = waveform(i, item)
        stacks.append(np.stack([compute_features(y[w], config) for w in cuts[i]]))
        owners.append(i)
        if sum(len(s) for s in stacks) >= BLOCK:
            flush()
    if stacks:
        flush()
    return out


def _babble_pool(test: SplitItems, seed: int, sample_rate: int) -> dict:
    """{speaker: [(uid, waveform)]}: BABBLE_POOL sounding utterances per speaker, drawn by the
    seed, from the test split's speakers when it holds several, else the corpus's."""
    test_speakers = sorted({r.speaker for r in test.items})
    source = "test split" if len(test_speakers) > 1 else "corpus"
    speakers = test_speakers if source == "test split" else sorted({r.speaker for r in test.corpus})
    pool = {}
    for k, speaker in enumerate(speakers):
        theirs = [r for r in test.corpus if r.speaker == speaker]
        order = np.random.default_rng([seed, k]).permutation(len(theirs))
        chosen = []
        for i in order:
            y = load_audio(theirs[i].path, sample_rate)
            if not is_near_silent(y):
                chosen.append((theirs[i].uid, y))
            if len(chosen) == BABBLE_POOL:
                break
        if chosen:
            pool[speaker] = chosen
    return {"from": source, "pool": pool}


def _babble_sources(babble: dict, item, seed: int) -> tuple[list[str], list[np.ndarray]]:
    others = [s for s in babble["pool"] if s != item.speaker]
    if not others:
        raise ValueError(
            f"babble: no speaker other than {item.speaker!r} in the {babble['from']} to mix "
            "from; expected a corpus with two or more speakers"
        )
    rng = np.random.default_rng(item_seed(seed, item.uid))
    chosen = rng.choice(len(others), min(TALKERS, len(others)), replace=False)
    picks = [babble["pool"][others[k]][rng.integers(len(babble["pool"][others[k]]))]
             for k in chosen]  # fmt: skip
    return [uid for uid, _ in picks], [y for _, y in picks]


def _config(model: dict, test: SplitItems, count, p: Perturbation, seed: int) -> dict:
    return {
        "model": model,
        "test": {"split": test.digest, "items": count},
        "perturbation": {"name": p.name, "kind": p.kind, "value": p.value},
        "seed": seed,
        "protocol": {"scoring": "clean segments", "talkers": TALKERS,
                     "babble_pool": BABBLE_POOL, "rooms": ROOMS},
    }  # fmt: skip


def evaluate_perturbations(
    model_path,
    names: Sequence[str] | None = None,
    *,
    perturbations: Sequence[Perturbation] | None = None,
    seed: int = 0,
    items: int | None = None,
    force: bool = False,
    progress: bool = True,
    reports: Path | None = None,
) -> list[dict]:
    """Evaluate a saved model on its run's test split, clean and under each perturbation
    (`names`: declared ones, default all; `perturbations`: Perturbation objects instead, for
    tests and studies), paired item by item; one "eval" record per perturbation, returned in
    order with its file under "record_path". A record with the same configuration is returned
    instead of scoring again, unless `force` (then written beside it). `items`: score a subset
    of that many test items drawn by the seed (default every item)."""
    chosen = list(perturbations) if perturbations is not None else declared(names)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an int >= 0")
    reports = Path(reports or paths.REPORTS)
    predictor = load_model(model_path)
    test = split_items(predictor, reports, progress)
    scored = subsample(test.items, items, seed)
    items = None if len(scored) == len(test.items) else items  # every item, however asked
    results: list[dict | None] = []
    todo = []
    model = {"sha256": file_digest(predictor.path), "run": predictor.run}  # by content
    for p in chosen:
        config = _config(model, test, items, p, seed)
        found = None if force else runs.find_record("eval", config, reports)
        results.append(None if found is None else {**found[1], "record_path": str(found[0])})
        if found is None:
            todo.append((len(results) - 1, p, config))
    if not todo:
        return results

    t_start = time.perf_counter()
    name = model_name(predictor)
    fc = predictor.feature_config
    kept, cuts, dropped = [], [], {}
    for item in scored:
        try:
            y = load_audio(item.path, fc.sample_rate)
        except (OSError, ValueError) as err:
            dropped.setdefault("unreadable audio", []).append(f"{item.uid}: {err}")
            continue
        sounding = windows(y, predictor)
        if not sounding:
            dropped.setdefault("near-silent", []).append(item.uid)
            continue
        kept.append(item)
        cuts.append(sounding)
    if len(kept) < 2 or len({r.emotion for r in kept}) < 2:
        raise ValueError(
            f"{name}: {len(kept)} of {len(scored)} test items could be scored "
            f"({ {k: len(v) for k, v in dropped.items()} }); a UA over fewer than two items "
            "or one emotion would mean nothing"
        )

    def load(_, item):
        return load_audio(item.path, fc.sample_rate)

    clean = _predict(predictor, kept, cuts, load, f"{name} clean", progress)
    t_clean = time.perf_counter() - t_start
    emotions = list(predictor.emotions)
    y = np.asarray([emotions.index(r.emotion) for r in kept])
    clean_pred = clean.argmax(1)
    clean_metrics = metrics.summary(y, clean_pred, len(emotions))
    babble = None
    for index, p, config in todo:
        t0 = time.perf_counter()
        talkers: list[list[str]] = []
        if p.kind == "babble" and babble is None:
            babble = _babble_pool(test, seed, fc.sample_rate)

        def perturbed(i, item, p=p, talkers=talkers, pool=babble):
            wave = load_audio(item.path, fc.sample_rate)
            if p.kind == "room":
                return perturb(wave, fc.sample_rate, p, room_seed(seed, item.uid))
            sources = None
            if p.kind == "babble":
                uids, sources = _babble_sources(pool, item, seed)
                talkers.append(uids)
            return perturb(wave, fc.sample_rate, p, item_seed(seed, item.uid), sources)

        probs = _predict(predictor, kept, cuts, perturbed, f"{name} {p.name}", progress)
        pred = probs.argmax(1)
        summary = metrics.summary(y, pred, len(emotions))
        record = {
            "kind": "eval",
            "config": config,
            "model": {
                "path": stored_path(predictor.path),
                "label": name,
                "emotions": emotions,
                "features": dataclasses.asdict(fc),
                "run_record": str(test.record_path),
            },
            "labels": {"emotions": emotions},
            "items": {
                "total": test.total,
                "drawn": len(scored),
                "kept": len(kept),
                "dropped": {k: {"count": len(v), "uids": v} for k, v in dropped.items()},
            },
            "scoring": {
                "rule": SCORING,
                "segment_seconds": fc.segment_seconds,
                "segments": int(sum(len(c) for c in cuts)),
            },
            "metrics": summary,
            "clean": {"metrics": clean_metrics},
            "paired": {
                "n": len(kept),
                "clean_ua": clean_metrics["ua"],
                "perturbed_ua": summary["ua"],
                "ua_difference": summary["ua"] - clean_metrics["ua"],
                "unchanged": float(np.mean(pred == clean_pred)),
            },
            "per_item": {
                "uids": [r.uid for r in kept],
                "speakers": [r.speaker for r in kept],
                "emotions": [r.emotion for r in kept],
                "clean": [emotions[k] for k in clean_pred],
                "perturbed": [emotions[k] for k in pred],
                "clean_correct": (clean_pred == y).astype(int).tolist(),
                "perturbed_correct": (pred == y).astype(int).tolist(),
            },
            "perturbation": _perturbation_notes(p, seed, babble, talkers),
            "code_version": runs.code_version(),
            "wall_time_s": time.perf_counter() - t0 + t_clean,
        }
        path = io.write_json_beside(runs.record_path("eval", config, reports), record)
        results[index] = {**record, "record_path": str(path)}
    return results


def _perturbation_notes(p: Perturbation, seed: int, babble, talkers) -> dict:
    notes = {"name": p.name, "kind": p.kind, "value": p.value,
             "item_seed": "SeedSequence([seed, crc32(uid)])"}  # fmt: skip
    if p.kind == "room":
        notes["rooms"] = ROOMS
    if p.kind == "babble":
        pool = {s: [uid for uid, _ in v] for s, v in babble["pool"].items()}
        notes.update(talkers=TALKERS, speakers_from=babble["from"], pool=pool,
                     mixed=talkers)  # fmt: skip
    return notes


def summary_line(record: dict) -> str:
    """What `qat perturb` prints per perturbation."""
    pair = record["paired"]
    return (
        f"{record['config']['perturbation']['name']}: UA {pair['clean_ua']:.4f} clean, "
        f"{pair['perturbed_ua']:.4f} perturbed ({pair['ua_difference']:+.4f}); "
        f"{pair['unchanged']:.1%} of {pair['n']} predictions unchanged; "
        f"record {record['record_path']}"
    )
