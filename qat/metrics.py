"""Classification metrics used in speech emotion recognition: WA, UA, macro-F1, confusion.

Labels are integer class indices; numpy arrays, lists and torch tensors are accepted.
UA (unweighted accuracy, mean per-class recall) is the field's headline number because
SER corpora are imbalanced; WA (weighted accuracy) is plain accuracy.

Which classes enter the averages matters on small or speaker-wise test sets, where a
class may be missing from a fold:

- UA averages recall over the classes PRESENT in ``y_true``; the recall of an absent class
  is undefined (0/0), and counting it as 0 or 1 would move UA by something that is not a
  property of the model.
- macro-F1 averages over the classes present in ``y_true`` OR in ``y_pred``: a class the
  model predicts but which never occurs has F1 = 0 (all its predictions are false
  positives) and rightly lowers the score; a class with no true positive has F1 = 0.

The numbers come from scikit-learn, always called with explicit ``labels`` so that these class
sets, not sklearn's defaults, decide what is averaged; this module owns the input checks.

Group metrics (the spurious-correlation literature's): a group is an integer id per item, e.g.
(emotion, the emotion the confounding word or speaker was paired with in training). Only the
groups present in ``groups`` enter: an absent group's accuracy is 0/0, as for UA's classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm


def _as_labels(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array, rejecting anything that is not integer labels."""
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must hold class indices >= 0, got {int(array.min())}")
    return array


def _pair(
    y_true: Any, y_pred: Any, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (y_true, y_pred) pair: same non-zero length, indices below ``num_classes``."""
    true = _as_labels(y_true, "y_true")
    pred = _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same length, got {true.size} and {pred.size}"
        )
    if true.size == 0:
        raise ValueError("y_true is empty: metrics need at least one item")
    if num_classes is not None:
        if not isinstance(num_classes, int | np.integer) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        for name, array in (("y_true", true), ("y_pred", pred)):
            if array.max() >= num_classes:
                raise ValueError(
                    f"{name} holds class index {int(array.max())}, "
                    f"expected indices in [0, {num_classes})"
                )
    return true, pred


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs: rows are true classes, columns predicted classes."""
    true, pred = _pair(y_true, y_pred, num_classes)
    return _confusion(true, pred, num_classes)


def _confusion(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    return skm.confusion_matrix(true, pred, labels=np.arange(num_classes)).astype(np.int64)


def weighted_accuracy(y_true: Any, y_pred: Any) -> float:
    """WA: the fraction of items classified correctly (plain accuracy)."""
    true, pred = _pair(y_true, y_pred)
    return float(skm.accuracy_score(true, pred))


def _ua(true: np.ndarray, pred: np.ndarray) -> float:
    # every class in `labels` has support, so no recall is 0/0
    return float(skm.recall_score(true, pred, labels=np.unique(true), average="macro"))


def unweighted_accuracy(y_true: Any, y_pred: Any) -> float:
    """UA: mean per-class recall over the classes present in ``y_true`` (balanced accuracy)."""
    true, pred = _pair(y_true, y_pred)
    return _ua(true, pred)


def _macro_f1(true: np.ndarray, pred: np.ndarray) -> float:
    # F1 = 2TP / (2TP + FP + FN): never 0/0 for a class that occurs as a true or predicted label;
    # a class with no true positive gets 0
    labels = np.union1d(true, pred)
    return float(skm.f1_score(true, pred, labels=labels, average="macro", zero_division=0.0))


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """Macro-F1 over the classes present in ``y_true`` or ``y_pred`` (see module docstring)."""
    true, pred = _pair(y_true, y_pred)
    return _macro_f1(true, pred)


def summary(y_true: Any, y_pred: Any, num_classes: int) -> dict[str, Any]:
    """All metrics in one JSON-ready dict.

    Keys: ``wa``, ``ua``, ``macro_f1`` (floats), ``confusion`` (list of lists of ints, rows
    true) and ``per_class_recall`` (one entry per class, ``None`` for a class absent from
    ``y_true``, so the record stays valid JSON).
    """
    true, pred = _pair(y_true, y_pred, num_classes)
    recall = skm.recall_score(
        true, pred, labels=np.arange(num_classes), average=None, zero_division=np.nan
    )
    return {
        "wa": float(skm.accuracy_score(true, pred)),
        "ua": _ua(true, pred),
        "macro_f1": _macro_f1(true, pred),
        "confusion": _confusion(true, pred, num_classes).tolist(),
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
    }


def _grouped(y_true: Any, y_pred: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate (y_true, y_pred, groups): labels as in ``_pair``, one group id >= 0 per item."""
    true, pred = _pair(y_true, y_pred)
    group = _as_labels(groups, "groups")
    if group.shape != true.shape:
        raise ValueError(
            f"groups must hold one group id per item, got {group.size} for {true.size} items"
        )
    return true, pred, group


def _group_accuracies(true: np.ndarray, pred: np.ndarray, group: np.ndarray) -> dict[int, float]:
    hits = np.bincount(group, weights=(true == pred).astype(np.float64))
    sizes = np.bincount(group)
    return {int(g): float(hits[g] / sizes[g]) for g in np.flatnonzero(sizes)}


def group_accuracies(y_true: Any, y_pred: Any, groups: Any) -> dict[int, float]:
    """Accuracy within each group present in ``groups``, keyed by group id (ascending)."""
    return _group_accuracies(*_grouped(y_true, y_pred, groups))


def worst_group_accuracy(y_true: Any, y_pred: Any, groups: Any) -> float:
    """The lowest accuracy of any present group (not the accuracy of the smallest group): the
    figure a shortcut drives down, since the groups where the shortcut disagrees with the label
    are the ones it gets wrong."""
    return min(group_accuracies(y_true, y_pred, groups).values())


def average_accuracy(
    y_true: Any, y_pred: Any, groups: Any, train_shares: Sequence[float] | Mapping[int, float]
) -> float:
    """Per-group accuracy averaged with weights = the groups' shares in training.

    This is the "average accuracy" of the spurious-correlation literature (Sagawa et al. 2020):
    the accuracy expected on a test set drawn with the training distribution of groups, so it
    is comparable across test sets whose group mix differs. ``train_shares`` is indexed by
    group id (a sequence, or a mapping group id -> share); shares or raw counts both work, as
    the weights are renormalised over the groups present in ``groups``.
    """
    true, pred, group = _grouped(y_true, y_pred, groups)
    accuracies = _group_accuracies(true, pred, group)
    shares = train_shares if isinstance(train_shares, Mapping) else dict(enumerate(train_shares))
    missing = [g for g in accuracies if g not in shares]
    if missing:
        raise ValueError(
            f"train_shares has no share for group(s) {missing}: it needs one for every group "
            "present in groups"
        )
    weights = np.array([shares[g] for g in accuracies], dtype=np.float64)
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"train_shares must be finite and >= 0, got {weights.tolist()}")
    if weights.sum() == 0:
        raise ValueError(
            f"train_shares gives every group present in groups ({list(accuracies)}) a share of "
            "0: the average is undefined"
        )
    return float(np.dot(weights, list(accuracies.values())) / weights.sum())
