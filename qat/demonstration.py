"""The demonstration, on the frozen instrument: which method removes the word shortcut, with
intervals, placebos and the robustness field's baselines.

Protocol (written into the page before the results):
1. Selection. Each method's knobs run on SELECTION_PAIRS (seed, fold) only; the configuration
   with the best mean UA on the decorrelated validation set (group-balanced training-speaker
   items no run trains on: a group-aware selection, declared) is the method's finalist. The
   test set never selects anything. DFR tunes its C inside (worst-group accuracy on half of
   its balanced set); reweight and subsample have no knobs.
2. Finalists (each method's choice, the baseline, the unconfounded ceiling, and the random-
   network placebo of each anti-transfer finalist, same tap and beta) run on FINAL_PAIRS,
   fresh (seed, fold) pairs the selection never saw; every method is paired with the
   baseline on the same pair.
3. The layer sweep: the published AT at every tap at the beta chosen for AT, on SWEEP_PAIRS.
4. Variants: the finalists on rho 0.95 and on the speaker-confounded split (with the speaker
   network), on FINAL_PAIRS.
5. Costs: every finalist's and every swept tap's training step, real and quaternion, timed
   side by side in one process (qat.costs), so step times compare.
Everything on the page comes from run records; `qat demonstration` resumes where it stopped.
"""

from __future__ import annotations

import functools
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from qat import costs, io, paths, plots, runs, stats, tables
from qat.config import INSTRUMENT_ENCODER, RunConfig, label_of
from qat.models import VGG16_TAPS
from qat.report import update_readme_block

PROFILE = "cpu"
MODELS = ("real", "quaternion")
SELECTION_PAIRS = ((100, 0), (101, 1))
FINAL_PAIRS = ((200, 0), (201, 1), (202, 2), (203, 3), (204, 0))
SWEEP_PAIRS = FINAL_PAIRS[:3]
MAIN = (0.9, "word")  # (rho, factor)
VARIANTS = ((0.95, "word"), (0.9, "speaker"))
METHODS = ("at", "cka", "dann", "cdann", "reweight", "subsample", "groupdro", "jtt", "dfr")
PLACEBO_OF = ("at", "cka")  # finalists that get a random-network placebo
FINALISTS = 2 + len(METHODS) + len(PLACEBO_OF)  # with the baseline and the ceiling
# Finalists that train with the baseline's step: the group methods only reweight (or subsample)
# the per-item loss, DFR refits the baseline's last layer, the ceiling changes the data only.
BASELINE_STEP = ("ceiling", "reweight", "subsample", "groupdro", "jtt", "dfr")
COST_PAIR = FINAL_PAIRS[0]  # the (seed, fold) whose split and upstream networks the costs use

# The knobs each method is selected over (on SELECTION_PAIRS, real and quaternion).
KNOBS: dict[str, list[dict]] = {
    "at": [
        dict(tap=t, beta=b)
        for t in ("conv2_1", "conv3_3", "conv5_3", "penultimate")
        for b in (1.0, 10.0)
    ],
    "cka": [
        dict(tap=t, beta=b)
        for t in ("conv3_1", "penultimate", ("conv3_1", "conv5_3", "penultimate"))
        for b in (0.1, 1.0)
    ],
    "dann": [dict(lam=v) for v in (0.3, 1.0)],
    "cdann": [dict(lam=v) for v in (0.3, 1.0)],
    "reweight": [{}],
    "subsample": [{}],
    "groupdro": [dict(eta=v) for v in (0.01, 0.1)],
    "jtt": [dict(jtt_epochs=2, lambda_up=v) for v in (6.0, 20.0)],
    "dfr": [{}],
}


def base(model: str, variant=MAIN, **changes) -> RunConfig:
    """The demonstration's configuration of `model` on a variant (the word-confounded split by
    default), with `changes` (method, knobs, setup, seed, fold...)."""
    rho, factor = variant
    settings = dict(profile=PROFILE, setup="confounded", model=model, rho=rho, factor=factor,
                    orthogonal=factor)  # fmt: skip
    if model == "quaternion":  # the instrument's quaternion pipeline
        settings["rhemo_encoder"] = INSTRUMENT_ENCODER
    return RunConfig(**{**settings, **changes})


def controls(config: RunConfig) -> list[RunConfig]:
    """The baseline and the ceiling of a configuration's (seed, fold)."""
    b = config.replace(method="baseline")
    return [b, b.replace(setup="unconfounded")]


def selection_grid(model: str) -> list[RunConfig]:
    return [
        base(model, method=m, seed=s, fold=f, **knobs)
        for m, grid in KNOBS.items()
        for knobs in grid
        for s, f in SELECTION_PAIRS
    ]


def _matching(records, config: RunConfig) -> dict[tuple, dict]:
    """{(seed, fold): record} of a configuration (one record per pair: a forced rerun written
    beside a record is not a new pair)."""
    key = config.replace(seed=0, fold=None).key()
    out = {}
    for r in records:
        if r.get("kind") == "ser" and r["config"].get("method") == config.method:
            setting, pair = _setting(json.dumps(r["config"], sort_keys=True, default=str))
            if setting == key:
                out.setdefault(pair, r)
    return out


@functools.lru_cache(maxsize=4096)
def _setting(config: str) -> tuple[str, tuple]:
    """A record's configuration (as JSON) without its pair, and its (seed, fold); cached on
    the content, because the page matches every record against every finalist."""
    run = RunConfig.from_record(json.loads(config))
    return run.replace(seed=0, fold=None).key(), (run.seed, run.fold)


def choose(records, model: str, method: str) -> tuple[RunConfig, list[dict]]:
    """The method's finalist: the knobs with the best mean decorrelated-validation UA over
    SELECTION_PAIRS (ties: the first in KNOBS), and every candidate's score."""
    scored = []
    for knobs in KNOBS[method]:
        config = base(model, method=method, **knobs)
        pairs = _matching(records, config)
        values = [pairs[p]["selection_set"]["ua"] for p in SELECTION_PAIRS if p in pairs]
        complete = len(values) == len(SELECTION_PAIRS)
        scored.append(
            {
                "config": config,
                "score": statistics.fmean(values) if complete else None,
                "pairs": len(values),
            }
        )
    ready = [s for s in scored if s["score"] is not None]
    best = max(ready, key=lambda s: s["score"])["config"] if ready else None
    return best, scored


def finalists(records, model: str) -> dict[str, RunConfig]:
    """{name: configuration without seed and fold}: baseline, ceiling, each method's choice and
    the placebos of the anti-transfer choices (only methods whose selection is complete)."""
    out = {"baseline": base(model), "ceiling": base(model, setup="unconfounded")}
    for method in METHODS:
        chosen, _ = choose(records, model, method)
        if chosen is not None:
            out[method] = chosen
            if method in PLACEBO_OF:
                out[f"{method} placebo"] = chosen.replace(orthogonal="random")
    return out


def _on(config: RunConfig, pairs, variant=MAIN) -> list[RunConfig]:
    rho, factor = variant
    moved = config.replace(
        rho=rho,
        factor=factor,
        orthogonal=factor if config.orthogonal in ("word", "speaker") else config.orthogonal,
    )
    return [moved.replace(seed=s, fold=f) for s, f in pairs]


def final_grid(model: str, records) -> list[RunConfig]:
    return [c for f in finalists(records, model).values() for c in _on(f, FINAL_PAIRS)]


def sweep_grid(model: str, records) -> list[RunConfig]:
    chosen, _ = choose(records, model, "at")
    if chosen is None:
        return []
    taps = [base(model, method="at", tap=t, beta=chosen.beta) for t in VGG16_TAPS]
    return [c for t in taps for c in _on(t, SWEEP_PAIRS)] + [
        c for b in controls(base(model)) for c in _on(b, SWEEP_PAIRS)
    ]


def variant_grid(model: str, records) -> list[RunConfig]:
    return [
        c
        for v in VARIANTS
        for f in finalists(records, model).values()
        for c in _on(f, FINAL_PAIRS, v)
    ]


# The stages in order, each with its grid of one model (from the records so far).
GRIDS = {
    "selection": lambda model, _: selection_grid(model),
    "finalists": final_grid,
    "sweep": sweep_grid,
    "variants": variant_grid,
}
STAGES = (*GRIDS, "costs")


def cost_configs(records, model: str) -> dict[str, RunConfig]:
    """{what: configuration} whose training step the costs stage times, on COST_PAIR: each
    finalist by name (a placebo's step is its method's, BASELINE_STEP's the baseline's) and
    each swept tap ("tap conv1_1")."""
    chosen = finalists(records, model)
    steps = {name: chosen["baseline" if name in BASELINE_STEP else name.removesuffix(" placebo")]
             for name in chosen}  # fmt: skip
    at, _ = choose(records, model, "at")
    if at is not None:
        steps |= {f"tap {t}": base(model, method="at", tap=t, beta=at.beta) for t in VGG16_TAPS}
    return {name: _on(c, (COST_PAIR,))[0] for name, c in steps.items()}


def run(models=MODELS, jobs: int = 2, stages: Sequence[str] = STAGES) -> None:
    """The stages in order; runs whose record exists are skipped, so this resumes. Each stage
    reads the records the previous ones wrote. The costs stage times the steps of `models`
    side by side in this process (`jobs` does not apply)."""
    from qat.experiments import run_configs

    for stage in stages:
        records = runs.load_records(kind="ser")
        if stage == "costs":
            costs.run([c for m in models for c in cost_configs(records, m).values()])
            continue
        for model in models:
            grid = GRIDS[stage](model, records)
            run_configs(grid, jobs=jobs, desc=f"demonstration {stage}, {model}")


# ---------------------------------------------------------------- the analysis


def _ua(pairs: dict[tuple, dict], metric: str = "ua") -> dict[tuple, float]:
    if metric == "worst_group":
        return {k: r["groups"]["worst_group"] for k, r in pairs.items() if r.get("groups")}
    return {k: r["metrics"][metric] for k, r in pairs.items()}


def measured_costs(everything, model: str | None = None):
    """The costs record that timed every step the page needs side by side (of `model`, else of
    both models), or None."""
    records = [r for r in everything if r.get("kind") == "ser"]
    models = MODELS if model is None else (model,)
    return costs.find(everything, [c for m in models for c in cost_configs(records, m).values()])


def _step_ms(record, records, model: str, what: str) -> float | None:
    """The side-by-side median step time of `what` (a finalist, or "tap <tap>"), if measured."""
    if record is None:
        return None
    return costs.median_ms(record, cost_configs(records, model)[what])


def compare(records, model: str, variant=MAIN, measured=None) -> list[dict]:
    """One row per finalist on the variant: paired differences against the baseline over the
    pairs both have (UA and worst-group accuracy, 95% t-intervals), Holm-adjusted p across the
    finalist family, the share of the gap closed with its bootstrap interval, the paired
    difference against its placebo, probes, and cost: peak memory counted by the runs, step
    time from `measured`, the costs record (main setting only; None without one)."""
    chosen = {
        name: _on(c, FINAL_PAIRS, variant)[0].replace(seed=0, fold=None)
        for name, c in finalists(records, model).items()
    }
    pairs = {
        name: {k: v for k, v in _matching(records, c).items() if k in FINAL_PAIRS}
        for name, c in chosen.items()
    }
    baseline, ceiling = pairs["baseline"], pairs["ceiling"]
    rows = []
    for name, mine in pairs.items():
        if not mine:
            continue
        method = chosen[name].method if name != "ceiling" else "ceiling"
        row = {
            "finalist": name,
            "configuration": label_of(chosen[name].key_dict(), without=("setup", "model", "seed")),
            "information": chosen[name].information,
            "runs": len(mine),
            "UA": statistics.fmean(_ua(mine).values()),
            "_ua": _ua(mine),
        }
        if name != "baseline" and len(set(mine) & set(baseline)) >= 2:
            both = set(mine) & set(baseline)
            d = stats.paired(_ua({k: mine[k] for k in both}), _ua({k: baseline[k] for k in both}))
            row.update(
                {
                    "UA gain": d.mean,
                    "gain 95% low": d.t_low,
                    "gain 95% high": d.t_high,
                    "p": d.p_value,
                }
            )
            wg_m, wg_b = _ua(mine, "worst_group"), _ua(baseline, "worst_group")
            common = set(wg_m) & set(wg_b)
            if len(common) >= 2:
                w = stats.paired({k: wg_m[k] for k in common}, {k: wg_b[k] for k in common})
                row.update(
                    {"worst-group gain": w.mean, "wg 95% low": w.t_low, "wg 95% high": w.t_high}
                )
            trio = set(mine) & set(baseline) & set(ceiling)
            if name not in ("ceiling",) and len(trio) >= 2:
                g = stats.gap_closed(
                    _ua({k: mine[k] for k in trio}),
                    _ua({k: baseline[k] for k in trio}),
                    _ua({k: ceiling[k] for k in trio}),
                )
                row.update(
                    {"gap closed": g.estimate, "closed 95% low": g.low, "closed 95% high": g.high}
                )
        placebo = pairs.get(f"{name} placebo") or {}
        if placebo and len(set(mine) & set(placebo)) >= 2:
            both = set(mine) & set(placebo)
            p = stats.paired(_ua({k: mine[k] for k in both}), _ua({k: placebo[k] for k in both}))
            row.update(
                {"vs placebo": p.mean, "placebo 95% low": p.t_low, "placebo 95% high": p.t_high,
                 "_placebo p": p.p_value}
            )  # fmt: skip
        by_tap: dict[str, list[float]] = {}
        for r in mine.values():
            for tap, value in r["probe"].get(variant[1], {}).items():
                by_tap.setdefault(tap, []).append(value)
        row["_probes"] = {tap: statistics.fmean(v) for tap, v in by_tap.items()}
        row["probe (penultimate)"] = row["_probes"].get("penultimate")
        row["step time (ms)"] = _step_ms(measured if variant == MAIN else None, records, model,
                                         name)  # fmt: skip
        row["peak memory (MiB)"] = statistics.fmean(
            r["resources"]["peak_memory_bytes"] / 2**20 for r in mine.values()
        )
        shares = [tables.overhead_share(r["timings_s"]) for r in mine.values() if "timings_s" in r]
        row["overhead / training"] = statistics.fmean(shares) if shares else None
        row["_method"] = method
        rows.append(row)
    tested = [r for r in rows if r.get("p") is not None and r["finalist"] != "ceiling"]
    adjusted = stats.holm({r["finalist"]: r["p"] for r in tested}) if tested else {}
    for r in rows:
        r["Holm p"] = adjusted.get(r["finalist"])
    return rows


def layer_sweep(records, model: str, measured=None) -> list[dict]:
    """Per tap: the UA gain of AT over the baseline on SWEEP_PAIRS with its interval, its p
    and Holm-adjusted p across the taps, and the step time (from `measured`, the costs record;
    None without one) and peak memory of AT at that tap."""
    chosen, _ = choose(records, model, "at")
    if chosen is None:
        return []
    baseline = _matching(records, base(model))
    out = []
    for tap in VGG16_TAPS:
        mine = _matching(records, base(model, method="at", tap=tap, beta=chosen.beta))
        both = {k for k in mine if k in baseline and k in SWEEP_PAIRS}
        if len(both) < 2:
            continue
        d = stats.paired(_ua({k: mine[k] for k in both}), _ua({k: baseline[k] for k in both}))
        out.append(
            {
                "tap": tap,
                "runs": len(both),
                "UA gain": d.mean,
                "gain 95% low": d.t_low,
                "gain 95% high": d.t_high,
                "p": d.p_value,
                "step time (ms)": _step_ms(measured, records, model, f"tap {tap}"),
                "peak memory (MiB)": statistics.fmean(
                    mine[k]["resources"]["peak_memory_bytes"] / 2**20 for k in both
                ),
            }
        )
    adjusted = stats.holm([r["p"] for r in out]) if out else []
    for r, p in zip(out, adjusted, strict=True):
        r["Holm p (taps)"] = float(p)  # across the taps swept: 13 chances to gain by luck
    return out


EARLY_TAPS = VGG16_TAPS[:4]  # the first two blocks: the paper's "early layers"


def sweep_verdict(rows: list[dict], model: str) -> str:
    """Where the paper's claim (early layers are the best compromise of gain and cost) holds,
    read from layer_sweep()'s rows: the taps whose gain interval is above 0, and whether an
    early one is among them. Pending until every tap has all of SWEEP_PAIRS."""
    if not rows:
        return f"- {model}: the layer sweep has not run."
    helped = [r for r in rows if r["gain 95% low"] > 0]
    names = ", ".join(r["tap"] for r in helped) or "none"
    best = max(rows, key=lambda r: r["UA gain"])
    lead = (f"- {model}: the best tap by mean gain is {best['tap']} "
            f"({_fmt(best['UA gain'], best['gain 95% low'], best['gain 95% high'])}, "
            f"{_per_step(best)}); ")  # fmt: skip
    complete = sum(r["runs"] >= len(SWEEP_PAIRS) for r in rows)
    if complete < len(VGG16_TAPS):
        return lead + (f"taps with all {len(SWEEP_PAIRS)} pairs: {complete} of {len(VGG16_TAPS)}; "
                       f"taps whose gain has a 95% interval above 0 so far: {names}. Whether "
                       "early layers are the best compromise is pending until every tap has "
                       "run.")  # fmt: skip
    if not helped:
        return lead + (f"no tap's gain has a 95% interval above 0 ({len(rows)} taps swept): "
                       "the sweep does not support the claim that early layers are the best "
                       "compromise, because no layer helps measurably.")  # fmt: skip
    survive = ", ".join(r["tap"] for r in helped if r["Holm p (taps)"] < 0.05) or "none"
    names += f"; of these, after Holm's adjustment across the {len(rows)} taps: {survive}"
    early = [r for r in helped if r["tap"] in EARLY_TAPS]
    if not early:
        return lead + (f"only deeper taps gain with an interval above 0 ({names}): the claim "
                       "that early layers are the best compromise does not hold here.")  # fmt: skip
    if any(r["step time (ms)"] is None for r in early):
        return lead + (f"taps whose gain has an interval above 0: {names}, early ones among "
                       "them; whether an early tap is the best compromise is pending the "
                       "side-by-side step times (`qat demonstration --stages costs`).")  # fmt: skip
    cheapest = min(early, key=lambda r: r["step time (ms)"])
    return lead + (f"taps whose gain has an interval above 0: {names}; the early tap "
                   f"{cheapest['tap']} gains at {_per_step(cheapest)}, so the claim that early "
                   "layers are the best compromise holds.")  # fmt: skip


def _per_step(row: dict) -> str:
    ms = row["step time (ms)"]
    return "step time not measured side by side yet" if ms is None else f"{ms:.0f} ms a step"


PROTOCOL = """## Protocol

Fixed before any result below was seen (qat/demonstration.py):

1. **Selection on validation data only.** Each method runs over its knobs (`KNOBS`) on the
   (seed, fold) pairs {selection}; its finalist is the configuration with the best mean UA on
   the *decorrelated validation set*: group-balanced training-speaker items that no run trains
   on (a group-aware selection, declared as such). The test set selects nothing. DFR tunes C
   inside its balanced set; reweight and subsample have no knobs.
2. **Finalists** (each method's choice, the baseline, the unconfounded ceiling, and the
   random-network placebo of each anti-transfer finalist, same taps and beta) run on the fresh
   pairs {final}, which the selection never saw. Every comparison is paired by (seed, fold).
3. **Reported per finalist:** the mean paired difference in UA and in worst-group accuracy
   against the baseline with 95% t-intervals, Holm-adjusted p across the finalist family, the
   share of the confound gap closed with a paired-bootstrap interval, the paired difference
   against its placebo, the probe, step time and peak memory. Peak memory is counted by each
   run; step times come from one side-by-side measurement of every finalist's and swept
   tap's step, real and quaternion, in interleaved rounds (`qat demonstration --stages
   costs`), because times measured one run at a time under different loads do not compare.
   A target is met only when its interval says so, not met when the interval refutes it,
   and its interval is too wide when it does neither.
4. **The layer sweep:** the published AT at each of the 13 taps at the beta chosen for AT, on
   {sweep}.
5. **Variants:** the finalists on rho 0.95 and on the speaker-confounded split (with the
   speaker network), on the finalists' pairs.
"""


def adjust_placebos(settings: Iterable[list[dict]]) -> int:
    """Holm's adjustment across every anti-transfer-vs-placebo comparison on the page (each
    setting, model and penalty): one placebo beaten among many comparisons is not yet
    invariance. Sets each compared row's "placebo Holm p"; returns the family's size."""
    tested = [r for rows in settings for r in rows if r.get("_placebo p") is not None]
    for r, p in zip(tested, stats.holm([r["_placebo p"] for r in tested]), strict=True):
        r["placebo Holm p"] = float(p)
        r["_placebo family"] = len(tested)
    return len(tested)


def _beats_placebo(r: dict) -> str:
    """Whether a finalist beats its placebo: by its interval, then after the page's Holm
    adjustment across every placebo comparison (adjust_placebos) when it has been made."""
    if r["placebo 95% low"] <= 0:
        return "does not beat it: regularisation, not invariance, cannot be ruled out."
    if r.get("placebo Holm p") is None:
        return "beats it."
    n, p = r["_placebo family"], r["placebo Holm p"]
    if p < 0.05:
        return (f"beats it, also after Holm's adjustment across the {n} placebo comparisons "
                f"on this page (p = {p:.3f}).")  # fmt: skip
    return (f"beats it by its interval alone, not after Holm's adjustment across the {n} "
            f"placebo comparisons on this page (p = {p:.3f}).")  # fmt: skip


def _verdicts(rows: list[dict], who: str) -> list[str]:
    """The short answer for one model: which finalists beat the baseline and their placebo,
    by their intervals."""
    out = []
    by = {r["finalist"]: r for r in rows}
    if "baseline" not in by:
        return [f"- {who}: no baseline runs yet."]
    if not any(r.get("gain 95% low") is not None for r in rows):
        return [f"- {who}: no finalist has 2 runs paired with the baseline yet."]
    fewest = min(r["runs"] for r in rows)
    if len(rows) < FINALISTS or fewest < len(FINAL_PAIRS):
        who += (f" (so far: {len(rows)} of {FINALISTS} finalists have run, the fewest on "
                f"{fewest} of {len(FINAL_PAIRS)} pairs)")  # fmt: skip
    better = [
        r
        for r in rows
        if r.get("gain 95% low") is not None
        and r["gain 95% low"] > 0
        and r["finalist"] not in ("ceiling",)
        and not r["finalist"].endswith("placebo")
    ]
    names = ", ".join(r["finalist"] for r in better) or "none"
    out.append(
        f"- {who}: finalists whose UA gain over the baseline has a 95% interval above 0: {names}."
    )
    for method in PLACEBO_OF:
        r = by.get(method)
        if r and r.get("placebo 95% low") is not None:
            out.append(
                f"- {who}: {method} vs its random-network placebo: "
                f"{r['vs placebo']:+.3f} [{r['placebo 95% low']:+.3f}, "
                f"{r['placebo 95% high']:+.3f}]: {_beats_placebo(r)}"
            )
    return out


AT_VARIANTS = ("at", "cka")  # the anti-transfer penalties, each with its placebo


def headline(rows: list[dict], who: str) -> str:
    """The finding for one model, first on the page: does the best anti-transfer variant (by
    mean UA gain) beat its random-network placebo and the field's best method (by mean UA
    gain), each by a paired 95% interval above 0? If not, that is the finding."""
    gains = [r for r in rows if r["finalist"] in METHODS and r.get("UA gain") is not None]
    at = [r for r in gains if r["finalist"] in AT_VARIANTS]
    field = [r for r in gains if r["finalist"] not in AT_VARIANTS]
    pending = f"- **{who}: anti-transfer against its placebo and the field's methods is pending.**"
    if not at or not field:
        return pending
    a, f = max(at, key=lambda r: r["UA gain"]), max(field, key=lambda r: r["UA gain"])
    both = set(a["_ua"]) & set(f["_ua"])
    if len(both) < 2 or a.get("vs placebo") is None:
        return pending
    d = stats.paired({k: a["_ua"][k] for k in both}, {k: f["_ua"][k] for k in both})
    rivals = {
        "its placebo": a["placebo 95% low"] > 0,
        f"the field's best, {f['finalist']}": d.t_low > 0,
    }
    lost = [name for name, beaten in rivals.items() if not beaten]
    won = [name for name, beaten in rivals.items() if beaten]
    said = []  # what it does not beat leads: that is the finding
    if lost:
        said.append(f"does not beat {' or '.join(lost)}")
    if won:
        said.append(f"beats {' and '.join(won)}")
    finding = f"the best anti-transfer variant, {a['finalist']}, " + "; it ".join(said)
    return (
        f"- **{who}: {finding}.** Paired 95% intervals: {a['finalist']} vs the baseline "
        f"{_fmt(a['UA gain'], a['gain 95% low'], a['gain 95% high'])} UA, vs its placebo "
        f"{_fmt(a['vs placebo'], a['placebo 95% low'], a['placebo 95% high'])}, vs "
        f"{f['finalist']} {_fmt(d.mean, d.t_low, d.t_high)}, which uses {f['information']}."
    )


GAP_TARGET = "best method's share of the real model's gap closed >= 75%, 95% low >= 50%"


def _fmt(value: float, low: float, high: float, spec: str = "+.3f") -> str:
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def _target(target: str, measured: str = "–", met: bool | str | None = None) -> dict:
    """A target's row: `met` is a verdict (stats.verdict), a bool, or None (pending)."""
    verdict = met if isinstance(met, str) else {None: "pending", True: "met", False: "not met"}[met]
    return {"target": target, "measured": measured, "met": verdict}


def _gap_target(rows: list[dict]) -> dict:
    closed = [r for r in rows if r.get("gap closed") is not None]
    if not closed:
        return _target(GAP_TARGET)
    b = max(closed, key=lambda r: r["gap closed"])
    share = _fmt(b["gap closed"], b["closed 95% low"], b["closed 95% high"], ".0%")
    return _target(GAP_TARGET, f"{b['finalist']}: {share}",
                   b["gap closed"] >= 0.75 and b["closed 95% low"] >= 0.5)  # fmt: skip


def _at_target(model: str, rows: list[dict]) -> dict:
    target = f"best anti-transfer variant ({model}) beats the baseline and its placebo"
    at = [r for r in rows if r["finalist"] in AT_VARIANTS and r.get("UA gain") is not None]
    if not at:
        return _target(target)
    b = max(at, key=lambda r: r["UA gain"])
    measured = f"{b['finalist']}: {_fmt(b['UA gain'], b['gain 95% low'], b['gain 95% high'])}"
    if b.get("vs placebo") is None:
        return _target(target, measured + " vs baseline; placebo pending")
    placebo = _fmt(b["vs placebo"], b["placebo 95% low"], b["placebo 95% high"])
    return _target(target, f"{measured} vs baseline; {placebo} vs placebo",
                   b["gain 95% low"] > 0 and b["placebo 95% low"] > 0)  # fmt: skip


def _cost_target(name: str, rows: dict[str, dict], measured=None, steps=None) -> dict:
    """Quaternion against real, each with its own finalist of method `name`. Peak memory is
    counted, so a ratio above 0.20 refutes the target on its own. The step time ratio comes
    only from `measured`, the costs record that timed both steps (`steps`: {model: the
    configuration}) side by side: the geometric mean over rounds of the within-round ratio,
    with its 95% interval. The run records' own step times were timed one configuration at a
    time under different loads, so they never decide."""
    cost = f"quaternion vs real {name}: step time <= 0.25x, peak memory <= 0.20x"
    if any(name not in rows.get(m, {}) for m in MODELS):
        return _target(cost)
    q, r = rows["quaternion"][name], rows["real"][name]
    memory = q["peak memory (MiB)"] / r["peak memory (MiB)"]
    if measured is None:
        measured_text = (f"peak memory {memory:.2f}x; step time pending a side-by-side run "
                         "(`qat demonstration --stages costs`)")  # fmt: skip
        return _target(cost, measured_text, False if memory > 0.20 else None)
    ratio, low, high = costs.time_ratio(measured, steps["quaternion"], steps["real"])
    rounds = measured["config"]["rounds"]
    measured_text = (f"peak memory {memory:.2f}x; step time {_fmt(ratio, low, high, '.2f')}x "
                     f"(side by side, {rounds} rounds)")  # fmt: skip
    return _target(cost, measured_text, False if memory > 0.20 else
                   stats.verdict(low, high, at_most=0.25))  # fmt: skip


def _cost_targets(records, name: str, rows: dict[str, dict], measured=None) -> list[dict]:
    """Quaternion against real, each with its own finalist of method `name`: the cost target,
    and the UA difference paired by (seed, fold)."""
    close = f"quaternion {name} within 0.05 UA of real {name} (95% low >= -0.05)"
    steps = {m: cost_configs(records, m).get(name) for m in MODELS}
    out = [_cost_target(name, rows, measured, steps)]
    if any(name not in rows.get(m, {}) for m in MODELS):
        return [*out, _target(close)]
    pairs = {
        m: {k: v for k, v in _matching(records, finalists(records, m)[name]).items()
            if k in FINAL_PAIRS}
        for m in MODELS
    }  # fmt: skip
    both = set(pairs["real"]) & set(pairs["quaternion"])
    if len(both) < 2:
        return [*out, _target(close)]
    d = stats.paired(_ua({k: pairs["quaternion"][k] for k in both}),
                     _ua({k: pairs["real"][k] for k in both}))  # fmt: skip
    verdict = stats.verdict(d.t_low, d.t_high, at_least=-0.05)
    return [*out, _target(close, _fmt(d.mean, d.t_low, d.t_high), verdict)]


def targets(records, by_model: dict[str, list[dict]], measured=None) -> list[dict]:
    """The issue's targets on the main setting: "met" only when the interval supports it,
    "not met" when it refutes it, stats.WIDE when it does neither, "pending" without runs.
    `by_model`: compare()'s rows per model; `measured`: the costs record of both models'
    steps, if any."""
    methods = {m: {r["finalist"]: r for r in rows if r["finalist"] in METHODS}
               for m, rows in by_model.items()}  # fmt: skip
    out = [_gap_target(list(methods.get("real", {}).values()))]
    out += [_at_target(m, list(rows.values())) for m, rows in methods.items()]
    for name in AT_VARIANTS:
        out += _cost_targets(records, name, methods, measured)
    return out


def costs_line(measured: dict[str, dict | None]) -> str:
    """Where the page's step times come from: per model, the side-by-side record, or not yet."""
    pending = [m for m, r in measured.items() if r is None]
    said = []
    for name in dict.fromkeys(runs.config_key(r["config"]) for r in measured.values() if r):
        record = next(r for r in measured.values() if r and runs.config_key(r["config"]) == name)
        models = " and ".join(m for m, r in measured.items() if r is record)
        load = ", ".join(f"{v:.1f}" for v in record["load_average"])
        said.append(f"{models}: every finalist's and swept tap's training step timed side by "
                    f"side in {record['config']['rounds']} interleaved rounds "
                    f"({record['config']['threads']} thread(s); 1-min load average {load} "
                    f"before and after, on {record['cpus']} CPUs; record costs-{name}), "
                    "medians shown")  # fmt: skip
    if pending:
        said.append(f"{' and '.join(pending)}: not yet timed side by side (`qat demonstration "
                    "--stages costs`), so the tables leave step times out")  # fmt: skip
    return f"- Step times: {'; '.join(said)}."


def grid_time(records, complete: bool = False) -> str:
    """The grid's measured cost (so far, unless `complete`): its SER runs and the RH-emos of
    its splits (the demonstration's seeds, never the instrument's), by the wall times their
    records hold."""
    seeds = {s for s, _ in (*SELECTION_PAIRS, *FINAL_PAIRS)}
    mine = [
        r
        for r in records
        if r.get("kind") in ("ser", "rhemo")
        and r["config"].get("profile") == PROFILE
        and r["config"].get("seed") in seeds
    ]
    hours = sum(r.get("wall_time_s", 0.0) for r in mine) / 3600
    runs_ = sum(r["kind"] == "ser" for r in mine)
    resumed = sum(bool(r.get("resources", {}).get("resumed_from_epoch")) for r in mine)
    partial = (f"; {resumed} run(s) resumed from a checkpoint and count only their last part"
               if resumed else "")  # fmt: skip
    said = "The whole grid" if complete else "Grid so far"
    return (f"- {said}: {runs_} runs and {len(mine) - runs_} RH-emos, {hours:.1f} h of "
            "summed wall time from their records (runs share the 2 cores, so the elapsed "
            f"time is shorter{partial}).")  # fmt: skip


def targets_line(goals: list[dict]) -> str:
    """The targets table in one line: how many are met, and which, by verdict."""
    by: dict[str, list[str]] = {}
    for g in goals:
        by.setdefault(g["met"], []).append(g["target"])
    said = "; ".join(f"{v}: {'; '.join(by[v])}" for v in ("met", stats.WIDE, "not met", "pending")
                     if v in by)  # fmt: skip
    return f"- Targets: {len(by.get('met', []))} of {len(goals)} met ({said})."


def retrained_lines(records) -> list[str]:
    """Per model, the DFR runs whose baseline record came without its network, so DFR refitted
    a network trained again: how far that network's test UA fell from the record's."""
    said = []
    for model in MODELS:
        mine = [r for r in records if r.get("kind") == "ser" and r["config"].get("model") == model
                and r["config"].get("profile") == PROFILE]  # fmt: skip
        again = [r.get("method", {}).get("dfr", {}).get("baseline_network_retrained") for r in mine]
        d = [a["test_ua"] - a["record_test_ua"] for a in again if a]
        if d:
            said.append(f"- {model} DFR: {len(d)} run(s) refitted a baseline network trained "
                        "again (the record came without it; training is not bitwise "
                        "reproducible across machines); that network's test UA minus the "
                        f"record's: mean {statistics.mean(d):+.3f}, range [{min(d):+.3f}, "
                        f"{max(d):+.3f}]. DFR's gain over the baseline record includes "
                        "this.")  # fmt: skip
    return said


def grid_counts(records) -> dict[str, dict[str, tuple[int, int]]]:
    """{model: {stage: (runs with a record, runs planned)}}. A stage whose grid depends on an
    unfinished selection counts against its full size (every method chosen)."""
    done = {RunConfig.from_record(r).key() for r in records if r.get("kind") == "ser"}
    planned = {
        "finalists": FINALISTS * len(FINAL_PAIRS),
        "sweep": (len(VGG16_TAPS) + 2) * len(SWEEP_PAIRS),  # every tap, baseline and ceiling
        "variants": len(VARIANTS) * FINALISTS * len(FINAL_PAIRS),
    }
    counts = {}
    for model in MODELS:
        counts[model] = {}
        for stage, grid_of in GRIDS.items():
            grid = {c.key() for c in grid_of(model, records)}
            counts[model][stage] = len(grid & done), max(len(grid), planned.get(stage, 0))
    return counts


def grid_complete(counts: dict[str, dict[str, tuple[int, int]]]) -> bool:
    return all(done == planned for stages in counts.values() for done, planned in stages.values())


def grid_progress(counts: dict[str, dict[str, tuple[int, int]]]) -> str:
    """One line: runs with a record / planned, per model and stage (from `grid_counts`)."""
    said = [
        f"{model}: " + ", ".join(f"{stage} {d}/{p}" for stage, (d, p) in stages.items())
        for model, stages in counts.items()
    ]
    return f"- Runs with a record / planned: {'; '.join(said)}."


def _save(fig, reports: Path, stem: str, caption: str) -> list[str]:
    io.save_figure(fig, reports / "figures", stem)
    return [f"![{caption}](figures/{stem}.png)", ""]


def _probe_rows(by_model: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {
        m: [{"configuration": r["finalist"], "method": r["_method"], "seeds": r["runs"],
             "probe": r["_probes"]} for r in rows if r["_probes"]]
        for m, rows in by_model.items()
    }  # fmt: skip


# Paired differences and their bounds signed like the gains they bound; shares of the gap
# closed with 3 decimals, like the accuracies they are made of.
FORMATS = {
    **dict.fromkeys(("gain 95% low", "gain 95% high", "wg 95% low", "wg 95% high",
                     "vs placebo", "placebo 95% low", "placebo 95% high"), "+.3f"),
    **dict.fromkeys(("gap closed", "closed 95% low", "closed 95% high"), ".3f"),
}  # fmt: skip


def _table(rows: list[dict]) -> str:
    """A results table in the report's formats (FORMATS, else tables' rule)."""
    shown = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    present = {k for r in shown for k in r}
    return tables.markdown_table(shown, formats={c: f for c, f in FORMATS.items() if c in present})


def _selection_table(records) -> str:
    """Every candidate's score; "finalist" marks each method's choice (none until all its
    candidates have every selection pair)."""
    rows = []
    for m in MODELS:
        for method in METHODS:
            chosen, scored = choose(records, m, method)
            rows += [{
                "model": m,
                "method": method,
                "configuration": label_of(s["config"].key_dict(),
                                          without=("setup", "model", "seed")),
                "pairs": s["pairs"],
                "decorrelated validation UA": s["score"],
                "finalist": "yes" if s["config"] == chosen else "",
            } for s in scored]  # fmt: skip
    return tables.markdown_table(rows)


def write_report(reports=None) -> Path:
    """reports/demonstration.md and its figures, from the run records only: the short answer,
    the protocol, the figures (forest plot per setting, layer sweep), the targets, then the
    tables."""
    reports = Path(reports or paths.REPORTS)
    everything = runs.load_records(reports)
    records = [r for r in everything if r.get("kind") == "ser"]
    answer, figures, body, found = [], [], [], []
    goals: list[dict] = []
    measured = {m: measured_costs(everything, m) for m in MODELS}
    both = measured_costs(everything)
    settings = {
        v: {m: compare(records, m, v, measured[m]) for m in MODELS} for v in (MAIN, *VARIANTS)
    }
    adjust_placebos(rows for by_model in settings.values() for rows in by_model.values())
    for variant, by_model in settings.items():
        name = f"{variant[1]}-confounded, rho {variant[0]:g}"
        if variant == MAIN:
            goals = targets(records, by_model, both)
            found = [headline(rows, f"{m}, {name}") for m, rows in by_model.items() if rows]
        if not any(by_model.values()):
            continue
        stem = f"{variant[1]}_rho{variant[0]:g}"
        if any(r.get("UA gain") is not None for rows in by_model.values() for r in rows):
            figures += [f"### {name}", ""]
            figures += _save(plots.forest(by_model, f"{name}: paired UA difference vs the "
                                          "baseline"),
                             reports, f"demonstration_forest_{stem}", "forest plot")  # fmt: skip
        body += [f"## {name}", ""]
        for model, rows in by_model.items():
            if rows:
                answer += _verdicts(rows, f"{model}, {name}")
                body += [f"### {model} VGG16", "", _table(rows), ""]
        probes = _probe_rows(by_model)
        if any(probes.values()):
            body += _save(plots.probe_profiles(probes, f"{variant[1]} probe"), reports,
                          f"demonstration_probe_{stem}", "probe at every tap")  # fmt: skip
    sweep = {m: layer_sweep(records, m, measured[m]) for m in MODELS}
    if any(sweep.values()):
        figures += ["### The layer sweep", ""]
        figures += _save(
            plots.layer_sweep(sweep, VGG16_TAPS), reports, "demonstration_layers", "layer sweep"
        )
        said = [sweep_verdict(rows, model) for model, rows in sweep.items()]
        answer += said
        body += ["## The layer sweep", "", *said, ""]
        for model, rows in sweep.items():
            body += [f"### {model} VGG16", "", _table(rows), ""]
    body += ["## Selection (decorrelated validation UA, never test)", "",
             _selection_table(records), ""]  # fmt: skip
    pairs = {
        k: ", ".join(f"{s}/{f}" for s, f in v)
        for k, v in (("selection", SELECTION_PAIRS), ("final", FINAL_PAIRS), ("sweep", SWEEP_PAIRS))
    }
    answer = found + (answer or ["- No finalist has run yet."])
    answer += [targets_line(goals)] if goals else []
    counts = grid_counts(records)
    answer += [grid_progress(counts), costs_line(measured)]
    answer += [grid_time(everything, complete=grid_complete(counts))]
    answer += retrained_lines(records)
    lines = ["# Which method removes the word shortcut, and is it invariance?", ""]
    lines += ["## Short answer", "", *answer, "", PROTOCOL.format(**pairs)]
    waiting = ["_No finalist has a paired run against the baseline yet._", ""]
    lines += ["## At a glance", "", *(figures or waiting)]
    lines += ["## Targets (main setting; met only when the 95% interval says so)", "",
              tables.markdown_table(goals), "", *body]  # fmt: skip
    target = reports / "demonstration.md"
    io.write_text(target, "\n".join(lines) + "\n")
    if reports.resolve() == (paths.ROOT / "reports").resolve():
        update_readme_block("demonstration", answer)
    return target


def write_pages(reports=None) -> list[Path]:
    """Every page built from the run records (`qat demonstration --report-only`):
    reports/instrument.md, reports/demonstration.md and reports/README.md (the cpu profile's
    records), with their figures. The same records give the same bytes."""
    from qat import instrument, report

    reports = Path(reports or paths.REPORTS)
    return [
        instrument.write_report(reports),
        write_report(reports),
        report.write_readme(reports, profile=PROFILE),
    ]
