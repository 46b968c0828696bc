"""The fair race's budget: every method, the baseline included, gets the same number of draws;
draws are reproducible in any process and independent of the other methods; every draw lies
in the range the lead wrote down (typed here again, as the reference) and is a valid run."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as st

from qat import config, hparams
from qat.config import RunConfig
from qat.models import PENULTIMATE, VGG16_TAPS

# The lead's ranges (issue 34), written independently of qat.hparams: (kind, low, high).
LR, WD = ("log", 3e-4, 1e-2), ("log", 1e-4, 1e-1)
TAPS = (*VGG16_TAPS, PENULTIMATE)
EXPECTED = {
    "baseline": {"lr": LR, "weight_decay": WD},
    "at": {"lr": LR, "weight_decay": WD, "tap": ("tap",), "beta": ("log", 0.1, 100)},
    "cka": {"lr": LR, "weight_decay": WD, "tap": ("tap",), "beta": ("log", 0.01, 10)},
    "dann": {"lr": LR, "weight_decay": WD, "lam": ("log", 0.01, 10)},
    "cdann": {"lr": LR, "weight_decay": WD, "lam": ("log", 0.01, 10)},
    "groupdro": {"lr": LR, "weight_decay": ("log", 1e-2, 1), "eta": ("log", 1e-3, 1e-1)},
    "jtt": {"lr": LR, "weight_decay": WD, "jtt_epochs": ("int", 1, 8),
            "lambda_up": ("log", 1, 10**2.5)},
    "reweight": {"lr": LR, "weight_decay": WD},
    "subsample": {"lr": LR, "weight_decay": WD},
    "dfr": {"lr": LR, "weight_decay": WD},
}  # fmt: skip


def test_every_method_the_baseline_included_gets_the_same_number_of_draws():
    assert hparams.N_DRAWS >= 8
    assert set(hparams.SPACES) == set(config.METHODS) == set(EXPECTED)
    for method in config.METHODS:
        drawn = hparams.draws(method)
        assert len(drawn) == hparams.N_DRAWS
        assert len({tuple(sorted(d.items())) for d in drawn}) == hparams.N_DRAWS  # all distinct


@pytest.mark.parametrize("method", config.METHODS)
def test_draws_lie_in_the_leads_ranges_and_follow_their_distributions(method):
    drawn = hparams.draws(method, 400)
    assert all(set(d) == set(EXPECTED[method]) for d in drawn)
    for knob, (kind, *bounds) in EXPECTED[method].items():
        values = [d[knob] for d in drawn]
        if kind == "tap":
            assert set(values) == set(TAPS)  # every tap drawn, nothing else
            counts = [values.count(t) for t in TAPS]
            assert st.chisquare(counts).pvalue > 1e-3
        elif kind == "int":
            low, high = bounds
            assert all(isinstance(v, int) for v in values) and set(values) == set(
                range(low, high + 1)
            )
        else:
            low, high = bounds
            assert all(isinstance(v, float) and low <= v <= high for v in values), knob
            # log-uniform: the logarithms are uniform over [log low, log high] (rounding to 3
            # significant digits moves them by less than 0.005)
            logs = (np.log(values) - math.log(low)) / (math.log(high) - math.log(low))
            assert st.kstest(logs, "uniform").pvalue > 1e-3, knob
            assert hparams.SPACES[method][knob].contains(values[0])


def test_draws_are_reproducible_in_a_fresh_process_with_another_hash_seed():
    code = "from qat import hparams; print(repr([hparams.draws(m) for m in hparams.SPACES]))"
    here = repr([hparams.draws(m) for m in hparams.SPACES])
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={"PYTHONHASHSEED": seed}, check=True)  # fmt: skip
        assert out.stdout.strip() == here


def test_a_methods_draws_do_not_depend_on_other_methods_or_on_the_order_drawn():
    at_first = hparams.draws("at")
    for method in config.METHODS:
        hparams.draws(method, 3)
    assert hparams.draws("at") == at_first
    assert hparams.draw("at", 5) == at_first[5]  # one draw alone is the same draw
    # dann and cdann share a space but not their draws
    assert hparams.draws("dann") != hparams.draws("cdann")


def test_every_draw_is_a_valid_run_with_the_methods_fixed_settings():
    for method in config.METHODS:
        for i in range(hparams.N_DRAWS):
            settings = hparams.settings(method, i)
            run = RunConfig(method=method, profile="smoke", **settings)
            assert run.grad_clip == 1.0 and run.lr == settings["lr"]
            assert run.selection == ("worst_group" if method == "groupdro" else None)
            assert run.key_dict()["weight_decay"] == settings["weight_decay"]
    with pytest.raises(ValueError, match="method='magic'"):
        hparams.draw("magic", 0)
    with pytest.raises(ValueError, match="index=-1"):
        hparams.draw("at", -1)


def test_the_registry_describes_every_method_for_the_page():
    rows = {r["method"]: r for r in hparams.describe()}
    assert set(rows) == set(config.METHODS)
    assert rows["groupdro"]["weight decay"] == "log-uniform in [0.01, 1]"
    assert "selection=worst_group" in rows["groupdro"]["fixed"]
    assert rows["jtt"]["own knobs"].startswith("jtt_epochs: integer uniform in [1, 8]")
    assert rows["baseline"]["own knobs"] == "none"
