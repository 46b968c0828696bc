"""The level-robust input study (qat.level): distinct runs per candidate, the rule picks on
validation data as written, and the targets agree with scipy on synthetic records."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from qat import level


def _ser(config, val_ua: float, ua: float, model: str) -> dict:
    return {"kind": "ser", "config": config.key_dict(), "metrics": {"ua": ua}, "model": model,
            "history": [{"epoch": 1, "val_ua": val_ua}]}  # fmt: skip


def _records(val: dict, test: dict) -> list[dict]:
    """Ceilings and baselines of each candidate on every pair, with the given validation and
    test UA per candidate (arrays over PAIRS)."""
    out = []
    for c in level.CANDIDATES:
        for i, (seed, fold) in enumerate(level.PAIRS):
            for setup in level.SETUPS:
                config = level.config(*c, seed, fold, setup)
                out.append(_ser(config, val[c][i], test[c][i], f"models/{config.key()}.pt"))
    return out


def test_candidates_are_distinct_real_runs_and_raw_input_keeps_the_instruments_key():
    configs = level.configs()
    assert len({c.key() for c in configs}) == len(configs) == 4 * len(level.PAIRS) * 2
    assert {c.model for c in configs} == {"real"}
    raw = [c for c in configs if (c.level, c.augment) == ("raw", "none")]
    assert all("level" not in c.key_dict() and "augment" not in c.key_dict() for c in raw)


def test_the_rule_takes_the_best_validation_ua_among_those_that_cost_at_most_cost():
    rng = np.random.default_rng(5)
    k = len(level.PAIRS)
    raw = rng.uniform(0.6, 0.7, k)
    raw_c, norm, gain, both = level.CANDIDATES
    val = {raw_c: raw, norm: raw - 0.03, gain: raw + 0.01, both: raw + 0.04}
    test = {c: v - 0.1 for c, v in val.items()}
    records = _records(val, test)
    assert level.choose(records[:-1])[0] is None  # a ceiling missing: pending
    assert level.choose(records)[0] == both  # best, and within the cost (it gains)
    val[both] = raw - 0.021  # over the cost: out, however high its test UA
    test[both] = raw + 0.2
    pick, why = level.choose(_records(val, test))
    assert pick == gain and "2 candidates" in why  # raw input and gain
    val = {c: raw - 0.05 for c in level.CANDIDATES} | {raw_c: raw}
    assert level.choose(_records(val, test))[0] == raw_c  # none qualifies: raw input


def test_the_targets_are_scipy_s_t_intervals_from_the_checks_records():
    rng = np.random.default_rng(6)
    k = len(level.PAIRS)
    val = {c: rng.uniform(0.6, 0.7, k) for c in level.CANDIDATES}
    test = {c: rng.uniform(0.5, 0.6, k) for c in level.CANDIDATES}
    records = _records(val, test)
    unchanged = rng.uniform(0.9, 1.0, k)
    shift = rng.uniform(-0.04, 0.0, k)
    norm = ("normalise", "none")
    checks = {}
    for i, (seed, fold) in enumerate(level.PAIRS):
        model = f"models/{level.config(*norm, seed, fold, 'unconfounded').key()}.pt"
        checks[model] = {"gain-10dB": {"paired": {"unchanged": unchanged[i], "clean_ua": 0.6,
                                                  "perturbed_ua": 0.6 + shift[i]}}}  # fmt: skip
    rows = {r["target"]: r for r in level.targets(records, checks)}
    (kept, ua, cost) = rows.values()
    for row, values in (
        (kept, unchanged),
        (ua, shift),
        (cost, test[norm] - test[level.CANDIDATES[0]]),
    ):
        low, high = sps.t.interval(0.95, k - 1, loc=values.mean(), scale=sps.sem(values))
        assert row["measured"] == f"{values.mean():+.3f} [{low:+.3f}, {high:+.3f}]"
    low, high = sps.t.interval(0.95, k - 1, loc=unchanged.mean(), scale=sps.sem(unchanged))
    side = "met" if low >= level.UNCHANGED else "not met" if high < level.UNCHANGED else None
    assert kept["met"] == (side or "interval too wide")
    table = {r["candidate"]: r for r in level.rows(records, checks)}
    row = table[level.name(*norm)]
    assert row["-10 dB: unchanged"] == pytest.approx(unchanged.mean())
    assert row["ceiling validation UA (the rule's score)"] == pytest.approx(val[norm].mean())
    assert level.targets(records, {})[0]["met"] == "pending"  # nothing checked yet
