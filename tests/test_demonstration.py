"""The demonstration's protocol on synthetic records: knobs are chosen on the decorrelated
validation set and never on test, finalists run on fresh pairs with their placebos, and the
report's intervals are those of qat.stats."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from qat import costs, hparams, io, plots, runs, stats, tables
from qat import demonstration as demo
from qat.config import PLACEBO_REGIME, REGIMES, RunConfig


def record(config: RunConfig, ua: float, selection: float = 0.5, worst: float = 0.2,
           valid_worst: float = 0.3) -> dict:  # fmt: skip
    return {
        "kind": "ser",
        "config": config.key_dict(),
        "metrics": {"ua": ua, "wa": ua, "macro_f1": ua},
        "groups": {"worst_group": worst},
        "selection_set": {"ua": selection, "worst_group": valid_worst},
        "probe": {config.factor: {"penultimate": 0.3}},
        "resources": {"step_time_s": 0.1, "peak_memory_bytes": 2**20},
    }


def test_selection_uses_the_decorrelated_validation_set_not_test():
    # Draw 2 has the best test UA, draw 5 the best validation UA: the latter wins. Draw 3 has
    # the best worst-group validation accuracy: that rule, shown beside, would pick it.
    records = []
    for s, f in demo.SELECTION_PAIRS:
        for i, c in enumerate(demo.candidates("real", "at")):
            records.append(
                record(
                    c.replace(seed=s, fold=f),
                    0.9 if i == 2 else 0.4,
                    0.7 if i == 5 else 0.5,
                    valid_worst=0.6 if i == 3 else 0.3,
                )
            )
    chosen, scored = demo.choose(records, "real", "at")
    assert chosen == demo.candidate("real", "at", 5)
    assert demo.choose(records, "real", "at", "worst_group")[0] == demo.candidate("real", "at", 3)
    assert all(s["pairs"] == len(demo.SELECTION_PAIRS) for s in scored)
    assert [s["ua"] for s in scored] == [0.7 if i == 5 else 0.5 for i in range(len(scored))]
    # One missing pair makes a draw ineligible rather than scored on fewer pairs, and the
    # method has no finalist until every draw has every pair.
    partial = [r for r in records if RunConfig.from_record(r) != chosen.replace(seed=100, fold=0)]
    assert demo.choose(partial, "real", "at")[0] is None
    rows = [r for r in demo._selection_rows(records) if r["model"] == "real"
            and r["method"] == "at"]  # fmt: skip
    assert [r["draw"] for r in rows if r["finalist"] == "yes"] == [5]
    assert [r["draw"] for r in rows if r["worst-group pick"] == "yes"] == [3]
    summary = next(r for r in demo.selection_summary(records) if r["model"] == "real"
                   and r["method"] == "at")  # fmt: skip
    assert list(summary.values())[2:] == [5, 3, False]


def test_every_method_the_baseline_included_races_with_the_registrys_draws():
    grid = demo.selection_grid("real")
    assert len(grid) == len(demo.RACERS) * hparams.N_DRAWS * len(demo.SELECTION_PAIRS)
    assert len({c.key() for c in grid}) == len(grid)
    for method in demo.RACERS:
        mine = [c for c in grid if c.method == method]
        assert len(mine) == hparams.N_DRAWS * len(demo.SELECTION_PAIRS), method
        for i in range(hparams.N_DRAWS):
            drawn = hparams.settings(method, i)
            runs_ = [c for c in mine if all(getattr(c, k) == (tuple([v]) if k == "tap" else v)
                                            for k, v in drawn.items())]  # fmt: skip
            assert {(c.seed, c.fold) for c in runs_} == set(demo.SELECTION_PAIRS), (method, i)
    assert all(c.grad_clip == hparams.GRAD_CLIP and c.lr is not None for c in grid)


def test_grids_cover_the_protocol():
    selection = demo.selection_grid("quaternion")
    assert {(c.seed, c.fold) for c in selection} == set(demo.SELECTION_PAIRS)
    assert set(demo.SELECTION_PAIRS).isdisjoint(demo.FINAL_PAIRS)  # finalists on fresh pairs
    assert len(demo.FINAL_PAIRS) >= 8 and min(s for s, _ in demo.FINAL_PAIRS) >= 400
    assert demo.VARIANT_PAIRS == demo.FINAL_PAIRS[:5]
    records = [record(c, 0.5, selection=0.5) for c in selection]
    finals = demo.finalists(records, "quaternion")
    assert set(finals) == {"baseline", "ceiling", *demo.METHODS, "at placebo", "cka placebo"}
    assert finals["at placebo"] == finals["at"].replace(orthogonal="random")
    assert finals["ceiling"] == finals["baseline"].replace(setup="unconfounded")
    grid = demo.final_grid("quaternion", records)
    assert len(grid) == len(finals) * len(demo.FINAL_PAIRS)
    sweep = demo.sweep_grid("quaternion", records)
    assert len({c.tap for c in sweep if c.method == "at"}) == 13
    assert {c.lr for c in sweep if c.method == "at"} == {finals["at"].lr}  # the finalist's
    assert {(c.seed, c.fold) for c in sweep} == set(demo.SWEEP_PAIRS)
    # Before the finalists have run, the variants hold the controls and anti-transfer only.
    variants = demo.variant_grid("quaternion", records)
    assert len(variants) == (len(demo.VARIANTS) * len(demo.ALWAYS_IN_VARIANTS)
                             * len(demo.VARIANT_PAIRS))  # fmt: skip
    assert {(c.seed, c.fold) for c in variants} == set(demo.VARIANT_PAIRS)
    speaker = [c for c in variants if c.factor == "speaker" and c.method == "at"]
    assert {c.orthogonal for c in speaker} == {"speaker", "random"}  # the network, its placebo


def finalist_set(model: str, truth: dict[str, float], rng, noise: float = 0.01) -> list[dict]:
    """A model's selection (every method's first draw wins) and finalist records, each
    finalist's UA drawn around `truth` (0.42 for the rest)."""
    records = []
    for s, f in demo.SELECTION_PAIRS:
        for method in demo.RACERS:
            for i, config in enumerate(demo.candidates(model, method)):
                records.append(record(config.replace(seed=s, fold=f), 0.5,
                                      selection=0.6 if i == 0 else 0.5))  # fmt: skip
    for name, config in demo.finalists(records, model).items():
        for s, f in demo.FINAL_PAIRS:
            ua = truth.get(name, 0.42) + rng.normal(0, noise)
            records.append(record(config.replace(seed=s, fold=f), ua, worst=ua / 2))
    return records


@pytest.fixture
def finalist_records():
    truth = {"baseline": 0.40, "ceiling": 0.50, "at": 0.46, "at placebo": 0.45}
    return finalist_set("real", truth, np.random.default_rng(0))


def test_variants_add_every_finalist_that_gained_once_the_finalists_have_all_run(
    finalist_records,
):
    truth = {"baseline": 0.40, "ceiling": 0.50, "at": 0.46, "at placebo": 0.45, "dfr": 0.47,
             "jtt": 0.39}  # fmt: skip
    records = finalist_set("real", truth, np.random.default_rng(4))
    gained = {r["finalist"] for r in demo.compare(records, "real") if r.get("gain 95% low")
              is not None and r["gain 95% low"] > 0 and r["finalist"] != "ceiling"}  # fmt: skip
    assert "dfr" in gained and "jtt" not in gained
    members = demo.variant_members(records, "real")
    assert set(members) == set(demo.ALWAYS_IN_VARIANTS) | gained
    grid = demo.variant_grid("real", records)
    assert len(grid) == len(members) * len(demo.VARIANTS) * len(demo.VARIANT_PAIRS)
    # One finalist run short: the gains are not known yet, so only the fixed members run.
    dfr = demo.finalists(records, "real")["dfr"].replace(seed=407, fold=3)
    short = [r for r in records if RunConfig.from_record(r) != dfr]
    assert not demo.finals_complete(short, "real")
    assert set(demo.variant_members(short, "real")) == set(demo.ALWAYS_IN_VARIANTS)


def test_a_setting_whose_finalists_have_not_all_run_is_answered_so_far(finalist_records):
    rows = demo.compare(finalist_records, "real")
    assert len(rows) == demo.FINALISTS and all(r["runs"] == len(demo.FINAL_PAIRS) for r in rows)
    assert not any("so far" in line for line in demo._verdicts(rows, "real"))
    jtt = demo.finalists(finalist_records, "real")["jtt"].replace(seed=407, fold=3)
    short = [r for r in finalist_records if RunConfig.from_record(r) != jtt]
    said = demo._verdicts(demo.compare(short, "real"), "real")
    n, k = demo.FINALISTS, len(demo.FINAL_PAIRS)
    assert said[0].startswith(f"- real (so far: {n} of {n} finalists have run, the fewest on "
                              f"{k - 1} of {k} pairs): finalists whose UA gain")  # fmt: skip
    missing = [r for r in rows if r["finalist"] != "jtt"]
    assert f"so far: {n - 1} of {n} finalists have run" in demo._verdicts(missing, "real")[0]


def test_report_intervals_are_those_of_qat_stats(finalist_records):
    rows = {r["finalist"]: r for r in demo.compare(finalist_records, "real")}
    by = {
        name: {
            (r["config"]["seed"], r["config"]["split"]["fold"]): r["metrics"]["ua"]
            for r in finalist_records
            if r["config"]["seed"] >= 200
            and demo.RunConfig.from_record(r).replace(seed=0, fold=None)
            == cfg.replace(seed=0, fold=None)
        }
        for name, cfg in demo.finalists(finalist_records, "real").items()
    }
    d = stats.paired(by["at"], by["baseline"])
    assert (rows["at"]["UA gain"], rows["at"]["gain 95% low"], rows["at"]["gain 95% high"]) == (
        pytest.approx(d.mean),
        pytest.approx(d.t_low),
        pytest.approx(d.t_high),
    )
    g = stats.gap_closed_fieller(by["at"], by["baseline"], by["ceiling"])  # Fieller's interval
    assert rows["at"]["gap closed"] == pytest.approx(g.estimate)
    assert (rows["at"]["closed 95% low"], rows["at"]["closed 95% high"]) == (
        pytest.approx(g.low),
        pytest.approx(g.high),
    )
    p = stats.paired(by["at"], by["at placebo"])
    assert rows["at"]["vs placebo"] == pytest.approx(p.mean)
    family = {n: r["p"] for n, r in rows.items() if r.get("p") is not None and n != "ceiling"}
    holm = stats.holm(family)
    assert all(rows[n]["Holm p"] == pytest.approx(holm[n]) for n in family)
    w = stats.paired(
        {k: v / 2 for k, v in by["at"].items()}, {k: v / 2 for k, v in by["baseline"].items()}
    )
    assert rows["at"]["worst-group gain"] == pytest.approx(w.mean)
    # The placebo's information is none about the confound, not the orthogonal corpus.
    assert rows["at placebo"]["information"] == PLACEBO_REGIME
    assert rows["at"]["information"] == REGIMES["at"]


def test_placebo_comparisons_are_holm_adjusted_across_every_setting_on_the_page(
    finalist_records, tmp_path
):
    # Three settings x two models, each with an at row (interval above 0) and a cka row
    # (random bound); random p-values, the first setting's far smaller.
    rng = np.random.default_rng(3)
    settings = [
        [{"finalist": "baseline"}]
        + [{"finalist": name, "_placebo p": p, "placebo 95% low": low} for name, p, low in
           zip(("at", "cka"), rng.uniform(0, 0.06, 2) ** (1 + 2 * (i == 0)),
               (0.01, rng.normal(0, 0.01)), strict=True)]
        for i in range(6)
    ]  # fmt: skip
    assert demo.adjust_placebos(settings) == 12
    assert all("placebo Holm p" not in rows[0] for rows in settings)  # never compared
    rows = [r for rows in settings for r in rows[1:]]
    p = np.array([r["_placebo p"] for r in rows])
    order = np.argsort(p)  # Holm by hand: step down, monotone, capped at 1
    holm = np.empty_like(p)
    holm[order] = np.minimum(1, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    assert [r["placebo Holm p"] for r in rows] == pytest.approx(list(holm))
    said = {}
    for r, adjusted in zip(rows, holm, strict=True):
        text = demo._beats_placebo(r)
        if r["placebo 95% low"] <= 0:
            said["interval"] = text
            assert text.startswith("does not beat it:")
        elif adjusted < 0.05:
            said["holm"] = text
            assert text == ("beats it, also after Holm's adjustment across the 12 placebo "
                            f"comparisons on this page (p = {adjusted:.3f}).")  # fmt: skip
        else:
            said["alone"] = text
            assert text == ("beats it by its interval alone, not after Holm's adjustment "
                            "across the 12 placebo comparisons on this page "
                            f"(p = {adjusted:.3f}).")  # fmt: skip
    assert set(said) == {"interval", "holm", "alone"}  # every verdict was exercised
    # On the page: one family across settings and models, shown in the finalist tables.
    for r in finalist_records:
        io.write_json_once(runs.record_path("ser", r["config"], tmp_path), r)
    page = demo.write_report(tmp_path).read_text()
    assert "placebo Holm p" in page
    compared = [r for r in demo.compare(finalist_records, "real") if r.get("_placebo p")]
    assert demo.adjust_placebos([compared]) == len(compared) == 2  # at and cka, real only
    family = stats.holm([r["_placebo p"] for r in compared])
    assert [r["placebo Holm p"] for r in compared] == pytest.approx(list(family))
    at = next(r for r in compared if r["finalist"] == "at")
    line = next(s for s in page.splitlines() if "at vs its random-network placebo" in s)
    assert line.endswith(demo._beats_placebo(at))


def test_page_leads_with_the_answer_then_the_protocol(finalist_records, tmp_path):
    for r in finalist_records:
        io.write_json_once(runs.record_path("ser", r["config"], tmp_path), r)
    page = demo.write_report(tmp_path).read_text()
    order = ["## Short answer", "## Protocol", "## At a glance", "![forest plot]", "## Targets",
             "### real VGG16"]  # fmt: skip
    assert [page.index(h) for h in order] == sorted(page.index(h) for h in order)
    assert "real, word-confounded, rho 0.9: finalists whose UA gain" in page
    assert "at vs its random-network placebo" in page
    assert (tmp_path / "figures" / "demonstration_forest_word_rho0.9.png").exists()
    assert "decorrelated validation UA" in page
    # The finalist table prints a difference and its interval bounds the same way: signed.
    table = page[page.index("### real VGG16") :].split("\n\n")[1].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    at = next(r for r in table[2:] if r.startswith("| at |"))
    cells = dict(zip(header, (c.strip() for c in at.strip("|").split("|")), strict=True))
    row = next(r for r in demo.compare(finalist_records, "real") if r["finalist"] == "at")
    for column in ("UA gain", "gain 95% low", "gain 95% high", "vs placebo", "placebo 95% low"):
        assert cells[column] == f"{row[column]:+.3f}", column
    assert cells["closed 95% low"] == f"{row['closed 95% low']:.3f}"


def test_no_forest_plot_until_a_finalist_is_paired_with_the_baseline(tmp_path):
    # The selection is done; the first finalist runs are baselines: a table row, but nothing
    # to draw yet.
    selection = [record(c, 0.5) for c in demo.selection_grid("quaternion")]
    baseline = demo.finalists(selection, "quaternion")["baseline"]
    finals = [record(baseline.replace(seed=s, fold=f), 0.4) for s, f in demo.FINAL_PAIRS[:2]]
    for r in selection + finals:
        io.write_json_once(runs.record_path("ser", r["config"], tmp_path), r)
    page = demo.write_report(tmp_path).read_text()
    assert "![forest plot]" not in page and "### quaternion VGG16" in page
    assert "quaternion, word-confounded, rho 0.9: no finalist has 2 runs paired" in page
    assert not list((tmp_path / "figures").glob("demonstration_forest_*"))
    with pytest.raises(ValueError, match="no finalist has a paired UA difference"):
        plots.forest({"quaternion": [{"finalist": "baseline", "UA gain": None}]})


def test_report_only_rebuilds_every_page_byte_for_byte(finalist_records, tmp_path):
    import hashlib

    for r in finalist_records:
        io.write_json_once(runs.record_path("ser", r["config"], tmp_path), r)
    timed = side_by_side(list(demo.cost_configs(finalist_records, "real").values()))
    io.write_json_once(runs.record_path("costs", timed["config"], tmp_path), timed)

    def pages() -> dict[str, str]:
        written = demo.write_pages(tmp_path)
        assert [p.name for p in written] == ["instrument.md", "demonstration.md", "README.md"]
        return {
            str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp_path.rglob("*"))
            if p.is_file() and "runs" not in p.parts
        }

    first = pages()
    assert any(name.endswith(".png") for name in first)
    assert pages() == first


def test_targets_are_met_only_when_the_interval_says_so(finalist_records):
    rows = demo.compare(finalist_records, "real")
    goals = {g["target"]: g for g in demo.targets(finalist_records, {"real": rows})}
    by = {r["finalist"]: r for r in rows}
    best = max((r for r in rows if r["finalist"] in demo.METHODS), key=lambda r: r["gap closed"])
    gap = goals[demo.GAP_TARGET]
    assert gap["measured"].startswith(f"{best['finalist']}: {best['gap closed']:.0%} [")
    supported = best["gap closed"] >= 0.75 and best["closed 95% low"] >= 0.5
    assert gap["met"] == ("met" if supported else "not met")
    at = goals["best anti-transfer variant (real) beats the baseline and its placebo"]
    chosen = max((by[n] for n in demo.AT_VARIANTS if n in by), key=lambda r: r["UA gain"])
    beats = chosen["gain 95% low"] > 0 and chosen["placebo 95% low"] > 0
    assert at["met"] == ("met" if beats else "not met")
    # Without quaternion runs the model comparisons are pending, never met.
    assert goals["quaternion vs real at: step time <= 0.25x, peak memory <= 0.20x"]["met"] == (
        "pending"
    )


@pytest.mark.parametrize(
    ("shift", "noise", "verdict"),
    [(0.0, 0.005, "met"), (0.2, 0.005, "met"), (-0.2, 0.005, "not met"),
     (0.0, 0.1, stats.WIDE)],
)  # fmt: skip
def test_quaternion_within_005_ua_of_real_is_decided_by_the_paired_interval(shift, noise, verdict):
    # A margin of non-inferiority: the quaternion may lose at most 0.05 UA; gaining is fine.
    rng = np.random.default_rng(3)
    real = finalist_set("real", {"at": 0.46}, rng)
    quaternion = finalist_set("quaternion", {"at": 0.46 + shift}, rng, noise)
    records = real + quaternion
    rows = {m: demo.compare(records, m) for m in demo.MODELS}
    goal = next(g for g in demo.targets(records, rows) if g["target"].startswith(
        "quaternion at within 0.05 UA"))  # fmt: skip
    ua = {m: {(r["config"]["seed"], r["config"]["split"]["fold"]): r["metrics"]["ua"]
              for r in part if r["config"]["seed"] >= 200 and r["config"]["method"] == "at"
              and r["config"]["orthogonal"] != "random"}
          for m, part in (("real", real), ("quaternion", quaternion))}  # fmt: skip
    d = np.array([ua["quaternion"][k] - ua["real"][k] for k in ua["real"]])
    half = st.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    low, high = d.mean() - half, d.mean() + half
    expected = "met" if low >= -0.05 else "not met" if high < -0.05 else stats.WIDE
    assert goal["met"] == expected == verdict
    assert goal["measured"] == f"{d.mean():+.3f} [{low:+.3f}, {high:+.3f}]"


def side_by_side(steps: list[RunConfig], seed: int = 0, rounds: int = 15) -> dict:
    """A costs record of `steps`, timed in `rounds` rounds under a drifting load."""
    rng = np.random.default_rng(seed)
    load = rng.uniform(0.5, 2.0, rounds)
    entries = {
        c.key(): {"config": c.key_dict(), "peak_memory_bytes": 2**20 * (i + 1),
                  "step_times_s": list(0.1 * (i + 1) * load * np.exp(rng.normal(0, 0.05, rounds)))}
        for i, c in enumerate(dict.fromkeys(steps))
    }  # fmt: skip
    return {"kind": costs.KIND, "config": costs.record_key(steps, rounds, 2),
            "entries": entries, "load_average": [1.0, 1.5], "cpus": 2}  # fmt: skip


@pytest.mark.parametrize(
    ("ratio", "memory", "verdict"),
    [(0.10, 0.10, "met"), (0.10, 0.30, "not met"), (0.60, 0.15, "not met"),
     (0.27, 0.15, stats.WIDE)],
)  # fmt: skip
def test_cost_target_is_decided_by_counted_memory_and_the_side_by_side_time(ratio, memory, verdict):
    """Peak memory is counted, so it decides on its own; the step time only through the ratio
    timed side by side within rounds, with its interval. Without that measurement the run
    records' one-off timings never make the target met."""
    rng = np.random.default_rng(7)
    real_at, quaternion_at = demo.base("real", method="at"), demo.base("quaternion", method="at")
    real_times = 0.4 * rng.uniform(0.5, 2.0, 15)  # the machine's load drifts between rounds
    quaternion_times = ratio * real_times * np.exp(rng.normal(0, 0.1, 15))
    record = side_by_side([real_at, quaternion_at])
    record["entries"][real_at.key()]["step_times_s"] = list(real_times)
    record["entries"][quaternion_at.key()]["step_times_s"] = list(quaternion_times)
    real = {"at": {"step time (ms)": 300.0, "peak memory (MiB)": 80.0}}
    quaternion = {"at": {"step time (ms)": 300.0, "peak memory (MiB)": 80.0 * memory}}
    rows, steps = (
        {"real": real, "quaternion": quaternion},
        {"real": real_at, "quaternion": quaternion_at},
    )
    goal = demo._cost_target("at", rows, record, steps)
    logs = np.log(quaternion_times / real_times)  # the formula, independently
    half = st.t.ppf(0.975, 14) * logs.std(ddof=1) / np.sqrt(15)
    low, mid, high = np.exp(logs.mean() - half), np.exp(logs.mean()), np.exp(logs.mean() + half)
    expected = "not met" if memory > 0.2 or low > 0.25 else "met" if high <= 0.25 else stats.WIDE
    assert goal["met"] == expected == verdict
    assert goal["measured"] == (f"peak memory {memory:.2f}x; step time {mid:.2f} [{low:.2f}, "
                                f"{high:.2f}]x (side by side, 15 rounds)")  # fmt: skip
    # The records' one-off step times (here 1.00x) never decide: memory alone may refute.
    for mem, alone in ((0.1, "pending"), (0.3, "not met")):
        q = {"at": {"step time (ms)": 30.0, "peak memory (MiB)": 80.0 * mem}}
        goal = demo._cost_target("at", {"real": real, "quaternion": q})
        assert goal["met"] == alone and "step time pending a side-by-side run" in goal["measured"]
    assert demo._cost_target("at", {"real": real})["met"] == "pending"


def test_the_costs_stage_times_both_models_steps_in_one_measurement(finalist_records, monkeypatch):
    measured = []
    both = finalist_records + finalist_set("quaternion", {}, np.random.default_rng(2))
    monkeypatch.setattr(runs, "load_records", lambda *a, **k: both)
    monkeypatch.setattr(costs, "run", measured.append)
    monkeypatch.setattr(demo.embedding, "instrument_problem", lambda records: None)  # settled
    monkeypatch.setattr(demo.precision, "instrument_problem", lambda records: None)
    demo.run(stages=("costs",))
    wanted = [c for m in demo.MODELS for c in demo.cost_configs(both, m).values()]
    assert measured == [wanted]  # one call: every step in the same interleaved rounds
    assert {c.model for c in wanted} == {"real", "quaternion"}
    assert {c.precision for c in wanted} == {"fp32"}  # the cost claim is timed in fp32


def test_the_race_runs_each_model_at_the_precision_the_rule_adopted(monkeypatch):
    monkeypatch.setitem(demo.INSTRUMENT_PRECISION, "real", "bf16")
    assert demo.base("real").precision == "bf16"
    assert demo.base("quaternion").precision == "fp32"
    assert {c.precision for c in demo.candidates.__wrapped__("real", "dann")} == {"bf16"}
    monkeypatch.setattr(demo.embedding, "instrument_problem", lambda records: None)
    monkeypatch.setattr(runs, "load_records", lambda *a, **k: [])
    with pytest.raises(ValueError, match=r"waits for the instrument: the bf16 decision is "
                       r"pending.*--stage precision"):  # fmt: skip
        demo.run(stages=("selection",))


def test_step_times_come_from_the_side_by_side_record_only(finalist_records, tmp_path):
    steps = demo.cost_configs(finalist_records, "real")
    assert {f"tap {t}" for t in demo.VGG16_TAPS} <= set(steps)
    assert {(c.seed, c.fold) for c in steps.values()} == {demo.COST_PAIR}
    # A placebo's step is its method's; the group methods, DFR and the ceiling train with the
    # baseline's step.
    assert steps["at placebo"] == steps["at"] and steps["jtt"] == steps["baseline"]
    assert steps["ceiling"] == steps["baseline"] and steps["dann"] != steps["baseline"]
    rows = {r["finalist"]: r for r in demo.compare(finalist_records, "real")}
    assert all(r["step time (ms)"] is None for r in rows.values())  # not timed side by side
    record = side_by_side(list(steps.values()))
    rows = {r["finalist"]: r for r in demo.compare(finalist_records, "real", measured=record)}
    for name, row in rows.items():
        times = record["entries"][steps[name].key()]["step_times_s"]
        assert row["step time (ms)"] == pytest.approx(1e3 * np.median(times)), name
    for r in finalist_records:
        io.write_json_once(runs.record_path("ser", r["config"], tmp_path), r)
    page = demo.write_report(tmp_path).read_text()
    assert "- Step times: real and quaternion: not yet timed side by side" in page
    io.write_json_once(runs.record_path("costs", record["config"], tmp_path), record)
    page = demo.write_report(tmp_path).read_text()
    assert (
        "- Step times: real: every finalist's and swept tap's training step timed side by "
        "side in 15 interleaved rounds"
        in page
        and "; quaternion: not yet timed" in page
    )
    assert demo.measured_costs(runs.load_records(tmp_path), "real") == record
    assert demo.measured_costs(runs.load_records(tmp_path)) is None  # quaternion not timed


def test_layer_sweep_intervals_and_where_the_papers_claim_holds(finalist_records):
    rng = np.random.default_rng(1)
    chosen = demo.finalists(finalist_records, "real")
    at_tap = chosen["at"].tap[0]
    # at_tap (the AT finalist's, an early one) gains 0.06 in finalist_records; every other tap
    # at the finalist's other settings: as below.
    assert at_tap in demo.EARLY_TAPS and at_tap != "conv1_2"
    gains = {"conv1_2": 0.05, "conv4_1": 0.08}
    records = list(finalist_records)
    by_key = {RunConfig.from_record(r).key(): r for r in records}
    uas: dict[str, dict] = {}
    for tap in ("baseline", *demo.VGG16_TAPS):
        config = chosen["baseline"] if tap == "baseline" else chosen["at"].replace(tap=(tap,))
        for s, f in demo.SWEEP_PAIRS:
            run = config.replace(seed=s, fold=f)
            if run.key() not in by_key:
                ua = 0.40 + gains.get(tap, 0.0) + rng.normal(0, 0.005)
                records.append(record(run, ua))
                by_key[run.key()] = records[-1]
            uas.setdefault(tap, {})[(s, f)] = by_key[run.key()]["metrics"]["ua"]
    pending = demo.sweep_verdict(demo.layer_sweep(records, "real"), "real")
    assert "pending the side-by-side step times" in pending and "holds" not in pending
    timed = side_by_side(list(demo.cost_configs(records, "real").values()))
    rows = {r["tap"]: r for r in demo.layer_sweep(records, "real", timed)}
    assert set(rows) == set(demo.VGG16_TAPS)
    for tap, row in rows.items():
        d = stats.paired(uas[tap], uas["baseline"])
        assert (row["UA gain"], row["gain 95% low"], row["gain 95% high"]) == (
            pytest.approx(d.mean), pytest.approx(d.t_low), pytest.approx(d.t_high))  # fmt: skip
    p = np.array([st.ttest_rel(list(uas[t].values()), [uas["baseline"][k] for k in uas[t]])
                  .pvalue for t in demo.VGG16_TAPS])  # fmt: skip
    order = np.argsort(p)  # Holm by hand: step down, monotone, capped at 1
    holm = np.empty_like(p)
    holm[order] = np.minimum(1, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    for tap, expected in zip(demo.VGG16_TAPS, holm, strict=True):
        assert rows[tap]["Holm p (taps)"] == pytest.approx(expected)
    said = demo.sweep_verdict(list(rows.values()), "real")
    assert "best tap by mean gain is conv4_1" in said
    survive = [t for t in demo.VGG16_TAPS if rows[t]["gain 95% low"] > 0 and holm[
        demo.VGG16_TAPS.index(t)] < 0.05]  # fmt: skip
    assert f"after Holm's adjustment across the 13 taps: {', '.join(survive) or 'none'}" in said
    steps = demo.cost_configs(records, "real")
    ms = {
        t: 1e3 * np.median(timed["entries"][steps[f"tap {t}"].key()]["step_times_s"])
        for t in ("conv1_2", at_tap)
    }  # the early taps that gain; at_tap is the finalist's
    cheapest = min(ms, key=ms.get)
    assert f"early tap {cheapest} gains at {ms[cheapest]:.0f} ms a step" in said
    assert said.endswith("holds.")

    def verdict(low: dict[str, float]) -> str:  # the full sweep, some taps' low bounds replaced
        changed = [
            {**r, "gain 95% low": low.get(r["tap"], r["gain 95% low"])} for r in rows.values()
        ]
        return demo.sweep_verdict(changed, "real")

    assert "does not hold" in verdict(dict.fromkeys(demo.EARLY_TAPS, -0.01))
    assert "no layer helps measurably" in verdict(dict.fromkeys(demo.VGG16_TAPS, -0.01))
    assert {"conv1_2", "conv4_1"} <= {r["tap"] for r in rows.values() if r["gain 95% low"] > 0}
    # Until every tap has all its pairs, the claim is pending, whatever the taps so far show.
    n = len(demo.VGG16_TAPS)
    for partial in (
        [r for r in rows.values() if r["tap"] != "conv5_3"],
        [{**r, "runs": 2} if r["tap"] == "conv1_1" else r for r in rows.values()],
    ):
        said = demo.sweep_verdict(partial, "real")
        assert f"taps with all {len(demo.SWEEP_PAIRS)} pairs: {n - 1} of {n};" in said
        helped = ", ".join(r["tap"] for r in partial if r["gain 95% low"] > 0)
        assert f"so far: {helped}." in said and said.endswith("until every tap has run.")
        assert "holds" not in said and "does not" not in said
    assert "has not run" in demo.sweep_verdict([], "quaternion")


def test_the_short_answer_leads_with_anti_transfer_against_its_placebo_and_the_field(
    finalist_records, tmp_path
):
    rows = demo.compare(finalist_records, "real")
    by = {r["finalist"]: r for r in rows}
    at = max((by[n] for n in demo.AT_VARIANTS), key=lambda r: r["UA gain"])
    field = max(
        (r for n, r in by.items() if n in demo.METHODS and n not in demo.AT_VARIANTS),
        key=lambda r: r["UA gain"],
    )
    chosen = demo.finalists(finalist_records, "real")
    uas = {
        name: {
            (r["config"]["seed"], r["config"]["split"]["fold"]): r["metrics"]["ua"]
            for r in finalist_records
            if (r["config"]["seed"], r["config"]["split"]["fold"]) in demo.FINAL_PAIRS
            and RunConfig.from_record(r).replace(seed=0, fold=None)
            == chosen[name].replace(seed=0, fold=None)
        }
        for name in (at["finalist"], field["finalist"])
    }
    d = stats.paired(uas[at["finalist"]], uas[field["finalist"]])
    said = demo.headline(rows, "real")
    # at gains 0.06 over the baseline, 0.01 over its placebo and 0.04 over every other method.
    assert said.startswith(f"- **real: the best anti-transfer variant, {at['finalist']}, ")
    finding = said.split("**")[1]
    lost = finding.split("does not beat ")[1].split("; it ")[0] if "does not" in finding else ""
    assert ("its placebo" in lost) == (at["placebo 95% low"] <= 0)
    assert (f"the field's best, {field['finalist']}" in lost) == (d.t_low <= 0)
    interval = f"{d.mean:+.3f} [{d.t_low:+.3f}, {d.t_high:+.3f}]"
    assert f"vs {field['finalist']} {interval}, which uses {field['information']}." in said
    # Without the placebo's runs the finding is pending, never claimed.
    no_placebo = [r | {"vs placebo": None} for r in rows]
    assert "pending" in demo.headline(no_placebo, "real")
    # On the page it follows what to use by information regime, which leads.
    for r in finalist_records:
        io.write_json_once(runs.record_path("ser", r["config"], tmp_path), r)
    page = demo.write_report(tmp_path).read_text()
    lines = page.split("## Short answer\n\n")[1].splitlines()
    regimes = len(demo.USE_REGIMES)
    assert [line.split("**")[1] for line in lines[:regimes]] == [r for r, _ in demo.USE_REGIMES]
    assert lines[regimes] == demo.headline(rows, "real, word-confounded, rho 0.9")


def test_grid_progress_counts_recorded_runs_against_each_stages_plan(finalist_records):
    selection = demo.selection_grid("quaternion")
    half = [record(c, 0.5) for c in selection[::2]]
    said = demo.grid_progress(demo.grid_counts(half))
    n_final = (2 + len(demo.METHODS) + len(demo.PLACEBO_OF)) * len(demo.FINAL_PAIRS)
    assert (
        f"quaternion: selection {len(selection[::2])}/{len(selection)}, finalists 0/{n_final},"
        in (said)
    )
    assert f"real: selection 0/{len(demo.selection_grid('real'))}," in said
    # Every finalist of the fixture ran on every fresh pair; its selection is complete.
    said = demo.grid_progress(demo.grid_counts(finalist_records))
    assert f"real: selection {len(demo.selection_grid('real'))}/" in said
    assert f"finalists {n_final}/{n_final}" in said


def test_runs_are_matched_to_a_setting_by_their_content_each_time():
    at = demo.base("real", method="at", tap="conv2_1", beta=1.0)
    records = [record(at.replace(seed=s, fold=f), 0.5) for s, f in demo.FINAL_PAIRS]
    records.append(record(at.replace(beta=10.0, seed=1, fold=1), 0.5))
    assert set(demo._matching(records, at)) == set(demo.FINAL_PAIRS)
    # A record edited in place now belongs to its new setting (nothing stale is served).
    records[0]["config"] = at.replace(beta=10.0, seed=7, fold=0).key_dict()
    assert set(demo._matching(records, at)) == set(demo.FINAL_PAIRS[1:])
    assert set(demo._matching(records, at.replace(beta=10.0))) == {(1, 1), (7, 0)}


def test_the_whole_grid_s_time_is_stated_only_when_every_stage_has_run():
    rng = np.random.default_rng(3)
    records, seen = [], set()
    for grid_of in demo.GRIDS.values():  # each stage's grid from the records so far
        for model in demo.MODELS:
            for c in grid_of(model, records):
                if c.key() not in seen:
                    seen.add(c.key())
                    records.append(record(c, 0.5) | {"wall_time_s": rng.uniform(100, 300)})
    rhemo = {"kind": "rhemo", "config": {"seed": 1, "split": "a"}, "wall_time_s": 400.0}
    other = {"kind": "rhemo", "config": {"seed": 1, "split": "b"}, "wall_time_s": 900.0}
    records[0]["upstream_weights"] = {"rhemo": {"record": tables.record_id(rhemo)}}
    hours = sum(r["wall_time_s"] for r in records) / 3600
    counts = demo.grid_counts(records)
    assert demo.grid_complete(counts)
    said = demo.grid_time([*records, rhemo, other], complete=True)  # no run read the other
    assert said.startswith(f"- The whole grid: {len(records)} runs, {hours:.1f} h of summed "
                           f"wall time from their records, and the 1 RH-emos of their splits, "
                           f"{400 / 3600:.1f} h")  # fmt: skip
    # One variant run short: the grid is not complete, and its time is "so far".
    short = records[:-1]
    counts = demo.grid_counts(short)
    assert not demo.grid_complete(counts)
    n = len(demo.ALWAYS_IN_VARIANTS) * len(demo.VARIANT_PAIRS) * len(demo.VARIANTS)
    assert f"variants {n - 1}/{n}" in demo.grid_progress(counts)
    said = demo.grid_time(short, complete=False)
    assert said.startswith(f"- Grid so far: {len(short)} runs, ")


def test_the_page_says_which_dfr_runs_refitted_a_retrained_baseline_network():
    rng = np.random.default_rng(5)
    records, shifts = [], rng.normal(0, 0.01, 3)
    for (s, f), shift in zip(demo.FINAL_PAIRS, shifts, strict=False):
        r = record(demo.base("real", method="dfr", seed=s, fold=f), 0.5)
        r["method"] = {"dfr": {"baseline_network_retrained": {
            "test_ua": 0.45 + shift, "record_test_ua": 0.45}}}  # fmt: skip
        records.append(r)
    records.append(record(demo.base("quaternion", method="dfr"), 0.5) | {"method": {"dfr": {}}})
    (line,) = demo.retrained_lines(records)
    assert line.startswith("- real DFR: 3 run(s) refitted a baseline network trained again")
    d = (0.45 + shifts) - 0.45
    assert f"mean {d.mean():+.3f}, range [{d.min():+.3f}, {d.max():+.3f}]" in line
    assert demo.retrained_lines(records[-1:]) == []


def test_the_short_answer_sums_up_the_targets_by_verdict():
    verdicts = {"a": "not met", "b": "met", "c": stats.WIDE, "d": "met", "e": "pending"}
    goals = [{"target": t, "met": v} for t, v in verdicts.items()]
    assert demo.targets_line(goals) == (
        "- Targets: 2 of 5 met (met: b; d; interval too wide: c; not met: a; pending: e)."
    )


def test_runs_that_did_not_train_are_counted_per_method_and_kept_in_every_comparison(
    finalist_records,
):
    records = [dict(r) for r in finalist_records]
    chosen = demo.finalists(records, "real")
    failed = {("jtt", (400, 0)), ("jtt", (401, 1)), ("baseline", (402, 2))}
    keys = {chosen[n].replace(seed=s, fold=f).key(): (n, (s, f)) for n, (s, f) in failed}
    subsample_draw = demo.candidate("real", "subsample", 3).replace(seed=100, fold=0).key()
    for r in records:
        key = RunConfig.from_record(r).key()
        if key in keys or key == subsample_draw:
            r.update(trained=False, not_trained_because=["test UA 0.200 is below 1.25/5 = 0.250"])
            r["metrics"] = {**r["metrics"], "ua": 0.2}
    rows = {r["finalist"]: r for r in demo.compare(records, "real")}
    assert (rows["jtt"]["did not train"], rows["baseline"]["did not train"]) == (2, 1)
    assert rows["jtt"]["runs"] == len(demo.FINAL_PAIRS)  # kept, never dropped
    jtt = {(r["config"]["seed"], r["config"]["split"]["fold"]): r["metrics"]["ua"]
           for r in records if RunConfig.from_record(r).replace(seed=0, fold=None) == chosen["jtt"]
           and r["config"]["seed"] >= 400}  # fmt: skip
    assert rows["jtt"]["UA"] == pytest.approx(np.mean(list(jtt.values())))
    counts = demo.failure_counts(records, "real")
    assert counts["jtt"]["finalists"] == (2, len(demo.FINAL_PAIRS))
    assert counts["subsample"]["selection"] == (1, hparams.N_DRAWS * len(demo.SELECTION_PAIRS))
    assert counts["dann"]["finalists"] == (0, len(demo.FINAL_PAIRS))
    line = demo.failures_line(records)
    assert "real: selection 1 of 160 (subsample 1), finalists 3 of 104 (baseline 1, jtt 2)" in line
    table = {r["name"]: r for r in demo.failure_rows(records) if r["model"] == "real"}
    assert table["jtt"]["finalists"] == "2 of 8" and table["jtt"]["why"] == "test UA: 2"
    goal = demo._trained_target(records)
    assert goal["met"] == "not met" and goal["measured"].startswith("real: 3 of 104")
    clean = demo._trained_target(finalist_records)
    assert clean["met"] == "pending"  # quaternion has not run: not yet met
    both = finalist_records + finalist_set("quaternion", {}, np.random.default_rng(1))
    assert demo._trained_target(both)["met"] == "met"


def test_the_page_counts_every_finalists_labelled_items_and_how_it_trained(finalist_records):
    records = [dict(r) for r in finalist_records]
    chosen = demo.finalists(records, "real")
    sizes = {(400, 0): 3200, (401, 1): 3300}
    for r in records:
        run = RunConfig.from_record(r)
        if run.replace(seed=0, fold=None) == chosen["subsample"] and run.seed >= 400:
            train = sizes.get((run.seed, run.fold), 3250)
            r["labelled_data"] = {
                "emotion": {"training": 250, "validation": 800, "selection set": 1000},
                "group": {"selection set": 1000, "training (to subsample)": train},
            }
            r["method"] = {"subsample": {"train_items": 250, "epochs": 120, "steps": 1200,
                                         "baseline_steps": 1204}}  # fmt: skip
        if run.replace(seed=0, fold=None) == chosen["at placebo"] and run.seed >= 400:
            r["labelled_data"] = {
                "emotion": {"training": 3250},
                "group": {},
                "orthogonal corpus": {"items": 0, "labels": "none (untrained)"},
            }
    main = {"real": demo.compare(records, "real")}
    used = {r["finalist"]: r for r in demo.labelled_rows(main)}
    sub = used["subsample"]
    assert sub["emotion labels"] == "training 250; validation 800; selection set 1000"
    train = [sizes.get(p, 3250) for p in demo.FINAL_PAIRS]
    assert sub["group labels"] == (
        f"selection set 1000; training (to subsample) "
        f"{np.mean(train):.0f} ({min(train)}-{max(train)})"
    )
    assert used["at placebo"]["group labels"] == "none"
    assert used["at placebo"]["other labels"] == "orthogonal corpus: items 0 (none (untrained))"
    assert used["dann"]["emotion labels"] == "not recorded"
    trained = {r["finalist"]: r["how it trained"] for r in demo.training_rows(main)}
    assert trained["subsample"] == "train items 250; epochs 120; steps 1200; baseline steps 1204"


def _row(name: str, gain: float, low: float, runs: int = 8, placebo_low=None) -> dict:
    row = {"finalist": name, "runs": runs, "UA gain": gain, "gain 95% low": low,
           "gain 95% high": gain + (gain - low), "gap closed": gain / 0.1,
           "closed 95% low": low / 0.1, "closed 95% high": (2 * gain - low) / 0.1}  # fmt: skip
    if placebo_low is not None:
        row["placebo 95% low"] = placebo_low
    return row


def test_what_to_use_is_the_best_allowed_finalist_whose_gain_interval_is_above_zero():
    rows = [{"finalist": "baseline", "runs": 8},
            _row("jtt", 0.01, -0.01), _row("dfr", 0.05, 0.02), _row("reweight", 0.03, 0.01),
            _row("groupdro", 0.08, 0.04), _row("subsample", 0.09, -0.02),
            _row("dann", 0.02, 0.005), _row("cdann", 0.0, -0.02),
            _row("at", 0.06, 0.03, placebo_low=-0.01), _row("cka", 0.02, 0.01, placebo_low=0.002),
            _row("at placebo", 0.05, 0.02), _row("cka placebo", 0.0, -0.01)]  # fmt: skip
    lines = demo.use_lines({"real": rows})
    assert [line.split("**")[1] for line in lines] == [r for r, _ in demo.USE_REGIMES]
    said = dict(zip([r for r, _ in demo.USE_REGIMES], lines, strict=True))
    # No group labels: only jtt, whose interval straddles 0: the baseline.
    assert "real: nothing allowed beats the baseline measurably (best by mean: jtt " in said[
        "No group labels"]  # fmt: skip
    assert "use dfr: +0.050 [+0.020, +0.080] UA over the baseline, 50% [20%, 80%]" in said[
        "Group labels for validation only"]  # fmt: skip
    # subsample has the highest mean, but its interval holds 0: groupdro.
    assert "real: use groupdro:" in said["Group labels in training"]
    # at gains most but does not beat its placebo; cka does, by its interval.
    assert "real: use cka:" in said["A separate orthogonal corpus (no group labels)"]
    short = [r if r["finalist"] != "dfr" else {**r, "runs": 7} for r in rows]
    assert "real: pending (dfr not on all 8 fresh pairs yet)" in demo.use_lines(
        {"real": short})[1]  # fmt: skip


def test_with_no_records_the_page_says_what_is_pending_and_rebuilds_identically(tmp_path):
    page = demo.write_report(tmp_path).read_text()
    answer = page.split("## Short answer\n\n")[1].split("\n\n")[0].splitlines()
    assert len(answer) > len(demo.USE_REGIMES)
    assert all("pending (baseline" in line for line in answer[: len(demo.USE_REGIMES)])
    assert "- No finalist has run yet." in answer
    assert "- Runs with a record / planned: real: selection 0/160, finalists 0/104," in page
    assert "- Grid so far: 0 runs, 0.0 h of summed wall time" in page
    assert "## Protocol" in page and "| groupdro | 8 |" in page  # the registry, before any run
    assert demo.write_report(tmp_path).read_text() == page


def test_the_fair_race_refuses_to_start_before_the_instrument_is_re_frozen(monkeypatch):
    """The race runs on the RH-emo the instrument's rule adopted: while the rule is pending,
    `qat demonstration` says what to run first (qat.embedding.instrument_problem)."""
    monkeypatch.setattr(runs, "load_records", lambda *a, **k: [])  # nothing selected yet
    with pytest.raises(ValueError, match=r"waits for the instrument: the RH-emo decision is "
                       r"pending.*embedding-confirm"):  # fmt: skip
        demo.run(stages=("selection",))
