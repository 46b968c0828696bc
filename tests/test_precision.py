"""The bf16 check (qat.precision): the runs it adds are the fp32 instrument runs with bf16,
and its rule adopts bf16 only when each model's paired validation difference says so."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from qat import precision


def _ser(config, val_ua: float, ua: float) -> dict:
    return {"kind": "ser", "config": config.key_dict(), "metrics": {"ua": ua},
            "history": [{"epoch": 1, "val_ua": val_ua}]}  # fmt: skip


def _records(shift: dict, rng) -> tuple[list[dict], dict]:
    """fp32 and bf16 records of every configuration; bf16's validation UA moved by
    shift[model] + noise. Returns the records and the differences per model."""
    out, diffs = [], {}
    for model, fp32 in precision.fp32_configs().items():
        d = shift[model] + rng.normal(0, 0.004, len(fp32))
        diffs[model] = d
        for c, delta in zip(fp32, d, strict=True):
            val = rng.uniform(0.5, 0.7)
            out += [_ser(c, val, 0.5), _ser(c.replace(precision="bf16"), val + delta, 0.5)]
    return out, diffs


def test_the_bf16_runs_are_the_real_networks_fp32_runs_with_bf16():
    fp32 = precision.fp32_configs()
    assert set(fp32) == set(precision.MODELS) == {"real"}
    bf16 = precision.configs()
    assert len(bf16) == len({c.key() for c in bf16}) == 2 * len(precision.PAIRS)
    assert {c.precision for c in bf16} == {"bf16"}
    assert [c.replace(precision="fp32").key() for c in bf16] == [c.key() for c in fp32["real"]]


def test_bf16_is_adopted_only_when_each_models_interval_contains_0_above_the_tolerance():
    rng = np.random.default_rng(8)
    records, diffs = _records({"real": 0.0}, rng)
    adopted, why = precision.decision(records)
    lows = [sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))[0]
            for d in diffs.values()]  # fmt: skip
    assert all(-precision.TOLERANCE <= low <= 0 for low in lows) and adopted is True, why
    row = {r["model"]: r for r in precision.rows(records)}["real"]
    d = diffs["real"]
    low, high = sps.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sps.sem(d))
    assert (
        row["validation UA, bf16 - fp32 (the rule's)"]
        == f"{d.mean():+.3f} [{low:+.3f}, {high:+.3f}]"
    )
    records, _ = _records({"real": -0.03}, rng)  # bf16 costs UA
    adopted, why = precision.decision(records)
    assert adopted is False and why.startswith("real")
    assert precision.decision(records[:-1])[0] is None  # a bf16 run missing: pending


def test_the_stage_runs_the_fp32_runs_the_rule_pairs_with_and_the_bf16_ones(monkeypatch):
    from qat import experiments

    seen = []
    monkeypatch.setattr(experiments, "run_configs", lambda cs, **kw: seen.extend(cs))
    precision.run(jobs=1)
    fp32 = precision.fp32_configs()["real"]
    assert [c.key() for c in seen] == [c.key() for c in (*fp32, *precision.configs())]
    assert {c.precision for c in seen} == {"fp32", "bf16"} and len(seen) == 2 * len(fp32)


def test_the_race_waits_for_the_rule_and_then_for_the_config_to_follow_it(monkeypatch):
    rng = np.random.default_rng(5)
    near, far = (_records({"real": s}, rng)[0] for s in (0.0, -0.05))
    assert "pending" in precision.instrument_problem(near[:-1])
    monkeypatch.setattr(precision, "INSTRUMENT_PRECISION", {"real": "fp32", "quaternion": "fp32"})
    assert precision.instrument_problem(far) is None  # not adopted, fp32 kept as configured
    problem = precision.instrument_problem(near)  # adopted, config still fp32
    assert "'real': 'bf16'" in problem and "set it" in problem
    monkeypatch.setattr(precision, "INSTRUMENT_PRECISION", {"real": "bf16", "quaternion": "fp32"})
    assert precision.instrument_problem(near) is None
    assert "'real': 'fp32'" in precision.instrument_problem(far)


def test_the_readme_line_says_the_decision_and_its_interval():
    rng = np.random.default_rng(6)
    for shift, said in ((0.0, "adopted:"), (-0.05, "not adopted, the runs stay in fp32:")):
        records, diffs = _records({"real": shift}, rng)
        low, high = sps.t.interval(0.95, len(diffs["real"]) - 1, loc=diffs["real"].mean(),
                                   scale=sps.sem(diffs["real"]))  # fmt: skip
        (line,) = precision.reading(records)
        assert said in line and f"{diffs['real'].mean():+.3f} [{low:+.3f}, {high:+.3f}]" in line
    assert "pending:" in precision.reading([])[0]
