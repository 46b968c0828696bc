"""DFR's last-layer refit: qat.robust's one-vs-rest L1 logistic regression by liblinear (the
DFR paper's solver) against scikit-learn's multinomial L1 fit by saga (the kit's solver
before), side by side on a group-balanced set the size of a run's (3,500 items, 5 emotions,
up to 512 penultimate features of the cpu profile's quaternion VGG16), with the accuracy of
each on held-out items and the share of predictions on which the two agree.
"""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from qat import robust
from qat.bench.common import interleaved_medians, markdown_table, publish, tap_like_features

CLASSES = 5
C = 1.0  # the weakest L1 of the DFR grid: the slowest to fit, and the one the runs chose


def _standardised(n: int, dims: int):
    x, y = tap_like_features(2 * n, dims, CLASSES, seed=dims)
    x = (x - x[:n].mean(axis=0)) / (x[:n].std(axis=0) + 1e-12)
    return x[:n], y[:n], x[n:], y[n:]


def _liblinear(x, y) -> tuple[np.ndarray, np.ndarray]:
    coef, intercept, _ = robust._fit_l1(x, y, C, 0, 2000, np.arange(CLASSES))
    return coef, intercept


def _saga(x, y, max_iter: int) -> LogisticRegression:
    model = LogisticRegression(C=C, solver="saga", max_iter=max_iter, random_state=0, **robust._L1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def run(quick: bool = False) -> str:
    n = 300 if quick else 3500
    sizes = (32,) if quick else (128, 512)
    max_iter = 100 if quick else 2000
    rows = []
    header = ["features", "liblinear one-vs-rest (s)", "saga multinomial (s)", "speed-up",
              "saga stopped at max_iter", "liblinear accuracy", "saga accuracy",
              "same prediction"]  # fmt: skip
    for dims in sizes:
        x, y, test_x, test_y = _standardised(n, dims)
        times = interleaved_medians(
            {"liblinear": partial(_liblinear, x, y), "saga": partial(_saga, x, y, max_iter)},
            repeats=1,
            warmup=0,
        )
        coef, intercept = _liblinear(x, y)
        ours = (test_x @ coef.T + intercept).argmax(axis=1)
        saga = _saga(x, y, max_iter)
        theirs = saga.predict(test_x)
        rows.append([dims, times["liblinear"], times["saga"], times["saga"] / times["liblinear"],
                     "yes" if int(np.max(saga.n_iter_)) >= max_iter else "no",
                     float(np.mean(ours == test_y)), float(np.mean(theirs == test_y)),
                     float(np.mean(ours == theirs))])  # fmt: skip
    body = (
        f"{n} fitting and {n} scored items, {CLASSES} classes, standardised tap-like features; "
        f"one fit each (saga takes minutes), C = {C}, up to {max_iter} iterations. liblinear "
        "fits one L1 logistic regression per class against the rest (its intercept a "
        "regularised feature, as in the DFR paper's code); saga fits the multinomial model.\n\n"
        + markdown_table(header, rows)
    )
    return publish("dfr", body, quick)
