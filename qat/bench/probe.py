"""The invariance probe's solver: qat.probe.fit_logistic (float32 L-BFGS in torch) against
scikit-learn's LogisticRegression with the same objective and stopping rule, side by side on
features the size of a run's taps (2,000 items, 40 words; 16 to 512 features: conv2_2 to the
penultimate layer of the cpu profile's width-1/8 VGG16), with the share of test predictions
on which the two agree.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from qat.bench.common import interleaved_medians, markdown_table, publish, tap_like_features
from qat.probe import probe_accuracy

CLASSES = 40


def _sklearn(fit_x, fit_y, test_x):
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, tol=1e-3))
    return probe.fit(fit_x, fit_y).predict(test_x)


def run(quick: bool = False) -> str:
    n = 200 if quick else 2000
    sizes = (16, 64) if quick else (16, 128, 512)
    repeats, warmup = (1, 0) if quick else (3, 1)
    rows = []
    header = ["features", "qat (s)", "scikit-learn (s)", "speed-up", "qat accuracy",
              "scikit-learn accuracy"]  # fmt: skip
    for dims in sizes:
        x, y = tap_like_features(2 * n, dims, CLASSES, seed=dims)
        fit_x, fit_y, test_x, test_y = x[:n], y[:n], x[n:], y[n:]
        times = interleaved_medians(
            {
                "qat": partial(probe_accuracy, fit_x, fit_y, test_x, test_y),
                "scikit-learn": partial(_sklearn, fit_x, fit_y, test_x),
            },
            repeats=repeats,
            warmup=warmup,
        )
        ours = probe_accuracy(fit_x, fit_y, test_x, test_y)
        theirs = float(np.mean(_sklearn(fit_x, fit_y, test_x) == test_y))
        rows.append([dims, times["qat"], times["scikit-learn"],
                     times["scikit-learn"] / times["qat"], ours, theirs])  # fmt: skip
    body = (
        f"{n} fitting and {n} scored items, {CLASSES} classes, standardised features; median of "
        f"{repeats} interleaved rounds. Both minimise the mean cross-entropy + ||W||^2 / (2 C n) "
        "with C = 1, stopping at gradient tolerance 1e-3 or 300 L-BFGS iterations.\n\n"
        + markdown_table(header, rows)
    )
    return publish("probe", body, quick)
