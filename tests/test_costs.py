"""Side-by-side step costs: the within-round time ratio and its interval against scipy, the
record a rerun reuses, and the steps themselves against what a trained run counted."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from qat import costs, experiments, runs
from qat.config import RunConfig


def synthetic(configs: list[RunConfig], times: list[list[float]]) -> dict:
    return {
        "kind": costs.KIND,
        "config": costs.record_key(configs, len(times[0]), 1),
        "entries": {
            c.key(): {"config": c.key_dict(), "step_times_s": t, "peak_memory_bytes": 2**20}
            for c, t in zip(configs, times, strict=True)
        },
    }


def test_time_ratio_is_the_geometric_mean_within_rounds_with_a_t_interval():
    rng = np.random.default_rng(3)
    a, b = RunConfig(model="quaternion"), RunConfig(model="real")
    load = rng.uniform(0.5, 2.0, 12)  # the machine's load drifts from round to round
    tb = 0.4 * load
    ta = 0.2 * load * np.exp(rng.normal(0, 0.1, 12))
    ratio, low, high = costs.time_ratio(synthetic([a, b], [list(ta), list(tb)]), a, b)
    logs = np.log(ta / tb)
    half = st.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    assert ratio == pytest.approx(math.exp(logs.mean()))
    assert (low, high) == (pytest.approx(math.exp(logs.mean() - half)),
                           pytest.approx(math.exp(logs.mean() + half)))  # fmt: skip
    # Within-round ratios cancel the drift that a ratio of medians keeps.
    assert high - low < 0.1 < np.ptp(ta / np.median(tb))


def test_find_serves_only_a_record_that_measured_every_configuration():
    a, b, c = (RunConfig(model="real", method=m, tap="conv2_1") for m in ("at", "cka", "dann"))
    two = synthetic([a, b], [[0.1, 0.2], [0.3, 0.4]])
    longer = synthetic([a, b], [[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]])
    assert costs.find([two, longer], [a]) is longer  # the most rounds
    assert costs.find([two], [a, b]) is two
    assert costs.find([two, longer], [a, c]) is None  # c was never timed beside a
    assert costs.find([{"kind": "ser", "config": {}}], [a]) is None


def test_side_by_side_steps_count_what_the_trained_runs_counted(monkeypatch):
    configs = [
        RunConfig(model=m, method=method, tap="conv2_1", profile="smoke")
        for m in ("real", "quaternion")
        for method in ("baseline", "at")
    ]
    trained = {c.key(): experiments.train_ser(c, progress=False) for c in configs}
    record = costs.run(configs, rounds=3, warmup=1, progress=False)
    assert set(record["entries"]) == set(trained)
    for key, entry in record["entries"].items():
        counted = trained[key]["resources"]
        assert entry["peak_memory_bytes"] == counted["peak_memory_bytes"], entry["label"]
        assert entry["flops_per_step"] == counted["flops_per_step"], entry["label"]
        assert entry["params"] == counted["params"]
        assert len(entry["step_times_s"]) == 3 and min(entry["step_times_s"]) > 0
    with pytest.raises(ValueError, match="rounds: expected at least 2"):
        costs.run(configs, rounds=1)
    # A rerun reads the record; it never re-times.
    monkeypatch.setattr(costs, "measure", lambda *a, **k: pytest.fail("re-timed"))
    assert costs.run(configs, rounds=3, warmup=1, progress=False) == record
    assert costs.find(runs.load_records(kind=costs.KIND), configs) == record
