"""The demonstration's grid, selection and report (qat/demonstration.py), on synthetic records."""

import dataclasses
import itertools
import statistics

import numpy as np
import pytest
from test_plots import ser_record

from qat import demonstration as demo
from qat import io, paths, runs
from qat.config import RunConfig

TRAIN_SER_ARGS = {f.name for f in dataclasses.fields(RunConfig)}


def _kw(c: RunConfig) -> dict:
    """A grid entry as the settings that matter for its method (what the tests compare)."""
    kw = {k: getattr(c, k) for k in ("method", "setup", "model", "seed", "rho", "factor",
                                     "orthogonal")}  # fmt: skip
    if c.uses_taps:
        kw.update(tap=c.tap[0] if len(c.tap) == 1 else list(c.tap), beta=c.beta)
    if c.method == "at" and c.gram != "sample":
        kw["gram"] = c.gram
    if c.uses_adversary:
        kw["lam"] = c.lam
    if c.init_from_orthogonal:
        kw["init_from_orthogonal"] = True
    return kw


def record(rng, ua, model="real", method="baseline", seed=0, setup="confounded", tap=None,
           beta=1.0, lam=1.0, variant=demo.MAIN, profile="cpu", probe=None):  # fmt: skip
    """A train_ser-shaped record on `variant` = (rho, factor) with a chosen test UA."""
    r = ser_record(rng, model=model, method=method, tap=tap, seed=seed, setup=setup, ua=ua)
    rho, factor = variant
    c = r["config"]
    c.update(profile=profile, split={"rho": rho, "factor": factor})
    c["orthogonal"] = factor if c["orthogonal"] else None
    if method in ("at", "cka"):
        c["beta"] = beta
    if method.endswith("dann"):
        c["lam"] = lam
    penultimate = float(rng.uniform(0, 1)) if probe is None else probe
    r["probe"] = {factor: {"conv5_3": float(rng.uniform(0, 1)), "penultimate": penultimate}}
    return r


def seeds(rng, uas, **kw):
    return [record(rng, ua, seed=s, **kw) for s, ua in enumerate(uas)]


def test_stage1_covers_every_knob_once_with_valid_arguments():
    grid = [_kw(c) for c in demo.stage1("quaternion")]
    keys = {tuple(sorted((k, str(v)) for k, v in kw.items())) for kw in grid}
    assert len(keys) == len(grid)  # no configuration twice
    assert all(kw["seed"] == 0 and kw["model"] == "quaternion" for kw in grid)
    assert all(set(kw) <= TRAIN_SER_ARGS for kw in grid)
    at = {(kw["tap"], kw["beta"]) for kw in grid if kw["method"] == "at" and "gram" not in kw}
    assert set(itertools.product(demo.AT_TAPS, demo.BETAS)) <= at
    cka = {(str(kw["tap"]), kw["beta"]) for kw in grid if kw["method"] == "cka"}
    cka_taps = [str(list(t) if isinstance(t, tuple) else t) for t in demo.CKA_TAPS]
    assert cka == set(itertools.product(cka_taps, demo.CKA_BETAS))
    for method in ("dann", "cdann"):
        assert sorted(kw["lam"] for kw in grid if kw["method"] == method) == list(demo.LAMBDAS)
    baselines = [kw["setup"] for kw in grid if kw["method"] == "baseline"]
    assert sorted(baselines) == ["confounded", "unconfounded"]


def test_summarise_means_spreads_fresh_seeds_and_variant_filter():
    rng = np.random.default_rng(0)
    uas = rng.uniform(0.2, 0.6, size=3).tolist()
    main = seeds(rng, uas)
    others = [
        record(rng, 0.9, variant=(0.95, "word")),
        record(rng, 0.9, variant=(0.9, "speaker")),
        record(rng, 0.9, profile="smoke"),
        record(rng, 0.9, model="quaternion"),
    ]
    (row,) = demo.summarise(main + others, "real")
    assert row["seeds"] == 3 and row["configuration"] == "baseline"
    assert row["ua"] == pytest.approx(sum(uas) / 3)
    assert row["ua_sd"] == pytest.approx(statistics.stdev(uas))
    assert row["ua_fresh"] == pytest.approx((uas[1] + uas[2]) / 2)
    expected = np.mean([r["probe"]["word"]["penultimate"] for r in main])
    assert row["probe"]["penultimate"] == pytest.approx(expected)
    (speaker,) = demo.summarise(main + others, "real", (0.9, "speaker"))
    assert speaker["ua"] == 0.9 and speaker["probe"]["penultimate"] == pytest.approx(
        others[1]["probe"]["speaker"]["penultimate"]
    )


def test_stage2_reruns_the_best_two_configurations_of_each_method():
    rng = np.random.default_rng(1)
    records = [
        record(rng, 0.30),
        record(rng, 0.50, setup="unconfounded"),
        record(rng, 0.40, method="at", tap="conv2_1"),
        record(rng, 0.45, method="at", tap="conv3_3"),
        record(rng, 0.35, method="at", tap="conv5_3"),
        record(rng, 0.99, method="at", tap="conv4_1", seed=1),  # not a stage-1 record
        record(rng, 0.20, method="dann", lam=0.3),
        record(rng, 0.99, method="at", tap="conv1_1", variant=(0.9, "speaker")),
    ]
    grid = [_kw(c) for c in demo.stage2("real", records)]
    picked = {(kw["method"], kw["setup"], kw.get("tap"), kw.get("lam")) for kw in grid}
    assert picked == {
        ("baseline", "confounded", None, None), ("baseline", "unconfounded", None, None),
        ("at", "confounded", "conv3_3", None), ("at", "confounded", "conv2_1", None),
        ("dann", "confounded", None, 0.3),
    }  # fmt: skip
    assert sorted(kw["seed"] for kw in grid) == sorted([1, 2] * 5)
    assert all(set(kw) <= TRAIN_SER_ARGS and kw["rho"] == 0.9 for kw in grid)
    assert all(kw["orthogonal"] == "word" and kw["factor"] == "word" for kw in grid)


def test_stage3_takes_each_methods_best_three_seed_mean_to_every_variant():
    rng = np.random.default_rng(2)
    records = [
        *seeds(rng, [0.30, 0.32, 0.28]),
        *seeds(rng, [0.50, 0.48, 0.52], setup="unconfounded"),
        # conv2_1 wins on seed 0 but conv3_3 has the better 3-seed mean
        *seeds(rng, [0.60, 0.30, 0.30], method="at", tap="conv2_1"),
        *seeds(rng, [0.45, 0.44, 0.46], method="at", tap="conv3_3"),
        record(rng, 0.99, method="at", tap="conv5_3"),  # one seed only: not eligible
        *seeds(rng, [0.40, 0.40, 0.40], method="cdann", lam=3.0),
    ]
    grid = [_kw(c) for c in demo.stage3("real", records)]
    assert len(grid) == len(demo.VARIANTS) * 4 * len(demo.SEEDS)
    for rho, factor in demo.VARIANTS:
        mine = [kw for kw in grid if (kw["rho"], kw["factor"]) == (rho, factor)]
        assert all(kw["orthogonal"] == factor for kw in mine)
        picked = {(kw["method"], kw["setup"], kw.get("tap"), kw.get("lam")) for kw in mine}
        assert picked == {
            ("baseline", "confounded", None, None), ("baseline", "unconfounded", None, None),
            ("at", "confounded", "conv3_3", None), ("cdann", "confounded", None, 3.0),
        }  # fmt: skip
        assert sorted(kw["seed"] for kw in mine) == sorted(list(demo.SEEDS) * 4)
    assert all(set(kw) <= TRAIN_SER_ARGS for kw in grid)


def test_targets_hand_computed():
    rng = np.random.default_rng(3)
    records = [
        *seeds(rng, [0.30, 0.28, 0.32], probe=0.2),
        *seeds(rng, [0.40, 0.40, 0.40], setup="unconfounded"),
        *seeds(rng, [0.36, 0.34, 0.38], method="at", tap="conv2_1", probe=0.1),
        *seeds(rng, [0.31, 0.30, 0.32], method="dann"),
    ]
    lines = demo._targets(demo.summarise(records, "real"), "real")
    text = "\n".join(lines)
    # gap 0.10; best = AT at 0.36: closes 60%, +6.0 points; seeds 1-2: (0.36 - 0.30) / 0.1
    assert "gap 0.100" in text
    assert (
        "best method at word@conv2_1 β=1 UA 0.360 (sd 0.020) closes 60% of the gap: target" in text
    )
    assert "(>= 50%) met" in text and "closes 60%." in text
    assert "UA +6.0 points" in text and "target +3: met" in text
    assert "penultimate word probe 0.200 -> 0.100 (lower)" in text
    # a weaker method: 0.31 closes 10%, NOT met
    weak = [r for r in records if r["config"]["method"] != "at"]
    text = "\n".join(demo._targets(demo.summarise(weak, "real"), "real"))
    assert "closes 10% of the gap: target (>= 50%) NOT met" in text


def test_write_report_from_records(tmp_path):
    rng = np.random.default_rng(4)
    records = []
    for model, variant in itertools.product(("real", "quaternion"), (demo.MAIN, *demo.VARIANTS)):
        kw = dict(model=model, variant=variant)
        records += seeds(rng, rng.uniform(0.2, 0.4, 3), **kw)
        records += seeds(rng, rng.uniform(0.4, 0.5, 3), setup="unconfounded", **kw)
        records += seeds(rng, rng.uniform(0.3, 0.5, 3), method="cka", tap="conv3_1", **kw)
    for r in records:
        io.write_json_beside(runs.record_path("ser", r["config"] | {"n": id(r)}, tmp_path), r)
    readme_before = (paths.ROOT / "README.md").read_text()
    out = demo.write_report(tmp_path)
    text = out.read_text()
    for variant in (demo.MAIN, *demo.VARIANTS):
        assert f"## {demo.variant_name(variant)}" in text
    assert "speaker probe (penult.)" in text and "follows speaker" in text
    assert text.count("| baseline | 3 |") == 6
    names = ["demonstration_ua", "demonstration_probe", "demonstration_ua_word_rho0.95",
             "demonstration_ua_speaker_rho0.9"]  # fmt: skip
    for name in names:
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
        assert f"figures/{name}.png" in text
    assert (paths.ROOT / "README.md").read_text() == readme_before


def test_a_rerun_beside_a_record_is_not_counted_as_another_seed():
    rng = np.random.default_rng(5)
    records = [*seeds(rng, [0.3, 0.4]), record(rng, 0.9, seed=1)]
    (row,) = demo.summarise(records, "real")
    assert row["seeds"] == 2 and row["ua"] == pytest.approx(0.35)


def test_targets_say_so_when_the_ceiling_is_not_above_the_baseline():
    rng = np.random.default_rng(6)
    records = [
        *seeds(rng, [0.40, 0.42, 0.38]),
        *seeds(rng, [0.35, 0.37, 0.33], setup="unconfounded"),
        *seeds(rng, [0.45, 0.45, 0.45], method="dann"),
    ]
    text = "\n".join(demo._targets(demo.summarise(records, "real"), "real"))
    assert "gap -0.050" in text and "no measurable gap to close" in text
    assert "nan" not in text


def test_cost_ratios_compare_the_configurations_both_models_ran():
    def row(name, time, memory, method="at"):
        return {"configuration": name, "method": method, "step_time_s": time,
                "peak_memory_mb": memory}  # fmt: skip

    rows = {
        "real": [row("a", 1.0, 100.0), row("b", 3.0, 300.0), row("only real", 9.0, 9.0)],
        "quaternion": [row("a", 0.5, 10.0), row("b", 0.5, 90.0), row("only q", 9.0, 9.0)],
    }
    (line,) = [ln for ln in demo._cost_ratios(rows) if ln.startswith("- at")]
    # time (0.5 + 0.5) / (1 + 3) = 0.25, per configuration 0.5 and 0.17; memory 100 / 400
    assert line == (
        "- at: time 0.25x (per configuration 0.17-0.50x), "
        "peak memory 0.25x (per configuration 0.10-0.30x), 2 configurations"
    )


def test_ranked_configurations_draws_one_bar_per_configuration_best_on_top():
    from qat import plots

    rng = np.random.default_rng(7)
    records = [
        *seeds(rng, [0.3, 0.32]),
        record(rng, 0.5, method="dann"),
        record(rng, 0.2, tap="conv2_1", method="at"),
    ]
    rows = {"real": demo.summarise(records, "real"), "quaternion": []}
    fig = plots.ranked_configurations(rows, "test")
    (ax,) = fig.axes
    widths = [p.get_width() for p in ax.patches]
    assert widths == pytest.approx([0.2, 0.31, 0.5])  # ascending: the best is drawn on top
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["at word@conv2_1 β=1 (1)", "baseline (2)", "dann word λ=1 (1)"]
    assert "UA" in ax.get_xlabel() and ax.get_ylabel()
    with pytest.raises(ValueError, match="rows"):
        plots.ranked_configurations({"real": []})


def test_probe_profiles_plot_the_seed_mean_per_tap():
    from qat import plots

    rng = np.random.default_rng(8)
    records = seeds(rng, [0.3, 0.32, 0.34])
    rows = {"real": demo.summarise(records, "real")}
    fig = plots.probe_profiles(rows)
    (line,) = fig.axes[0].get_lines()
    expected = [
        np.mean([r["probe"]["word"][t] for r in records]) for t in ("conv5_3", "penultimate")
    ]
    assert list(line.get_xdata()) == ["conv5_3", "penultimate"]
    assert line.get_ydata() == pytest.approx(expected)
    assert line.get_label() == "baseline (3)"
