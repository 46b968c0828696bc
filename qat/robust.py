"""The spurious-correlation field's baselines: group reweighting, group-balanced subsampling
(SUBG), GroupDRO, JTT and DFR.

Anti-transfer claims to remove a shortcut (the word or the speaker); these are the methods the
robustness literature removes shortcuts with, so AT is compared with them on the same splits.
As in DomainBed / SubpopBench, each method is a small unit plugged into the one training loop
(qat.train), never a copy of it:

- an *objective* turns the per-item cross-entropy of a batch into the loss Step minimises:
  ``objective(per_item_loss (B,), labels {name: (B,)}, keys (B,) corpus positions) -> scalar``.
  ReweightObjective (group reweighting, JTT's upweighting) and GroupDRO are objectives;
- a *subsample* chooses the training items (balanced_subsample: SUBG);
- DFR needs no training at all: it refits the last layer of a trained network on its
  penultimate features (``dfr``).

A group is an integer id per item, 0..n_groups-1: (emotion, the emotion the confounding factor
was paired with in training) on SynthEmo's confounded splits. Each method uses different
information, which is stated beside its numbers: reweight, SUBG and GroupDRO use group labels in
training; JTT uses none (only the emotion labels); DFR uses a group-balanced held-out set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from qat import metrics

GROUP_LABEL = "group"  # the key of the group ids in a batch's labels

DFR_C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)  # the DFR paper's grid of inverse L1 strength


def _group_ids(
    groups: Any, n_groups: int | None = None, name: str = "groups", kind: str = "group ids"
) -> np.ndarray:
    """``groups`` as a non-empty 1-D int64 array of ids in [0, n_groups) (>= 0 if n_groups is
    None), or a ValueError naming the parameter."""
    if hasattr(groups, "detach"):
        groups = groups.detach().cpu().numpy()
    array = np.asarray(groups)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of {kind}, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer {kind}, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or (n_groups is not None and high >= n_groups):
        bound = f"[0, {n_groups})" if n_groups is not None else ">= 0"
        raise ValueError(f"{name} must hold {kind} in {bound}, got {low}..{high}")
    return array.astype(np.int64)


def _check_n_groups(n_groups: Any) -> int:
    if isinstance(n_groups, bool) or not isinstance(n_groups, int | np.integer) or n_groups < 1:
        raise ValueError(f"n_groups={n_groups!r}: expected an integer >= 1")
    return int(n_groups)


# --- reweighting, subsampling and JTT's weights ----------------------------------------------


# The largest per-item weight reweighting gives, in units of the mean uncapped weight (1).
# Uncapped, a confounded split's rarest groups weighed up to 55x (193x at rho 0.95, issue 34):
# one such item among 31 congruent ones (each about 0.3) carries about 85% of its batch's
# loss, so a few items steer every step. At 10x it carries about half.
REWEIGHT_CAP = 10.0


def group_weights(groups: Any, n_groups: int, cap: float | None = None) -> np.ndarray:
    """Per-item loss weights inversely proportional to the size of the item's group, scaled to
    mean 1 over the items; with `cap`, no weight above it (groups smaller than N / (P * cap)
    then count less than the others).

    Why: under ERM a group's say in the loss is its size, so the congruent groups of a
    confounded split (90% of the items) decide what is learnt. With w_i = N / (P * n_g(i)),
    where P is the number of groups present, every present group's weights sum to N / P: each
    group counts as much as any other, and the mean weight stays 1, so the loss keeps ERM's
    scale. Empty groups have no items to weight and are ignored.
    """
    ids = _group_ids(groups, _check_n_groups(n_groups))
    sizes = np.bincount(ids, minlength=n_groups)
    present = np.count_nonzero(sizes)
    weights = len(ids) / (present * sizes[ids].astype(np.float64))
    if cap is None:
        return weights
    valid = isinstance(cap, int | float) and not isinstance(cap, bool)
    if not (valid and math.isfinite(cap) and cap > 0):
        raise ValueError(f"cap={cap!r}: expected a finite number > 0, or None")
    return np.minimum(weights, float(cap))


def step_matched_epochs(target_steps: int, batches_per_epoch: int) -> int:
    """The whole number of epochs (at least 1) whose optimizer steps come closest to
    `target_steps` (a tie goes up): a method that trains on fewer items (a balanced subsample)
    takes as many steps as the baseline, so its schedule and weight average run as long.

    Why: at the baseline's epochs a subsample of 25 x its smallest group takes about a
    twelfth of the baseline's steps, and an EMA of decay 0.99 per step then still holds a
    third of the first step's weights (issue 34). Training counts whole epochs, so the steps
    match to within half an epoch of the method's own."""
    for name, value in (("target_steps", target_steps), ("batches_per_epoch", batches_per_epoch)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name}={value!r}: expected an integer >= 1")
    return max(1, (2 * int(target_steps) + int(batches_per_epoch)) // (2 * int(batches_per_epoch)))


def balanced_subsample(groups: Any, seed: int) -> np.ndarray:
    """Positions (into ``groups``, ascending) of a group-balanced subsample: every present group
    cut to the size of the smallest present group, items drawn without replacement (seeded).

    Why: SUBG (Idrissi et al. 2022) shows that simply training on such a subsample is a strong
    baseline; the same draw gives DFR its balanced refitting sets.
    """
    ids = _group_ids(groups)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(ids == g) for g in np.unique(ids)]
    smallest = min(len(m) for m in members)
    chosen = [rng.choice(m, size=smallest, replace=False) for m in members]
    return np.sort(np.concatenate(chosen))


def jtt_upweights(misclassified: Any, lambda_up: float) -> np.ndarray:
    """JTT's (Liu et al. 2021) second-stage loss weights: 1 for the items the first-stage model
    classified correctly, ``lambda_up`` for those it misclassified.

    Why: a network trained briefly with ERM learns the shortcut first, so the items it gets
    wrong are mostly those where the shortcut disagrees with the label; upweighting them
    approximates group reweighting without any group label. Two stages (the caller wires
    them): (1) train with plain ERM for T epochs and record which training items it
    misclassifies; (2) train a fresh network with ``ReweightObjective`` over these weights.
    The paper duplicates the error set lambda_up times instead; a weighted mean over a batch
    (see ReweightObjective) is the same objective in expectation.
    """
    if hasattr(misclassified, "detach"):
        misclassified = misclassified.detach().cpu().numpy()
    errors = np.asarray(misclassified)
    if errors.ndim != 1 or errors.dtype != np.bool_:
        raise ValueError(
            f"misclassified must be a 1-D boolean array, got shape {errors.shape} and dtype "
            f"{errors.dtype}"
        )
    if isinstance(lambda_up, bool) or not isinstance(lambda_up, int | float | np.number):
        raise ValueError(f"lambda_up={lambda_up!r}: expected a finite number >= 1")
    if not (math.isfinite(lambda_up) and lambda_up >= 1):
        raise ValueError(
            f"lambda_up={lambda_up!r}: expected a finite number >= 1 (1 is plain ERM; the paper "
            "uses 5 to 100)"
        )
    return np.where(errors, float(lambda_up), 1.0)


class ReweightObjective:
    """Objective: the weighted mean of the per-item losses, sum(w_i l_i) / sum(w_i), with each
    item's weight looked up by its corpus position (the ``keys`` Step passes).

    Why by position: the weights belong to items, not to batch slots, and a position names an
    item however the epoch is shuffled. Why normalised per batch: the loss does not depend on
    the weights' scale, so group weights (mean 1) and JTT's raw upweights (1 or lambda_up) need
    no rescaling. ``weights_by_position`` has one entry per corpus position; positions that never
    reach training may hold any finite weight >= 0.
    """

    def __init__(self, weights_by_position: Any):
        if hasattr(weights_by_position, "detach"):
            weights_by_position = weights_by_position.detach().cpu().numpy()
        weights = np.asarray(weights_by_position, dtype=np.float64)
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(
                f"weights_by_position must be a non-empty 1-D array, got shape {weights.shape}"
            )
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("weights_by_position must hold finite weights >= 0")
        self.weights = torch.from_numpy(weights)

    def __call__(self, per_item_loss: torch.Tensor, labels: dict, keys: torch.Tensor | None):
        if keys is None:
            raise ValueError("keys: ReweightObjective looks weights up by corpus position")
        keys = keys.cpu()
        if len(keys) and (int(keys.min()) < 0 or int(keys.max()) >= len(self.weights)):
            raise ValueError(
                f"keys hold corpus positions {int(keys.min())}..{int(keys.max())}, but "
                f"weights_by_position has {len(self.weights)} entries"
            )
        w = self.weights[keys].to(per_item_loss.device, per_item_loss.dtype)
        # a batch whose weights are all 0 contributes a zero loss rather than 0/0
        return (w * per_item_loss).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


# --- GroupDRO -----------------------------------------------------------------------------


def _sum_across_ranks(*tensors: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], int]:
    """The tensors summed over the ranks of a torchrun job, and the number of ranks (the
    tensors and 1 in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensors, 1
    packed = torch.stack(tensors)
    torch.distributed.all_reduce(packed)
    return tuple(packed.unbind(0)), torch.distributed.get_world_size()


class GroupDRO(torch.nn.Module):
    """Online GroupDRO (Sagawa et al. 2020, Algorithm 1): minimise the loss of the worst group
    rather than the average, through a distribution q over groups updated every step.

    Per batch: each present group's mean loss l_g; then q_g <- q_g * exp(eta * (l_g + a_g)) for
    the groups present in the batch (the others keep their q_g), q renormalised to sum 1; the
    loss is sum_g q_g * l_g. Groups that keep losing gain weight exponentially fast, so the
    network is pushed towards the groups the shortcut gets wrong. As in the authors' code, q is
    updated before the loss is formed and carries no gradient.

    ``adjustment`` (C, a number or one per group) with ``group_counts`` (training items per
    group, n_g) adds a_g = C / sqrt(n_g) to the update only: a small group's loss is a noisier,
    more optimistic estimate of its population loss, so it gets the benefit of the doubt (the
    paper's group adjustment). The paper pairs GroupDRO with strong L2 or early stopping; that
    is the training config's weight decay, not this unit's.

    q (float64, against underflow of rarely losing groups) and the adjustment terms are buffers:
    ``state_dict()`` / ``load_state_dict()`` checkpoint them, and a resumed run continues with
    the same q. Under torchrun the group sums are summed across ranks, so q is the same on every
    rank and the gradients match one process seeing the whole batch.
    """

    def __init__(
        self,
        n_groups: int,
        eta: float,
        adjustment: float | Sequence[float] | None = None,
        group_counts: Sequence[float] | None = None,
    ):
        super().__init__()
        self.n_groups = _check_n_groups(n_groups)
        if isinstance(eta, bool) or not isinstance(eta, int | float | np.number):
            raise ValueError(f"eta={eta!r}: expected a finite number > 0")
        if not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"eta={eta!r}: expected a finite number > 0 (the paper uses 0.01)")
        self.eta = float(eta)
        terms = np.zeros(self.n_groups)
        if adjustment is not None:
            terms = self._adjustment_terms(adjustment, group_counts)
        elif group_counts is not None:
            raise ValueError("group_counts is only used with adjustment (C); got no adjustment")
        self.register_buffer("q", torch.full((self.n_groups,), 1.0 / self.n_groups).double())
        self.register_buffer("adjustment", torch.from_numpy(terms))

    def _adjustment_terms(self, adjustment, group_counts) -> np.ndarray:
        """C / sqrt(n_g) per group; 0 for a group with no training item (it never updates)."""
        c = np.asarray(adjustment, dtype=np.float64)
        if c.ndim == 0:
            c = np.full(self.n_groups, float(c))
        if c.shape != (self.n_groups,) or not np.isfinite(c).all() or (c < 0).any():
            raise ValueError(
                f"adjustment must be a finite number >= 0 or one per group ({self.n_groups}), "
                f"got {np.asarray(adjustment).tolist()}"
            )
        if group_counts is None:
            raise ValueError("group_counts: needed with adjustment (the terms are C / sqrt(n_g))")
        counts = np.asarray(group_counts, dtype=np.float64)
        if counts.shape != (self.n_groups,) or not np.isfinite(counts).all() or (counts < 0).any():
            raise ValueError(
                f"group_counts must hold one count >= 0 per group ({self.n_groups}), got shape "
                f"{counts.shape}"
            )
        return np.where(counts > 0, c / np.sqrt(np.maximum(counts, 1.0)), 0.0)

    def forward(self, per_item_loss: torch.Tensor, labels: dict, keys=None) -> torch.Tensor:
        if GROUP_LABEL not in labels:
            raise ValueError(
                f"GroupDRO needs the batch's group ids as labels[{GROUP_LABEL!r}]; the labels "
                f"hold {sorted(labels)}"
            )
        ids = _group_ids(labels[GROUP_LABEL], self.n_groups, f"labels[{GROUP_LABEL!r}]")
        if ids.shape != tuple(per_item_loss.shape):
            raise ValueError(
                f"labels[{GROUP_LABEL!r}] has {len(ids)} group ids for a batch of shape "
                f"{tuple(per_item_loss.shape)}: expected one per item"
            )
        groups = torch.from_numpy(ids).to(per_item_loss.device)
        if self.q.device != per_item_loss.device:
            self.to(per_item_loss.device)
        sums = per_item_loss.new_zeros(self.n_groups).index_add(0, groups, per_item_loss)
        counts = torch.bincount(groups, minlength=self.n_groups).to(per_item_loss.dtype)
        (batch_sums, batch_counts), world = _sum_across_ranks(sums.detach(), counts)
        sizes = batch_counts.clamp(min=1)
        with torch.no_grad():
            group_loss = (batch_sums / sizes).double()
            # 0 for absent groups: their q_g only changes through the renormalisation;
            # softmax(log q + step) is q * exp(step) renormalised, without overflow
            step = torch.where(batch_counts > 0, self.eta * (group_loss + self.adjustment), 0.0)
            self.q = torch.softmax(torch.log(self.q) + step, dim=0)
        # sum_g q_g * l_g over the whole batch; DDP averages the ranks' gradients, hence * world
        return world * (self.q.to(per_item_loss.dtype) * sums / sizes).sum()


# --- DFR ----------------------------------------------------------------------------------

# scikit-learn 1.8 deprecated `penalty`; before it, l1_ratio alone would silently fit L2
_SKLEARN_1_8 = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8)
_L1 = {"l1_ratio": 1.0} if _SKLEARN_1_8 else {"penalty": "l1"}


@dataclass(frozen=True)
class DFRModel:
    """The refitted last layer: standardisation, then the averaged linear layer.

    ``coef`` (K, D) and ``intercept`` (K,) act on standardised features (one row, the second
    class's, when K = 2, as in scikit-learn); row k is the one-vs-rest model of class
    ``classes[k]``. ``C`` is the chosen inverse L1 strength and ``validation_scores`` the
    worst-group accuracy on the tuning half for every C tried. ``unconverged`` counts the fits
    (tuning and refits) that stopped at ``max_iter`` before liblinear's tolerance was reached.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    C: float
    validation_scores: dict[float, float]
    unconverged: int = 0

    def decision_function(self, features: Any) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, features: Any) -> np.ndarray:
        """Class probabilities, columns in ``classes`` order, as scikit-learn's one-vs-rest
        logistic regression gives them: the logistic for two classes, otherwise every class's
        logistic normalised to sum to 1."""
        z = self.decision_function(features)
        p = 1.0 / (1.0 + np.exp(-z))
        if z.shape[1] == 1:
            return np.hstack([1.0 - p, p])
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, features: Any) -> np.ndarray:
        return self.classes[self.predict_proba(features).argmax(axis=1)]


def _check_c_grid(C_grid: Any) -> list[float]:
    try:
        grid = [float(c) for c in C_grid]
    except (TypeError, ValueError):
        raise ValueError(f"C_grid={C_grid!r}: expected a sequence of numbers > 0") from None
    if not grid or not all(math.isfinite(c) and c > 0 for c in grid) or len(set(grid)) < len(grid):
        raise ValueError(
            f"C_grid={C_grid!r}: expected a non-empty sequence of distinct finite numbers > 0 "
            "(inverse L1 strengths, e.g. the DFR paper's 1.0 ... 0.01)"
        )
    return grid


def _fit_l1(x, y, C, seed, max_iter, classes) -> tuple[np.ndarray, np.ndarray, bool]:
    """One L1 logistic regression, one-vs-rest by liblinear as in the DFR paper's code
    (liblinear fits two classes only, hence OneVsRestClassifier; like the paper, the intercept
    is liblinear's regularised synthetic feature). Returns (coef (K, D), intercept (K,),
    whether a binary fit stopped at ``max_iter``); K = 1 for two classes."""
    if not np.array_equal(np.unique(y), classes):
        raise ValueError(
            f"y_balanced: a group-balanced subsample holds classes {np.unique(y).tolist()}, not "
            f"all of {classes.tolist()}; every group should hold items of a single class"
        )
    binary = LogisticRegression(C=C, solver="liblinear", max_iter=max_iter, random_state=seed,
                                **_L1)  # fmt: skip
    with warnings.catch_warnings():  # counted from n_iter_ instead of printed per fit
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = OneVsRestClassifier(binary).fit(x, y).estimators_
    capped = any(int(np.max(f.n_iter_)) >= max_iter for f in fits)
    return (np.vstack([f.coef_ for f in fits]), np.concatenate([f.intercept_ for f in fits]),
            capped)  # fmt: skip


def dfr(
    features_balanced: Any,
    y_balanced: Any,
    groups_balanced: Any,
    C_grid: Sequence[float] = DFR_C_GRID,
    n_refits: int = 20,
    seed: int = 0,
    *,
    n_groups: int | None = None,
    max_iter: int = 2000,
) -> DFRModel:
    """Deep feature reweighting (Kirichenko et al. 2022): keep the trained network, refit only
    its last layer on a group-balanced held-out set.

    Why: a network trained with ERM on confounded data usually still encodes the core features
    in its penultimate layer; it is the last layer that leans on the shortcut. Refitting it on
    data where the shortcut carries no information recovers most of the group-robust accuracy
    at the cost of a logistic regression.

    ``features_balanced`` (N, D): penultimate features of held-out items (not used in training);
    ``y_balanced`` their labels and ``groups_balanced`` their group ids. The set need not be
    exactly balanced: every fit draws a group-balanced subsample from it (balanced_subsample).
    Features are standardised with the held-out set's statistics. As in the paper:

    1. choose C: split every group's items in two halves (seeded), fit an L1 logistic
       regression (one-vs-rest, liblinear) on a balanced subsample of the first half for each
       C in ``C_grid``, and keep the C with the best worst-group accuracy on the second half
       (the first in ``C_grid`` order on a tie);
    2. fit ``n_refits`` models with that C, each on a fresh balanced subsample of the whole
       set, and average their coefficients and intercepts.

    ``n_groups``: when given, every group 0..n_groups-1 must be in the held-out set (on
    SynthEmo's confounded split, all 25); otherwise the groups present are the groups. Each
    needs at least 2 items, one for each half of the tuning split.
    """
    x = np.asarray(features_balanced, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(
            f"features_balanced must be a non-empty finite (N, D) array, got shape {x.shape}"
        )
    y = _group_ids(y_balanced, name="y_balanced", kind="class indices")
    groups = _group_ids(groups_balanced, None if n_groups is None else _check_n_groups(n_groups),
                        "groups_balanced")  # fmt: skip
    if not len(x) == len(y) == len(groups):
        raise ValueError(
            f"features_balanced, y_balanced and groups_balanced must have one row per item, "
            f"got {len(x)}, {len(y)} and {len(groups)}"
        )
    grid = _check_c_grid(C_grid)
    if isinstance(n_refits, bool) or not isinstance(n_refits, int | np.integer) or n_refits < 1:
        raise ValueError(f"n_refits={n_refits!r}: expected an integer >= 1")
    sizes = np.bincount(groups, minlength=n_groups or 0)
    needed = np.arange(len(sizes)) if n_groups is not None else np.flatnonzero(sizes)
    short = [f"group {g} has {sizes[g]} item{'' if sizes[g] == 1 else 's'}"
             for g in needed if sizes[g] < 2]  # fmt: skip
    if short:
        raise ValueError(
            f"groups_balanced: the balanced held-out set is too small ({', '.join(short[:10])}"
            f"{', ...' if len(short) > 10 else ''}); DFR needs at least 2 items of every "
            f"one of the {len(needed)} groups (one for each half of the split that tunes C). "
            "Use a larger held-out set."
        )
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"y_balanced holds a single class ({classes.tolist()}); DFR needs two")

    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    rng = np.random.default_rng(seed)

    def draw() -> int:
        return int(rng.integers(2**31))

    first = np.zeros(len(groups), dtype=bool)
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        first[members[: len(members) // 2]] = True
    fit_half, score_half = np.flatnonzero(first), np.flatnonzero(~first)
    fit_items = fit_half[balanced_subsample(groups[fit_half], draw())]
    scores, capped = {}, []
    for c in grid:
        coef, intercept, stopped = _fit_l1(z[fit_items], y[fit_items], c, draw(), max_iter,
                                           classes)  # fmt: skip
        capped.append(stopped)
        tuned = DFRModel(np.zeros(z.shape[1]), np.ones(z.shape[1]), coef, intercept, classes,
                         c, {})  # fmt: skip
        predicted = tuned.predict(z[score_half])
        scores[c] = metrics.worst_group_accuracy(y[score_half], predicted, groups[score_half])
    best = max(grid, key=lambda c: scores[c])  # max keeps the first of equal scores

    coefs, intercepts = [], []
    for _ in range(n_refits):
        items = balanced_subsample(groups, draw())
        coef, intercept, stopped = _fit_l1(z[items], y[items], best, draw(), max_iter, classes)
        capped.append(stopped)
        coefs.append(coef)
        intercepts.append(intercept)
    return DFRModel(
        mean=scaler.mean_, scale=scaler.scale_, coef=np.mean(coefs, axis=0),
        intercept=np.mean(intercepts, axis=0), classes=classes, C=best, validation_scores=scores,
        unconverged=sum(capped),
    )  # fmt: skip
