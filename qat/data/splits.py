"""Task setups: which utterances train, validate and test, deterministic given a seed.

Setups:
- "random": stratified by emotion.
- "speaker": held-out speakers for test (speaker-independent); `kfold_speakers` gives
  leave-speakers-out folds.
- "word": held-out words for test (text-independent).
- "confounded" (SynthEmo): in training each emotion co-occurs with its own subset of words
  (factor "word") or speakers (factor "speaker") with probability rho; the test set breaks the
  correlation, so a network that learned the shortcut fails it.
- "unconfounded": the ceiling control for "confounded": the same test set and a train/val of
  the same size per emotion drawn uniformly from the same pool.

`val_fraction` is always a share of the items left after the test set is removed; it is drawn
stratified by emotion. Splits are stored as uids, so a split saved with a result can be
reapplied to the corpus later (`Split.indices`).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qat.data.records import Utterance, emotions_of

SETUPS = ("random", "speaker", "word", "confounded", "unconfounded")
FACTORS = ("word", "speaker")
# Share of speakers or words held out for test when the caller does not say how many.
DEFAULT_HELD_OUT_SHARE = 0.25


@dataclass(frozen=True)
class Split:
    """A train/val/test partition as tuples of record uids, with what made it (`meta`:
    held-out speakers or words, rho, the emotion -> subset assignment, ...; JSON types only)."""

    setup: str
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    meta: dict = field(default_factory=dict)

    def indices(self, records: Sequence[Utterance]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions of the train, val and test items in `records` (int64 arrays)."""
        position = _positions_by_uid(records)

        def lookup(uids: tuple[str, ...], part: str) -> np.ndarray:
            missing = [u for u in uids if u not in position]
            if missing:
                raise ValueError(
                    f"records: {len(missing)} {part} uids of this split are missing "
                    f"(e.g. {missing[0]!r}); expected the corpus the split was made from"
                )
            return np.array([position[u] for u in uids], dtype=np.int64)

        return lookup(self.train, "train"), lookup(self.val, "val"), lookup(self.test, "test")

    def to_dict(self) -> dict:
        return {
            "setup": self.setup,
            "seed": self.seed,
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, state: dict) -> Split:
        return cls(
            setup=state["setup"],
            seed=int(state["seed"]),
            train=tuple(state["train"]),
            val=tuple(state["val"]),
            test=tuple(state["test"]),
            meta=dict(state.get("meta", {})),
        )

    def digest(self) -> str:
        """sha256 of the three id lists: equal digests mean the same partition."""
        payload = json.dumps([list(self.train), list(self.val), list(self.test)])
        return hashlib.sha256(payload.encode()).hexdigest()

    def congruent(self, records: Sequence[Utterance], indices) -> np.ndarray:
        """For confounded/unconfounded splits: does each item's word (or speaker) belong to its
        emotion's training subset? Bool array aligned with `indices`."""
        if "assignment" not in self.meta:
            raise ValueError(
                f"split setup {self.setup!r} has no emotion -> subset assignment; expected a "
                "'confounded' or 'unconfounded' split"
            )
        attr = "text" if self.meta["factor"] == "word" else "speaker"
        owner = {v: e for e, values in self.meta["assignment"].items() for v in values}
        return np.array(
            [owner.get(getattr(records[i], attr)) == records[i].emotion for i in indices],
            dtype=bool,
        )

    def groups(self, records: Sequence[Utterance], indices, emotions: Sequence[str]) -> np.ndarray:
        """For confounded/unconfounded splits: each item's group, (its emotion, the emotion
        its word or speaker was paired with in training), as emotion_index * E + owner_index
        with E = len(emotions): E x E groups, congruent on the diagonal."""
        attr = "text" if self.meta["factor"] == "word" else "speaker"
        owner = {v: e for e, values in self.meta["assignment"].items() for v in values}
        index = {e: i for i, e in enumerate(emotions)}
        out = []
        for i in indices:
            item = records[i]
            paired = owner.get(getattr(item, attr))
            if paired is None:
                value = getattr(item, attr)
                raise ValueError(f"{item.uid}: its {attr} {value!r} is paired with no emotion "
                                 "in this split; expected every value assigned")  # fmt: skip
            out.append(index[item.emotion] * len(emotions) + index[paired])
        return np.asarray(out, dtype=np.int64)

    def unused_indices(self, records: Sequence[Utterance]) -> np.ndarray:
        """Positions of the items in no part: on a confounded split, the training speakers'
        items the split left out to reach rho (DFR's held-out pool)."""
        used = set(self.train) | set(self.val) | set(self.test)
        return np.array([i for i, r in enumerate(records) if r.uid not in used], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Helpers


def _positions_by_uid(records: Sequence[Utterance]) -> dict[str, int]:
    position: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.uid in position:
            raise ValueError(f"records: uid {r.uid!r} occurs twice; expected unique uids")
        position[r.uid] = i
    return position


def _rng(seed: int, stage: str) -> np.random.Generator:
    """An independent stream per stage, so that e.g. the held-out speakers of a seed do not
    depend on which setup consumed random numbers before choosing them."""
    return np.random.default_rng([seed, zlib.crc32(stage.encode())])


def _emotion_array(records: Sequence[Utterance]) -> np.ndarray:
    return np.array([r.emotion for r in records])


def _stratified_take(
    positions: np.ndarray, emotions: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split `positions` into (rest, taken) with round(fraction * n_e) items of each emotion e
    taken; the count depends only on n_e, so equal per-emotion counts give equal sizes."""
    taken = []
    for emotion in sorted(set(emotions[positions].tolist())):
        group = positions[emotions[positions] == emotion]
        taken.append(rng.permutation(group)[: round(fraction * len(group))])
    taken_all = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=np.int64)
    rest = np.setdiff1d(positions, taken_all)
    return rest, taken_all


def _n_held_out(requested: int | None, available: list[str], name: str, what: str) -> int:
    """How many of `available` speakers/words go to test; at least one must stay for train."""
    if len(available) < 2:
        raise ValueError(
            f"records: {len(available)} {what} present, expected at least 2 for a {what}-held-out "
            f"split ({name})"
        )
    if requested is None:
        return max(1, round(DEFAULT_HELD_OUT_SHARE * len(available)))
    if isinstance(requested, bool) or not isinstance(requested, int | np.integer):
        raise ValueError(f"{name}={requested!r}: expected an integer")
    if not 1 <= requested < len(available):
        raise ValueError(
            f"{name}={requested}: expected 1 <= {name} < {len(available)} "
            f"(the number of {what}; at least one must remain for training)"
        )
    return int(requested)


def _hold_out(values: list[str], n: int, seed: int, stage: str) -> list[str]:
    return sorted(_rng(seed, stage).permutation(sorted(values))[:n].tolist())


def _uids(records: Sequence[Utterance], positions: np.ndarray) -> tuple[str, ...]:
    return tuple(records[i].uid for i in np.sort(positions))


def _make(setup, seed, records, train, val, test, meta, **params) -> Split:
    """Build the Split, refusing an empty part (naming the options that produced it)."""
    for part, positions in (("train", train), ("val", val), ("test", test)):
        if len(positions) == 0:
            options = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ValueError(
                f"setup {setup!r}: the {part} set is empty with {options}; expected every part "
                "to hold items (raise the fraction or counts, or use more records)"
            )
    return Split(
        setup, seed, _uids(records, train), _uids(records, val), _uids(records, test), meta
    )


# --------------------------------------------------------------------------------------------
# Setups


def make_split(
    records: Sequence[Utterance],
    setup: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    n_test_speakers: int | None = None,
    n_test_words: int | None = None,
    rho: float = 0.9,
    factor: str = "word",
    folds: int | list[list[str]] | None = None,
    fold: int | None = None,
) -> Split:
    """Partition `records` for a task setup (see the module docstring).

    test_fraction is used by "random" only; the held-out setups take n_test_speakers /
    n_test_words (default a quarter of them, at least one), or, with `folds` and `fold`, the
    fold-th of `folds` fixed groups (`fold_groups`; or of an explicit fold map, a list of
    groups such as `default_folds`), so that across folds every speaker (or word) is tested
    once. A held-out split never trains on fewer speakers (words) than it tests on, unless
    n_test_speakers (n_test_words) asks for it. rho and factor concern "confounded" and
    "unconfounded" only.
    """
    if setup not in SETUPS:
        raise ValueError(f"setup={setup!r}: expected one of {SETUPS}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r}: expected a number in (0, 1)")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r}: expected a number in (0, 1)")
    if len(records) == 0:
        raise ValueError("records: expected at least one utterance, got none")
    _positions_by_uid(records)  # uids must be unique
    seed = int(seed)
    if setup == "random":
        if fold is not None:
            raise ValueError(f"fold={fold!r}: the random setup has no folds; expected None")
        return _random_split(records, seed, val_fraction, test_fraction)
    held = (fold, folds) if fold is not None else None
    if setup in ("speaker", "word"):
        return _held_out_split(
            records, setup, seed, val_fraction, n_test_speakers, n_test_words, held
        )
    return _confounded_split(
        records, setup, seed, val_fraction, n_test_speakers, n_test_words, rho, factor, held
    )


def fold_groups(values: Sequence[str], folds: int, what: str = "speakers") -> list[list[str]]:
    """`values` (speakers, words, sessions) dealt into `folds` near-equal groups, the same for
    every run seed (the partition is fixed, so methods compared on (seed, fold) share folds)."""
    values = sorted(set(values))
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer):
        raise ValueError(f"folds={folds!r}: expected an integer >= 2")
    if not 2 <= folds <= len(values):
        raise ValueError(
            f"folds={folds}: expected 2 <= folds <= {len(values)} (the number of {what})"
        )
    groups = np.array_split(_rng(0, f"folds of {what}").permutation(values), int(folds))
    return [sorted(g.tolist()) for g in groups]


# Speaker folds the field uses (EmoBox; the AT and WASPAA papers for IEMOCAP): the number of
# folds per corpus; speakers are dealt in sorted order (IEMOCAP: by session).
CORPUS_FOLDS = {"iemocap": 5, "ravdess": 6, "emodb": 5, "emovo": 6, "savee": 4}
LEAVE_ONE_OUT_UP_TO = 6  # corpora with at most this many speakers: leave-one-speaker-out


def default_folds(corpus: str, speakers: Sequence[str]) -> list[list[str]]:
    """The corpus's fixed speaker folds: IEMOCAP leave-one-session-out (speakers "Ses01F",
    "Ses01M" share session "Ses01"); RAVDESS 6 folds of 4 actors, EmoDB 5, EMOVO 6, SAVEE 4;
    any other corpus leave-one-speaker-out up to 6 speakers, else 5 folds. Speakers are dealt
    in sorted order into contiguous near-equal groups, so the folds never depend on a seed."""
    speakers = sorted(set(speakers))
    if corpus == "iemocap":
        sessions: dict[str, list[str]] = {}
        for s in speakers:
            sessions.setdefault(s[:5], []).append(s)
        return [sessions[k] for k in sorted(sessions)]
    if corpus in CORPUS_FOLDS:
        k = min(CORPUS_FOLDS[corpus], len(speakers))
    else:
        k = len(speakers) if len(speakers) <= LEAVE_ONE_OUT_UP_TO else 5
    if k < 2:
        raise ValueError(f"{corpus}: {len(speakers)} speaker(s); speaker folds need at least two")
    return [list(g) for g in np.array_split(np.array(speakers, dtype=object), k)]


def _held_out_values(values, requested, name: str, what: str, seed: int, held) -> list[str]:
    """The held-out speakers (words): the fold's group, or `requested` of them by seed."""
    if held is not None:
        return _fold_held_out(values, held, what)
    return _hold_out(values, _n_held_out(requested, values, name, what), seed, f"held-out {what}")


def _fold_meta(held: tuple) -> dict:
    fold, folds = held
    return {"fold": int(fold), "folds": len(folds) if isinstance(folds, list) else int(folds)}


def _fold_held_out(values: list[str], held: tuple, what: str) -> list[str]:
    """The fold-th group: of an explicit fold map (a list of groups) or of `fold_groups`."""
    fold, folds = held
    if folds is None:
        raise ValueError(f"fold={fold!r}: expected folds=<number of folds> with it")
    if isinstance(folds, list):
        groups, folds = folds, len(folds)
        unknown = sorted({v for g in groups for v in g} - set(values))
        if unknown:
            raise ValueError(f"fold map: {what} {unknown} are not in the records")
    else:
        groups = fold_groups(values, folds, what)
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 0 <= fold < folds:
        raise ValueError(f"fold={fold!r}: expected an integer in 0..{folds - 1}")
    return groups[int(fold)]


def _random_split(records, seed, val_fraction, test_fraction) -> Split:
    emotions = _emotion_array(records)
    everything = np.arange(len(records))
    pool, test = _stratified_take(everything, emotions, test_fraction, _rng(seed, "test"))
    train, val = _stratified_take(pool, emotions, val_fraction, _rng(seed, "val"))
    meta = {"val_fraction": val_fraction, "test_fraction": test_fraction}
    return _make(
        "random", seed, records, train, val, test, meta,
        val_fraction=val_fraction, test_fraction=test_fraction,
    )  # fmt: skip


def _held_out_split(
    records, setup, seed, val_fraction, n_test_speakers, n_test_words, held=None
) -> Split:
    """Test = every item of some held-out speakers (or words); val stratified from the rest."""
    attr, name, requested = (
        ("speaker", "n_test_speakers", n_test_speakers)
        if setup == "speaker"
        else ("text", "n_test_words", n_test_words)
    )
    what = "speakers" if setup == "speaker" else "words"
    values = sorted({getattr(r, attr) for r in records})
    held_out = _held_out_values(values, requested, name, what, seed, held)
    n = len(held_out)
    if requested is None and len(values) - n < n:
        raise ValueError(
            f"the split would train on {len(values) - n} {what} and test on {n}; expected at "
            f"least as many for training (give {name} explicitly to allow it)"
        )
    in_test = np.isin(np.array([getattr(r, attr) for r in records]), held_out)
    test, pool = np.flatnonzero(in_test), np.flatnonzero(~in_test)
    train, val = _stratified_take(pool, _emotion_array(records), val_fraction, _rng(seed, "val"))
    meta = {f"test_{what}": held_out, "val_fraction": val_fraction}
    if held is not None:
        meta.update(_fold_meta(held))
    return _make(
        setup, seed, records, train, val, test, meta, **{name: n}, val_fraction=val_fraction
    )


def kfold_speakers(
    records: Sequence[Utterance], k: int, seed: int = 0, val_fraction: float = 0.1
) -> list[Split]:
    """k leave-speakers-out folds (setup "speaker"): speakers are shuffled and dealt into k
    groups of near-equal size; fold i tests on group i, so every speaker is tested exactly once.
    k = number of speakers gives leave-one-speaker-out."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r}: expected a number in (0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    _positions_by_uid(records)
    speakers = sorted({r.speaker for r in records})
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 2 <= k <= len(speakers):
        raise ValueError(f"k={k!r}: expected an integer in [2, {len(speakers)}] (the speakers)")
    groups = np.array_split(_rng(int(seed), "speaker folds").permutation(speakers), k)
    speaker_of = np.array([r.speaker for r in records])
    emotions = _emotion_array(records)
    splits = []
    for fold, group in enumerate(groups):
        held_out = sorted(group.tolist())
        in_test = np.isin(speaker_of, held_out)
        test, pool = np.flatnonzero(in_test), np.flatnonzero(~in_test)
        train, val = _stratified_take(pool, emotions, val_fraction, _rng(int(seed), f"val {fold}"))
        meta = {"fold": fold, "k": int(k), "test_speakers": held_out, "val_fraction": val_fraction}
        splits.append(_make("speaker", int(seed), records, train, val, test, meta, k=k, fold=fold))
    return splits


# --------------------------------------------------------------------------------------------
# Confounded and its control


def _confounded_split(
    records, setup, seed, val_fraction, n_test_speakers, n_test_words, rho, factor, held=None
) -> Split:
    """factor "word": test = all items of held-out speakers; in the training pool each emotion
    owns a disjoint subset of the words. factor "speaker": test = all items of held-out words
    (every speaker); each emotion owns a disjoint subset of the speakers. The pool keeps every
    congruent item and just enough incongruent ones for a congruent share of rho."""
    if factor not in FACTORS:
        raise ValueError(f"factor={factor!r}: expected one of {FACTORS}")
    emotions_present = emotions_of(records)
    n_emotions = len(emotions_present)
    if n_emotions < 2:
        raise ValueError(f"records: {n_emotions} emotion present, expected at least 2")
    if not 0 <= rho <= 1:
        raise ValueError(f"rho={rho!r}: expected a probability in [0, 1]")
    if rho < 1 / n_emotions:
        raise ValueError(
            f"rho={rho!r}: below chance (1/{n_emotions} emotions = {1 / n_emotions:.3f}); "
            "expected a congruent share at least at chance"
        )

    # The held-out dimension is the one NOT correlated with emotion in training, so that the
    # test set keeps the full factorial design of the corpus.
    test_attr, test_name, requested, test_what = (
        ("speaker", "n_test_speakers", n_test_speakers, "speakers")
        if factor == "word"
        else ("text", "n_test_words", n_test_words, "words")
    )
    test_values = sorted({getattr(r, test_attr) for r in records})
    held_out = _held_out_values(test_values, requested, test_name, test_what, seed, held)
    n_test = len(held_out)
    in_test = np.isin(np.array([getattr(r, test_attr) for r in records]), held_out)
    test, pool = np.flatnonzero(in_test), np.flatnonzero(~in_test)

    factor_attr = "text" if factor == "word" else "speaker"
    factor_of = np.array([getattr(r, factor_attr) for r in records])
    assignment = _assign_subsets(
        sorted(set(factor_of[pool].tolist())), emotions_present, seed, factor
    )
    owner = {v: e for e, values in assignment.items() for v in values}
    emotions = _emotion_array(records)
    congruent = np.array([owner.get(v) == e for v, e in zip(factor_of, emotions, strict=True)])

    kept, keep_share = _subsample_to_rho(pool, emotions, congruent, rho, emotions_present, seed)
    if setup == "unconfounded":
        kept = _uniform_like(pool, emotions, kept, seed)
    train, val = _stratified_take(kept, emotions, val_fraction, _rng(seed, "val"))
    meta = {
        "factor": factor,
        "rho": float(rho),
        f"test_{test_what}": held_out,
        "assignment": assignment,
        "incongruent_keep_share": keep_share,
        "val_fraction": val_fraction,
        "train_congruent_share": float(congruent[train].mean()) if len(train) else float("nan"),
        "unused_pool": len(pool) - len(kept),
    }
    if held is not None:
        meta.update(_fold_meta(held))
    return _make(
        setup, seed, records, train, val, test, meta,
        rho=rho, factor=factor, **{test_name: n_test}, val_fraction=val_fraction,
    )  # fmt: skip


def _assign_subsets(
    values: list[str], emotions: list[str], seed: int, factor: str
) -> dict[str, list[str]]:
    """A seeded partition of the words (or speakers) into one near-equal subset per emotion."""
    if len(values) < len(emotions):
        name = "words" if factor == "word" else "training speakers"
        raise ValueError(
            f"records: {len(values)} {name} for {len(emotions)} emotions with factor={factor!r}; "
            f"expected at least one per emotion"
        )
    groups = np.array_split(_rng(seed, f"assign {factor}").permutation(values), len(emotions))
    return {e: sorted(g.tolist()) for e, g in zip(emotions, groups, strict=True)}


def _subsample_to_rho(pool, emotions, congruent, rho, emotions_present, seed):
    """Keep every congruent pool item and, per emotion, round(C_e (1 - rho) / rho) of its I_e
    incongruent items chosen uniformly: each emotion's congruent share is then rho up to
    rounding (not merely in expectation). Returns (kept positions, {emotion: the share q_e of
    its incongruent items kept})."""
    rng = _rng(seed, "subsample")
    kept, keep_share = [], {}
    for emotion in emotions_present:
        group = pool[emotions[pool] == emotion]
        cong, incong = group[congruent[group]], group[~congruent[group]]
        n_keep = round(len(cong) * (1 - rho) / rho)  # rho >= 1/n_emotions > 0 was checked
        if n_keep > len(incong):
            raise ValueError(
                f"rho={rho!r}: emotion {emotion!r} already has a congruent share of "
                f"{len(cong) / max(1, len(group)):.3f} in the pool, above rho; expected rho at "
                "least the natural share"
            )
        keep_share[emotion] = n_keep / len(incong) if len(incong) else 1.0
        kept += [cong, rng.permutation(incong)[:n_keep]]
    return np.sort(np.concatenate(kept)), keep_share


def _uniform_like(pool, emotions, kept, seed) -> np.ndarray:
    """As many pool items per emotion as the confounded split kept, drawn uniformly: same size
    and class balance, no correlation with the factor."""
    rng = _rng(seed, "unconfounded")
    drawn = []
    for emotion in sorted(set(emotions[kept].tolist())):
        group = pool[emotions[pool] == emotion]
        drawn.append(rng.permutation(group)[: int(np.sum(emotions[kept] == emotion))])
    return np.sort(np.concatenate(drawn))
