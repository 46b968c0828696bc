"""Metrics against hand-computed cases and against a plain numpy float64 reference on random
labels (never against scikit-learn, which qat.metrics itself calls)."""

import numpy as np
import pytest
import torch

from qat.metrics import (
    average_accuracy,
    confusion_matrix,
    group_accuracies,
    macro_f1,
    summary,
    unweighted_accuracy,
    weighted_accuracy,
    worst_group_accuracy,
)

# Hand case 1: three classes, all present.
#   true 0 -> pred 0,1,0,0 ; true 1 -> pred 1,2 ; true 2 -> pred 2,2,0,2
TRUE_A = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
PRED_A = [0, 1, 0, 1, 2, 2, 2, 0, 2, 0]

# Hand case 2: four classes, class 2 absent everywhere, class 3 only predicted.
TRUE_B = [0, 0, 1, 1, 1]
PRED_B = [0, 3, 1, 1, 0]


def test_confusion_matrix_counts_rows_true_columns_predicted():
    expected = np.array([[3, 1, 0], [0, 1, 1], [1, 0, 3]])
    np.testing.assert_array_equal(confusion_matrix(TRUE_A, PRED_A, 3), expected)
    expected_b = np.array([[1, 0, 0, 1], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(TRUE_B, PRED_B, 4), expected_b)


def test_hand_case_all_classes_present():
    assert weighted_accuracy(TRUE_A, PRED_A) == pytest.approx(7 / 10)
    # recalls 3/4, 1/2, 3/4
    assert unweighted_accuracy(TRUE_A, PRED_A) == pytest.approx((3 / 4 + 1 / 2 + 3 / 4) / 3)
    # F1 = 2TP / (support + predicted): 6/8, 2/4, 6/8
    assert macro_f1(TRUE_A, PRED_A) == pytest.approx((0.75 + 0.5 + 0.75) / 3)


def test_hand_case_absent_and_predicted_only_classes():
    assert weighted_accuracy(TRUE_B, PRED_B) == pytest.approx(3 / 5)
    # UA over the classes present in y_true (0 and 1) only: recalls 1/2 and 2/3.
    assert unweighted_accuracy(TRUE_B, PRED_B) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # macro-F1 over classes 0, 1, 3: 2/4, 4/5, 0 (class 3 predicted once, never true).
    assert macro_f1(TRUE_B, PRED_B) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_summary_is_json_ready_and_consistent():
    out = summary(torch.tensor(TRUE_B), np.array(PRED_B), num_classes=4)
    assert out["wa"] == pytest.approx(0.6)
    assert out["ua"] == pytest.approx(7 / 12)
    assert out["macro_f1"] == pytest.approx(1.3 / 3)
    assert out["confusion"] == [[1, 0, 0, 1], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert out["per_class_recall"][0] == pytest.approx(0.5)
    assert out["per_class_recall"][1] == pytest.approx(2 / 3)
    assert out["per_class_recall"][2:] == [None, None]
    import json

    json.dumps(out, allow_nan=False)  # raises if anything is not plain JSON


def test_tensors_and_lists_give_the_same_numbers():
    assert weighted_accuracy(torch.tensor(TRUE_A), torch.tensor(PRED_A)) == pytest.approx(0.7)
    assert unweighted_accuracy(np.array(TRUE_A), PRED_A) == pytest.approx(2 / 3)


def reference_metrics(y_true, y_pred, k):
    """The definitions, in float64 with loops: confusion[t, p] counts; WA = correct / n;
    recall_c = TP_c / support_c over classes with support; F1_c = 2 P_c R_c / (P_c + R_c)
    (0 when P_c + R_c = 0, P_c = 0 when nothing is predicted as c) over classes that occur
    as a true or a predicted label."""
    y_true, y_pred = np.asarray(y_true).tolist(), np.asarray(y_pred).tolist()
    confusion = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        confusion[t, p] += 1
    n = len(y_true)
    wa = sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / n
    recalls, f1s, per_class = [], [], []
    for c in range(k):
        tp = float(confusion[c, c])
        support, predicted = float(confusion[c].sum()), float(confusion[:, c].sum())
        recall = tp / support if support else None
        per_class.append(recall)
        if support:
            recalls.append(recall)
        if support or predicted:
            precision = tp / predicted if predicted else 0.0
            r = recall or 0.0
            f1s.append(2 * precision * r / (precision + r) if precision + r else 0.0)
    return {
        "wa": wa,
        "ua": sum(recalls) / len(recalls),
        "macro_f1": sum(f1s) / len(f1s),
        "confusion": confusion,
        "per_class_recall": per_class,
    }


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_a_numpy_reference_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    n = int(rng.integers(1, 80))
    # Draw from random subsets of classes so some are missing from y_true, y_pred or both.
    y_true = rng.choice(rng.permutation(k)[: max(1, k - 1)], size=n)
    y_pred = np.where(
        rng.random(n) < 0.5, y_true, rng.choice(rng.permutation(k)[: max(1, k - 2)], size=n)
    )
    ref = reference_metrics(y_true, y_pred, k)
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, k), ref["confusion"])
    assert weighted_accuracy(y_true, y_pred) == pytest.approx(ref["wa"], rel=1e-12)
    assert unweighted_accuracy(y_true, y_pred) == pytest.approx(ref["ua"], rel=1e-12)
    assert macro_f1(y_true, y_pred) == pytest.approx(ref["macro_f1"], rel=1e-12)
    out = summary(y_true, y_pred, k)
    assert out["confusion"] == ref["confusion"].tolist()
    assert [out["wa"], out["ua"], out["macro_f1"]] == pytest.approx(
        [ref["wa"], ref["ua"], ref["macro_f1"]], rel=1e-12
    )
    assert out["per_class_recall"] == [
        None if r is None else pytest.approx(r, rel=1e-12) for r in ref["per_class_recall"]
    ]


def test_single_class_and_all_wrong_edge_cases():
    # one class everywhere: every metric 1
    assert summary([2, 2, 2], [2, 2, 2], 3)["ua"] == 1.0
    assert macro_f1([2, 2, 2], [2, 2, 2]) == 1.0
    # all wrong: UA and F1 are 0, and the predicted-only class enters F1 but not UA
    assert unweighted_accuracy([0, 0], [1, 1]) == 0.0
    assert macro_f1([0, 0], [1, 1]) == 0.0
    out = summary([0, 0], [1, 1], 3)
    assert out["per_class_recall"] == [0.0, None, None]
    assert out["confusion"] == [[0, 2, 0], [0, 0, 0], [0, 0, 0]]


def test_metrics_do_not_warn_about_absent_classes():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary(TRUE_B, PRED_B, num_classes=4)
        macro_f1(TRUE_B, PRED_B)
        unweighted_accuracy(TRUE_B, PRED_B)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "num_classes", "match"),
    [
        ([0, 1], [0], 2, "same length"),
        ([], [], 2, "empty"),
        ([[0, 1]], [[0, 1]], 2, "1-D"),
        ([0.0, 1.0], [0, 1], 2, "integer"),
        ([0, -1], [0, 1], 2, ">= 0"),
        ([0, 2], [0, 1], 2, r"y_true holds class index 2, expected indices in \[0, 2\)"),
        ([0, 1], [0, 5], 2, "y_pred holds class index 5"),
        ([0, 1], [0, 1], 0, "num_classes"),
    ],
)
def test_bad_labels_raise_clear_errors(y_true, y_pred, num_classes, match):
    with pytest.raises(ValueError, match=match):
        summary(y_true, y_pred, num_classes)


# --- group metrics ---------------------------------------------------------------------------

# Hand case: groups 0 (4 items), 2 (5 items), 5 (1 item); group 1, 3, 4 absent.
#   group 0: true 0,0,1,1 pred 0,1,1,1 -> 3/4
#   group 2: true 2,2,2,0,0 pred 2,0,0,0,1 -> 2/5 (the worst group, though not the smallest)
#   group 5: true 1 pred 1 -> 1/1 (the smallest group, and the best)
TRUE_G = [0, 0, 1, 1, 2, 2, 2, 0, 0, 1]
PRED_G = [0, 1, 1, 1, 2, 0, 0, 0, 1, 1]
GROUPS_G = [0, 0, 0, 0, 2, 2, 2, 2, 2, 5]


def test_group_accuracies_hand_case():
    assert group_accuracies(TRUE_G, PRED_G, GROUPS_G) == pytest.approx({0: 3 / 4, 2: 2 / 5, 5: 1.0})
    assert list(group_accuracies(TRUE_G, PRED_G, GROUPS_G)) == [0, 2, 5]  # present ids, ascending


def test_worst_group_accuracy_is_the_lowest_not_the_smallest_groups():
    assert worst_group_accuracy(TRUE_G, PRED_G, GROUPS_G) == pytest.approx(2 / 5)
    assert worst_group_accuracy(torch.tensor(TRUE_G), PRED_G, np.array(GROUPS_G)) == 0.4


def test_average_accuracy_weights_groups_by_their_training_shares():
    # training shares (by group id) 0.6, 0.1 (absent from test), 0.2, 0, 0, 0.1: over the groups
    # present in the test set (0, 2, 5) the weights 0.6, 0.2, 0.1 are renormalised by 0.9
    shares = [0.6, 0.1, 0.2, 0.0, 0.0, 0.1]
    expected = (0.6 * 3 / 4 + 0.2 * 2 / 5 + 0.1 * 1.0) / 0.9
    assert average_accuracy(TRUE_G, PRED_G, GROUPS_G, shares) == pytest.approx(expected)
    # counts instead of shares, and a mapping instead of a sequence, give the same number
    counts = {0: 600, 2: 200, 5: 100}
    assert average_accuracy(TRUE_G, PRED_G, GROUPS_G, counts) == pytest.approx(expected)
    # equal shares: the plain mean of the group accuracies, not the item accuracy (7/10)
    assert average_accuracy(TRUE_G, PRED_G, GROUPS_G, [1] * 6) == pytest.approx(
        (3 / 4 + 2 / 5 + 1) / 3
    )


def reference_group_metrics(y_true, y_pred, groups, shares):
    """Per-group accuracy by a loop over items; the worst of them; their average weighted by
    the training shares of the groups present."""
    hits, sizes = {}, {}
    for t, p, g in zip(y_true.tolist(), y_pred.tolist(), groups.tolist(), strict=True):
        hits[g] = hits.get(g, 0) + (t == p)
        sizes[g] = sizes.get(g, 0) + 1
    accuracies = {g: hits[g] / sizes[g] for g in sorted(sizes)}
    total = sum(shares[g] for g in accuracies)
    average = sum(shares[g] * a for g, a in accuracies.items()) / total
    return accuracies, min(accuracies.values()), average


@pytest.mark.parametrize("seed", range(12))
def test_group_metrics_agree_with_a_numpy_loop_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n_groups, n = int(rng.integers(1, 26)), int(rng.integers(1, 200))
    groups = rng.choice(rng.permutation(n_groups)[: max(1, n_groups - 3)], size=n)
    y_true = rng.integers(0, 5, size=n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 5, size=n))
    shares = rng.dirichlet(np.ones(n_groups))
    accuracies, worst, average = reference_group_metrics(y_true, y_pred, groups, shares)
    assert group_accuracies(y_true, y_pred, groups) == pytest.approx(accuracies, rel=1e-12)
    assert worst_group_accuracy(y_true, y_pred, groups) == pytest.approx(worst, rel=1e-12)
    assert average_accuracy(y_true, y_pred, groups, shares) == pytest.approx(average, rel=1e-12)


@pytest.mark.parametrize(
    ("groups", "shares", "match"),
    [
        ([0, 1], [1, 1], "groups must hold one group id per item, got 2 for 3 items"),
        ([0, -1, 1], [1, 1], "groups must hold class indices >= 0"),
        ([0.0, 1.0, 1.0], [1, 1], "groups must hold integer"),
        ([0, 1, 2], [1, 1], r"train_shares has no share for group\(s\) \[2\]"),
        ([0, 1, 1], {0: 1.0}, r"train_shares has no share for group\(s\) \[1\]"),
        ([0, 1, 1], [1, -1], "train_shares must be finite and >= 0"),
        ([0, 1, 1], [1, float("nan")], "train_shares must be finite and >= 0"),
        ([0, 1, 1], [0, 0, 5], "gives every group present in groups"),
    ],
)
def test_group_metrics_reject_bad_inputs(groups, shares, match):
    with pytest.raises(ValueError, match=match):
        average_accuracy([0, 1, 1], [0, 1, 0], groups, shares)
