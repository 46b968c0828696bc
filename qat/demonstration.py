"""The demonstration, on the frozen instrument: which method removes the word shortcut, with
intervals, placebos and the robustness field's baselines, in a fair race (issue 34).

Protocol (written into the page before the results):
1. An equal budget. Every method, the baseline included, gets N_DRAWS random draws over its
   learning rate, weight decay and own knobs from one registry (qat.hparams), written before
   any run; every run clips its gradients (hparams.GRAD_CLIP).
2. Selection. The draws run on SELECTION_PAIRS (seed, fold) only; the draw with the best mean
   UA on the decorrelated validation set (group-balanced training-speaker items no run trains
   on) is the method's finalist. The page also shows what worst-group validation accuracy
   would have picked. The test set never selects anything.
3. Each method is trained as its paper trains it: subsample and reweight take the baseline's
   number of optimizer steps, reweight's weights are capped, GroupDRO has strong L2 and keeps
   its best worst-group validation epoch, JTT's first-stage length is drawn, DFR refits on a
   balanced set disjoint from the selection set (qat.experiments, qat.robust).
4. Finalists (each method's choice, the baseline's, the unconfounded ceiling with the
   baseline's draw, and the random-network placebo of at and cka with their draws) run on
   FINAL_PAIRS, fresh pairs; every method is paired with the baseline on the same pair.
5. The layer sweep: AT at every tap with its finalist's other settings, on SWEEP_PAIRS.
6. Variants (rho 0.95, speaker-confounded) on VARIANT_PAIRS: every finalist whose main-setting
   gain interval is above 0, at, cka and their placebos, with the baseline and the ceiling.
7. Costs: every finalist's and every swept tap's training step, timed side by side, in fp32.
Every run reads the instrument its rules adopted: the RH-emo of qat.embedding's decision and
the precision of qat.precision's (qat.config.INSTRUMENT_PRECISION); the race waits for both.
Runs that did not train (qat.experiments.training_failures) are counted per method and kept in
every comparison. Everything on the page comes from run records; `qat demonstration` resumes.
"""

from __future__ import annotations

import functools
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from qat import costs, embedding, hparams, io, paths, plots, precision, robust, runs, stats, tables
from qat.config import (
    INSTRUMENT_ENCODER,
    INSTRUMENT_PRECISION,
    INSTRUMENT_UPSTREAM,
    RunConfig,
    label_of,
)
from qat.experiments import (
    CHANCE_LOSS_MARGIN,
    CHANCE_UA_FACTOR,
    DFR_PER_GROUP,
    ONE_CLASS_SHARE,
    SELECTION_PER_GROUP,
    run_configs,
    training_verdict,
)
from qat.models import VGG16_TAPS
from qat.report import update_readme_block

PROFILE = "cpu"
MODELS = ("real", "quaternion")
SELECTION_PAIRS = ((100, 0), (101, 1))
# Seeds no earlier record uses (the first demonstration's finalists ran on 200-204).
FINAL_PAIRS = ((400, 0), (401, 1), (402, 2), (403, 3), (404, 0), (405, 1), (406, 2), (407, 3))
VARIANT_PAIRS = FINAL_PAIRS[:5]
SWEEP_PAIRS = FINAL_PAIRS[:3]
MAIN = (0.9, "word")  # (rho, factor)
VARIANTS = ((0.95, "word"), (0.9, "speaker"))
METHODS = ("at", "cka", "dann", "cdann", "reweight", "subsample", "groupdro", "jtt", "dfr")
RACERS = ("baseline", *METHODS)  # every method that gets the draws
PLACEBO_OF = ("at", "cka")  # finalists that get a random-network placebo
FINALISTS = 2 + len(METHODS) + len(PLACEBO_OF)  # with the baseline and the ceiling
# In every variant, whatever the main setting showed: the controls, anti-transfer, its placebos.
ALWAYS_IN_VARIANTS = ("baseline", "ceiling", "at", "at placebo", "cka", "cka placebo")
# Finalists that train with the baseline's step: the group methods only reweight (or subsample)
# the per-item loss, DFR refits the baseline's last layer, the ceiling changes the data only.
BASELINE_STEP = ("ceiling", "reweight", "subsample", "groupdro", "jtt", "dfr")
COST_PAIR = FINAL_PAIRS[0]  # the (seed, fold) whose split and upstream networks the costs use
RULES = {"ua": "decorrelated validation UA", "worst_group": "worst-group validation accuracy"}


def base(model: str, variant=MAIN, **changes) -> RunConfig:
    """The demonstration's configuration of `model` on a variant (the word-confounded split by
    default), with `changes` (method, knobs, setup, seed, fold...)."""
    rho, factor = variant
    settings = dict(profile=PROFILE, setup="confounded", model=model, rho=rho, factor=factor,
                    orthogonal=factor, upstream=INSTRUMENT_UPSTREAM,
                    precision=INSTRUMENT_PRECISION[model])  # fmt: skip
    if model == "quaternion":  # the instrument's quaternion pipeline
        settings["rhemo_encoder"] = INSTRUMENT_ENCODER
    return RunConfig(**{**settings, **changes})


def candidate(model: str, method: str, index: int) -> RunConfig:
    """Draw `index` of `method` (qat.hparams) on `model`, without seed and fold."""
    return base(model, method=method, **hparams.settings(method, index))


@functools.cache
def candidates(model: str, method: str) -> tuple[RunConfig, ...]:
    return tuple(candidate(model, method, i) for i in range(hparams.N_DRAWS))


def selection_grid(model: str) -> list[RunConfig]:
    return list(_selection_grid(model))


@functools.cache
def _selection_grid(model: str) -> tuple[RunConfig, ...]:
    return tuple(
        c.replace(seed=s, fold=f)
        for method in RACERS
        for c in candidates(model, method)
        for s, f in SELECTION_PAIRS
    )


def _matching(records, config: RunConfig) -> dict[tuple, dict]:
    """{(seed, fold): record} of a configuration (one record per pair: a forced rerun written
    beside a record is not a new pair)."""
    key = (config.method, config.replace(seed=0, fold=None).key())
    return dict(_index(records).get(key, {}))


_INDEX: dict = {}  # the last index built, with what it was built from


def _index(records) -> dict[tuple[str, str], dict[tuple, dict]]:
    """{(method, setting key): {(seed, fold): record}} of the SER records, the first record of
    each pair. The page matches every record against every draw and finalist many times, so
    the index is kept while the list holds the same record objects with the same config
    objects; it pins them, so no id is reused while it stands. A record given another config
    is matched by its new content."""
    pinned = tuple((r, r.get("config")) for r in records)
    fingerprint = tuple((id(r), id(c)) for r, c in pinned)
    if _INDEX.get("fingerprint") != fingerprint:
        index: dict[tuple[str, str], dict[tuple, dict]] = {}
        for r, c in pinned:
            if r.get("kind") != "ser" or not isinstance(c, dict) or not c.get("method"):
                continue
            setting, pair = _setting(json.dumps(c, sort_keys=True, default=str))
            index.setdefault((c["method"], setting), {}).setdefault(pair, r)
        _INDEX.update(fingerprint=fingerprint, pinned=pinned, index=index, memo={})
    return _INDEX["index"]


def _memoised(function):
    """`function(records, *args)` computed once per set of records (while _index keeps its
    index): the page asks for each model's finalists and grids many times."""

    @functools.wraps(function)
    def wrapper(records, *args):
        _index(records)
        memo = _INDEX["memo"]
        key = (function.__name__, *args)
        if key not in memo:
            memo[key] = function(records, *args)
        return memo[key]

    return wrapper


@functools.lru_cache(maxsize=16384)
def _setting(config: str) -> tuple[str, tuple]:
    """A record's configuration (as JSON) without its pair, and its (seed, fold); cached on
    the content."""
    run = RunConfig.from_record(json.loads(config))
    return run.replace(seed=0, fold=None).key(), (run.seed, run.fold)


def _record_of(records, config: RunConfig) -> dict | None:
    """The record of one run (a configuration with its seed and fold), if any."""
    return _matching(records, config).get((config.seed, config.fold))


@_memoised
def choose(records, model: str, method: str, rule: str = "ua") -> tuple[RunConfig, list[dict]]:
    """The method's finalist: the draw with the best mean score over SELECTION_PAIRS on the
    decorrelated validation set, by `rule` (RULES: "ua", the declared rule; "worst_group", shown
    beside it), ties to the first draw; None until every draw has every pair. And every draw's
    scores."""
    scored = []
    for i, config in enumerate(candidates(model, method)):
        pairs = _matching(records, config)
        done = [pairs[p] for p in SELECTION_PAIRS if p in pairs]
        complete = len(done) == len(SELECTION_PAIRS)
        scores = {name: [r.get("selection_set", {}).get(name) for r in done] for name in RULES}
        scored.append(
            {
                "config": config,
                "draw": i,
                "pairs": len(done),
                "did not train": sum(bool(training_verdict(r)) for r in done),
                **{name: statistics.fmean(v) if complete and None not in v else None
                   for name, v in scores.items()},
            }
        )  # fmt: skip
    if any(s[rule] is None for s in scored):
        return None, scored
    return max(scored, key=lambda s: s[rule])["config"], scored


@_memoised
def finalists(records, model: str) -> dict[str, RunConfig]:
    """{name: configuration without seed and fold}: the baseline's choice, the ceiling (that
    draw on the unconfounded split), each method's choice and the placebos of at and cka
    (only where the selection is complete)."""
    out = {}
    for method in RACERS:
        chosen, _ = choose(records, model, method)
        if chosen is None:
            continue
        out[method] = chosen
        if method == "baseline":
            out["ceiling"] = chosen.replace(setup="unconfounded")
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
    chosen = finalists(records, model)
    if "at" not in chosen:
        return []
    taps = [chosen["at"].replace(tap=(t,)) for t in VGG16_TAPS]
    controls = [chosen[n] for n in ("baseline", "ceiling") if n in chosen]
    return [c for t in (*taps, *controls) for c in _on(t, SWEEP_PAIRS)]


def finals_complete(records, model: str) -> bool:
    """Every finalist has a record on every one of FINAL_PAIRS."""
    chosen = finalists(records, model)
    return len(chosen) == FINALISTS and all(
        set(FINAL_PAIRS) <= set(_matching(records, c)) for c in chosen.values()
    )


@_memoised
def variant_members(records, model: str) -> dict[str, RunConfig]:
    """The finalists that run on the variants: ALWAYS_IN_VARIANTS, and, once every finalist has
    all FINAL_PAIRS, every one whose main-setting UA gain interval is above 0."""
    chosen = finalists(records, model)
    names = set(ALWAYS_IN_VARIANTS)
    if finals_complete(records, model):
        names |= {r["finalist"] for r in compare(records, model) if _gains(r)}
    return {n: c for n, c in chosen.items() if n in names}


def _gains(row: dict) -> bool:
    """A finalist's UA gain over the baseline has a 95% interval above 0."""
    return row.get("gain 95% low") is not None and row["gain 95% low"] > 0


def variant_grid(model: str, records) -> list[RunConfig]:
    members = variant_members(records, model).values()
    return [c for v in VARIANTS for f in members for c in _on(f, VARIANT_PAIRS, v)]


# The stages in order, each with its grid of one model (from the records so far).
GRIDS = {
    "selection": lambda model, _: selection_grid(model),
    "finalists": final_grid,
    "sweep": sweep_grid,
    "variants": variant_grid,
}
STAGES = (*GRIDS, "costs")


@_memoised
def cost_configs(records, model: str) -> dict[str, RunConfig]:
    """{what: configuration} whose training step the costs stage times, on COST_PAIR: each
    finalist by name (a placebo's step is its method's, BASELINE_STEP's the baseline's) and
    each swept tap ("tap conv1_1"), in fp32 whatever precision the runs trained at: the
    quaternion/real step ratio is the paper's cost claim."""
    chosen = finalists(records, model)
    steps = {}
    for name in chosen:
        own = "baseline" if name in BASELINE_STEP else name.removesuffix(" placebo")
        if own in chosen:
            steps[name] = chosen[own]
    if "at" in chosen:
        steps |= {f"tap {t}": chosen["at"].replace(tap=(t,)) for t in VGG16_TAPS}
    return {name: _on(c, (COST_PAIR,))[0].replace(precision="fp32") for name, c in steps.items()}


def run(models=MODELS, jobs: int = 2, stages: Sequence[str] = STAGES, engine=None) -> None:
    """The stages in order; runs whose record exists are skipped, so this resumes. Each stage
    reads the records the previous ones wrote. The costs stage times the steps of `models`
    side by side in this process (`jobs` and `engine`, a qat.sweep.Engine, do not apply)."""
    everything = runs.load_records()
    problem = embedding.instrument_problem(everything) or precision.instrument_problem(everything)
    if problem:  # the race runs on the instrument its rules adopted, and no other
        raise ValueError(f"qat demonstration: the fair race waits for the instrument: {problem}")
    for stage in stages:
        records = runs.load_records(kind="ser")
        if stage == "costs":
            costs.run([c for m in models for c in cost_configs(records, m).values()])
            continue
        for model in models:
            grid = GRIDS[stage](model, records)
            run_configs(grid, jobs=jobs, desc=f"demonstration {stage}, {model}", engine=engine)


# ---------------------------------------------------------------- the analysis


def _ua(pairs: dict[tuple, dict], metric: str = "ua") -> dict[tuple, float]:
    if metric == "worst_group":
        return {k: r["groups"]["worst_group"] for k, r in pairs.items() if r.get("groups")}
    return {k: r["metrics"][metric] for k, r in pairs.items()}


def measured_costs(everything, model: str | None = None):
    """The costs record that timed every step the page needs side by side (of `model`, else of
    both models), or None."""
    records = [r for r in everything if r.get("kind") == "ser"]
    steps = {m: list(cost_configs(records, m).values()) for m in (MODELS if model is None
                                                                  else (model,))}  # fmt: skip
    if not all(steps.values()):  # a model with nothing chosen yet has nothing timed
        return None
    return costs.find(everything, [c for configs in steps.values() for c in configs])


def _step_ms(record, records, model: str, what: str) -> float | None:
    """The side-by-side median step time of `what` (a finalist, or "tap <tap>"), if measured."""
    config = cost_configs(records, model).get(what)
    if record is None or config is None:
        return None
    return costs.median_ms(record, config)


def compare(records, model: str, variant=MAIN, measured=None) -> list[dict]:
    """One row per finalist on the variant, over ALL its runs (a run that did not train stays
    in, and is counted): paired differences against the baseline over the pairs both have (UA
    and worst-group accuracy, 95% t-intervals), Holm-adjusted p across the finalist family, the
    share of the gap closed with Fieller's interval, the paired difference against its
    placebo, probes, and cost: peak memory counted by the runs, step time from `measured`, the
    costs record (main setting only; None without one)."""
    chosen = {
        name: _on(c, FINAL_PAIRS, variant)[0].replace(seed=0, fold=None)
        for name, c in finalists(records, model).items()
    }
    pairs = {
        name: {k: v for k, v in _matching(records, c).items() if k in FINAL_PAIRS}
        for name, c in chosen.items()
    }
    baseline, ceiling = pairs.get("baseline", {}), pairs.get("ceiling", {})
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
            "did not train": sum(bool(training_verdict(r)) for r in mine.values()),
            "UA": statistics.fmean(_ua(mine).values()),
            "_ua": _ua(mine),
        }
        if name != "baseline" and len(set(mine) & set(baseline)) >= 2:
            row.update(_against_baseline(name, mine, baseline, ceiling))
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
        row["_runs"] = mine
        rows.append(row)
    tested = [r for r in rows if r.get("p") is not None and r["finalist"] != "ceiling"]
    adjusted = stats.holm({r["finalist"]: r["p"] for r in tested}) if tested else {}
    for r in rows:
        r["Holm p"] = adjusted.get(r["finalist"])
    return rows


def _against_baseline(name: str, mine: dict, baseline: dict, ceiling: dict) -> dict:
    """A finalist's paired differences against the baseline (UA, worst-group accuracy) and its
    share of the gap closed (Fieller), on the pairs they share."""
    both = set(mine) & set(baseline)
    d = stats.paired(_ua({k: mine[k] for k in both}), _ua({k: baseline[k] for k in both}))
    out = {"UA gain": d.mean, "gain 95% low": d.t_low, "gain 95% high": d.t_high, "p": d.p_value}
    wg_m, wg_b = _ua(mine, "worst_group"), _ua(baseline, "worst_group")
    common = set(wg_m) & set(wg_b)
    if len(common) >= 2:
        w = stats.paired({k: wg_m[k] for k in common}, {k: wg_b[k] for k in common})
        out.update({"worst-group gain": w.mean, "wg 95% low": w.t_low, "wg 95% high": w.t_high})
    trio = set(mine) & set(baseline) & set(ceiling)
    if name != "ceiling" and len(trio) >= 2:
        g = stats.gap_closed_fieller(
            _ua({k: mine[k] for k in trio}),
            _ua({k: baseline[k] for k in trio}),
            _ua({k: ceiling[k] for k in trio}),
        )
        out.update({"gap closed": g.estimate, "closed 95% low": g.low, "closed 95% high": g.high})
    return out


def layer_sweep(records, model: str, measured=None) -> list[dict]:
    """Per tap: the UA gain of AT (its finalist, at that tap) over the baseline's finalist on
    SWEEP_PAIRS with its interval, its p and Holm-adjusted p across the taps, and the step
    time (from `measured`, the costs record; None without one) and peak memory of AT at that
    tap."""
    chosen = finalists(records, model)
    if "at" not in chosen or "baseline" not in chosen:
        return []
    baseline = _matching(records, chosen["baseline"])
    out = []
    for tap in VGG16_TAPS:
        mine = _matching(records, chosen["at"].replace(tap=(tap,)))
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


def _pairs_text(pairs) -> str:
    return ", ".join(f"{s}/{f}" for s, f in pairs)


def _variants_text() -> str:
    return "; ".join(f"{factor}-confounded, rho {rho:g}" for rho, factor in VARIANTS)


def protocol(records) -> list[str]:
    """The protocol section: the rules, fixed before any run (this module, qat.hparams,
    qat.experiments, qat.robust), with the registry's ranges; the groups' count is the
    records'."""
    n_groups = sorted({r["groups"]["n_groups"] for r in records if r.get("kind") == "ser"
                       and (r.get("groups") or {}).get("n_groups")})  # fmt: skip
    counted = (f" ({' or '.join(map(str, n_groups))} on these records)" if n_groups
               else " (no record yet)")  # fmt: skip
    lines = ["## Protocol", "", "Fixed before any run below (qat/demonstration.py, qat/hparams.py, "
             "qat/experiments.py, qat/robust.py):", "",
             f"1. **An equal budget.** Every method, the baseline included, gets "
             f"{hparams.N_DRAWS} random draws over its learning rate, weight decay and own "
             "knobs, from the ranges below (one registry, `qat.hparams`; draw i of a method "
             "comes from a generator seeded by (method, i)). Every run clips its gradients' "
             f"global norm at {hparams.GRAD_CLIP:g}.",
             f"2. **Selection on validation data only**, on the (seed, fold) pairs "
             f"{_pairs_text(SELECTION_PAIRS)}, for each model: a method's finalist is its draw "
             "with the best mean UA on the *decorrelated validation set* (up to "
             f"{SELECTION_PER_GROUP} training-speaker items of each group that no run trains "
             "on: a group-aware selection, declared as such; ties go to the first draw). "
             "Beside it the page shows the draw that worst-group validation accuracy would "
             "have picked. The test set selects nothing.",
             "3. **Each method trained as its paper trains it.** subsample and reweight take "
             "the baseline's number of optimizer steps, not its epochs (whole epochs: the "
             "closest count, so the one-cycle schedule and the weight average run as long); "
             f"reweight's per-item weights are capped at {robust.REWEIGHT_CAP:g}x the mean "
             "uncapped weight; GroupDRO draws a strong L2 (its own weight-decay range) and "
             "keeps its epoch with the best worst-group validation accuracy (Sagawa et al.); "
             "JTT's first-stage length T is drawn; DFR refits the baseline's last layer (its "
             "draw's learning rate and weight decay train that baseline) on up to "
             f"{DFR_PER_GROUP} held-out items of each group, none of them in the "
             "decorrelated validation set, and tunes its C inside on half of them.",
             "4. **Groups** are (emotion, the emotion whose training words, or speakers on the "
             "speaker-confounded split, the item's word or speaker belongs to): E x E groups "
             f"for E emotions{counted}, congruent on the diagonal. Sagawa et al., JTT and DFR "
             "group by (label, spurious attribute) with a binary attribute; here the attribute "
             "is the word (or speaker), and the kit groups by the emotion it predicts: a group "
             "per (emotion, word) would split every group by the words it holds, leaving a "
             "few items each.",
             "5. **A run that did not train** is detected once "
             "(`qat.experiments.training_failures`): its final training loss within "
             f"{CHANCE_LOSS_MARGIN:g} of ln K, or at least {ONE_CLASS_SHARE:.0%} of its test "
             f"predictions in one class, or its test UA below {CHANCE_UA_FACTOR:g}/K. Its "
             "record says `trained: false` and why; it is counted per method and stays in "
             "every comparison.",
             f"6. **Finalists** (each method's choice, the baseline's, the ceiling: the "
             "baseline's draw on the unconfounded split, and the random-network placebo of at "
             "and cka with their draws) run on the fresh pairs "
             f"{_pairs_text(FINAL_PAIRS)}, which the selection never saw. Every comparison is "
             "paired by (seed, fold) and uses every run.",
             "7. **Reported per finalist:** the mean paired difference in UA and in worst-group "
             "accuracy against the baseline with 95% t-intervals, Holm-adjusted p across the "
             "finalist family, the share of the confound gap closed with Fieller's interval "
             "(exact for normal pairs at any count, where a bootstrap over few pairs has few "
             "distinct resamples), the paired difference against its placebo (Holm-adjusted "
             "across every placebo comparison on the page), the probe, step time (one "
             "side-by-side measurement, `qat demonstration --stages costs`) and peak memory. A "
             "target is met only when its interval says so, not met when the interval refutes "
             "it, and its interval is too wide when it does neither.",
             f"8. **The layer sweep:** AT's finalist at each of the {len(VGG16_TAPS)} taps, on "
             f"{_pairs_text(SWEEP_PAIRS)}.",
             f"9. **Variants** ({_variants_text()}, each with its own network) "
             f"on {_pairs_text(VARIANT_PAIRS)}: every finalist whose main-setting UA gain "
             "interval is above 0, at, cka and their placebos, with the baseline and the ceiling.",
             "", "The registry (`qat.hparams`):", "",
             tables.markdown_table(hparams.describe()), ""]  # fmt: skip
    return lines


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


MAIN_PLAN = (FINALISTS, len(FINAL_PAIRS))  # the main setting's finalists and pairs


def _verdicts(rows: list[dict], who: str, planned=MAIN_PLAN) -> list[str]:
    """The short answer for one model: which finalists beat the baseline and their placebo,
    by their intervals. `planned`: (finalists, pairs) the setting should have."""
    out = []
    by = {r["finalist"]: r for r in rows}
    if "baseline" not in by:
        return [f"- {who}: no baseline runs yet."]
    if not any(r.get("gain 95% low") is not None for r in rows):
        return [f"- {who}: no finalist has 2 runs paired with the baseline yet."]
    fewest, (n_finalists, n_pairs) = min(r["runs"] for r in rows), planned
    if len(rows) < n_finalists or fewest < n_pairs:
        who += (f" (so far: {len(rows)} of {n_finalists} finalists have run, the fewest on "
                f"{fewest} of {n_pairs} pairs)")  # fmt: skip
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
    out = [_gap_target(list(methods.get("real", {}).values())), _trained_target(records)]
    out += [_at_target(m, list(rows.values())) for m, rows in methods.items()]
    for name in AT_VARIANTS:
        out += _cost_targets(records, name, methods, measured)
    return out


TRAINED_TARGET = "0 runs that did not train among the finalists (main setting, both models)"


def _trained_target(records) -> dict:
    """Met when every finalist of both models has every fresh pair and none failed; not met
    as soon as one failed; pending otherwise."""
    counts = {m: failure_counts(records, m) for m in MODELS}
    failed = {m: sum(c["finalists"][0] for c in by.values()) for m, by in counts.items()}
    ran = {m: sum(c["finalists"][1] for c in by.values()) for m, by in counts.items()}
    measured = "; ".join(f"{m}: {failed[m]} of {ran[m]}" for m in MODELS)
    if any(failed.values()):
        return _target(TRAINED_TARGET, measured, False)
    complete = all(finals_complete(records, m) for m in MODELS)
    return _target(TRAINED_TARGET, measured, True if complete else None)


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
    """The grid's measured cost (so far, unless `complete`): its SER runs and the RH-emos
    they read, by the wall times their records hold."""
    seeds = {s for s, _ in (*SELECTION_PAIRS, *FINAL_PAIRS)}
    ser = [r for r in records if r.get("kind") == "ser" and r["config"].get("profile") == PROFILE
           and r["config"].get("seed") in seeds]  # fmt: skip
    read = {((r.get("upstream_weights") or {}).get("rhemo") or {}).get("record") for r in ser}
    mine = [*ser, *(r for r in records if r.get("kind") == "rhemo"
                    and tables.record_id(r) in read)]  # fmt: skip
    hours = {kind: sum(r.get("wall_time_s", 0.0) for r in mine if r["kind"] == kind) / 3600
             for kind in ("ser", "rhemo")}  # fmt: skip
    runs_ = sum(r["kind"] == "ser" for r in mine)
    resumed = sum(bool(r.get("resources", {}).get("resumed_from_epoch")) for r in mine)
    partial = (f"; {resumed} run(s) resumed from a checkpoint and count only their last part"
               if resumed else "")  # fmt: skip
    said = "The whole grid" if complete else "Grid so far"
    # RH-emos are trained once per split and shared, possibly with an earlier grid's runs.
    return (f"- {said}: {runs_} runs, {hours['ser']:.1f} h of summed wall time from their "
            f"records, and the {len(mine) - runs_} RH-emos of their splits, "
            f"{hours['rhemo']:.1f} h (runs share the 2 cores, so the elapsed time is "
            f"shorter{partial}).")  # fmt: skip


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
    unfinished stage counts against its least size (every method chosen; the variants with
    ALWAYS_IN_VARIANTS only, until the main setting's gains are known)."""
    done = {RunConfig.from_record(r).key() for r in records if r.get("kind") == "ser"}
    planned = {
        "finalists": FINALISTS * len(FINAL_PAIRS),
        "sweep": (len(VGG16_TAPS) + 2) * len(SWEEP_PAIRS),  # every tap, baseline and ceiling
        # at least: more once the main setting's gains are known
        "variants": len(VARIANTS) * len(ALWAYS_IN_VARIANTS) * len(VARIANT_PAIRS),
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


def _selection_rows(records) -> list[dict]:
    """Every draw's scores; "finalist" marks each method's choice by the declared rule (none
    until all its draws have every selection pair), "worst-group pick" the draw worst-group
    validation accuracy would have chosen."""
    rows = []
    for m in MODELS:
        for method in RACERS:
            chosen, scored = choose(records, m, method)
            by_worst, _ = choose(records, m, method, "worst_group")
            rows += [{
                "model": m,
                "method": method,
                "draw": s["draw"],
                "configuration": label_of(s["config"].key_dict(),
                                          without=("setup", "model", "seed")),
                "pairs": s["pairs"],
                "did not train": s["did not train"],
                RULES["ua"]: s["ua"],
                RULES["worst_group"]: s["worst_group"],
                "finalist": "yes" if s["config"] == chosen else "",
                "worst-group pick": "yes" if s["config"] == by_worst else "",
            } for s in scored]  # fmt: skip
    return rows


def _selection_table(records) -> str:
    return tables.markdown_table(_selection_rows(records))


def selection_summary(records) -> list[dict]:
    """Per model and method: the draw the declared rule chose, the one worst-group validation
    accuracy would have chosen, and whether they agree (pending until the draws are done)."""
    rows = []
    for m in MODELS:
        for method in RACERS:
            picks = [choose(records, m, method, rule)[0] for rule in RULES]
            draws = [None if c is None else candidates(m, method).index(c) for c in picks]
            rows.append({"model": m, "method": method,
                         f"chosen ({RULES['ua']})": draws[0],
                         f"{RULES['worst_group']} would pick": draws[1],
                         "same draw": None if None in draws else draws[0] == draws[1]})  # fmt: skip
    return rows


# ---------------------------------------------------------------- what each method used


@_memoised
def _stage_runs(records, model: str) -> dict[str, dict[str, list[dict]]]:
    """{stage: {finalist or method name: its records on that stage's grid}}: the selection's
    draws by method, the finalists and the variants by finalist, the sweep's taps as "at"."""
    names = {c.key(): n for n, c in finalists(records, model).items()}
    out: dict[str, dict[str, list[dict]]] = {}
    for stage, grid_of in GRIDS.items():
        found = out.setdefault(stage, {})
        for c in grid_of(model, records):
            record = _record_of(records, c)
            if record is None:
                continue
            main = _on(c, (FINAL_PAIRS[0],))[0].replace(seed=0, fold=None)  # back to MAIN
            name = c.method if stage == "selection" else names.get(main.key(), c.method)
            found.setdefault(name, []).append(record)
    return out


def failure_counts(records, model: str) -> dict[str, dict[str, tuple[int, int]]]:
    """{name: {stage: (runs that did not train, runs)}} of one model: the selection's draws by
    method, the finalists and variants by finalist, the sweep's taps as "at"."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for stage, by_name in _stage_runs(records, model).items():
        for name, mine in by_name.items():
            failed = sum(bool(training_verdict(r)) for r in mine)
            out.setdefault(name, {s: (0, 0) for s in GRIDS})[stage] = (failed, len(mine))
    return out


def failure_rows(records) -> list[dict]:
    """The page's table of runs that did not train: per model and name, "failed of runs" per
    stage, and the reasons' kinds (qat.experiments.training_failures) with their counts."""
    rows = []
    for m in MODELS:
        stages = _stage_runs(records, m)
        for name, by_stage in failure_counts(records, m).items():
            why: dict[str, int] = {}
            for mine in stages.values():
                for r in mine.get(name, []):
                    for reason in training_verdict(r):
                        kind = _reason_kind(reason)
                        why[kind] = why.get(kind, 0) + 1
            rows.append({"model": m, "name": name,
                         **{s: f"{f} of {n}" if n else "–" for s, (f, n) in by_stage.items()},
                         "why": "; ".join(f"{k}: {v}" for k, v in why.items()) or "–"})  # fmt: skip
    return rows


def _reason_kind(reason: str) -> str:
    for kind in ("training loss", "test predictions", "test UA"):
        if kind in reason:
            return kind
    return reason


def failures_line(records) -> str:
    """The short answer's count of runs that did not train, per model and stage, naming the
    methods they belong to."""
    said = []
    for m in MODELS:
        counts = failure_counts(records, m)
        parts = []
        for stage in GRIDS:
            failed = {n: c[stage][0] for n, c in counts.items() if c[stage][0]}
            total = sum(c[stage][1] for c in counts.values())
            if total:
                named = f" ({', '.join(f'{n} {k}' for n, k in failed.items())})" if failed else ""
                parts.append(f"{stage} {sum(failed.values())} of {total}{named}")
        said.append(f"{m}: {', '.join(parts) or 'no runs yet'}")
    return f"- Runs that did not train (kept in every comparison): {'; '.join(said)}."


def _mean_count(values: list) -> str:
    """A count over a finalist's runs: the value, or the mean and range when runs differ."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    low, high = min(values), max(values)
    if low == high:
        return f"{low:g}"
    return f"{statistics.fmean(values):.0f} ({low:g}-{high:g})"


def _labels_cell(used: list[dict], kind: str) -> str:
    """One kind of label over a finalist's runs: "source count" per source, and what the labels
    are where the record says (the orthogonal corpus's)."""
    parts = [u.get(kind) or {} for u in used]
    sources = dict.fromkeys(s for p in parts for s in p if s != "labels")
    text = "; ".join(f"{s} {_mean_count([p.get(s) for p in parts])}" for s in sources)
    labels = next((p["labels"] for p in parts if "labels" in p), None)
    return text + (f" ({labels})" if labels else "")


def labelled_rows(rows_by_model: dict[str, list[dict]]) -> list[dict]:
    """Per model and finalist, from its main-setting records: the labelled items it used, by
    label and source (qat.experiments.labelled_data), each as the value over its runs."""
    out = []
    for m, rows in rows_by_model.items():
        for row in rows:
            used = [r.get("labelled_data") or {} for r in row["_runs"].values()]
            kinds = dict.fromkeys(k for u in used for k in u)
            other = "; ".join(f"{k}: {_labels_cell(used, k)}" for k in kinds
                              if k not in ("emotion", "group"))  # fmt: skip
            recorded = any(used)
            out.append({
                "model": m,
                "finalist": row["finalist"],
                "information": row["information"],
                "emotion labels": _labels_cell(used, "emotion") if recorded else "not recorded",
                "group labels": (_labels_cell(used, "group") or "none") if recorded
                else "not recorded",
                "other labels": other or "–",
            })  # fmt: skip
    return out


# What the page reads from each method's records about how it trained (qat.experiments).
TRAINING_KEYS = {
    "subsample": ("train_items", "epochs", "steps", "baseline_steps"),
    "reweight": ("epochs", "steps", "baseline_steps", "cap", "largest_weight_uncapped",
                 "items_capped"),
    "jtt": ("upweighted",),
    "dfr": ("held_out_items", "shared_with_selection_set", "C"),
}  # fmt: skip


def training_rows(rows_by_model: dict[str, list[dict]]) -> list[dict]:
    """Per model and finalist with something to say: how it trained, from its main-setting
    records (epochs and optimizer steps against the baseline's, reweight's cap and largest
    uncapped weight, JTT's error set, DFR's refit set and its overlap with the selection set,
    GroupDRO's kept epoch)."""
    out = []
    for m, rows in rows_by_model.items():
        for row in rows:
            method, mine = row["_method"], list(row["_runs"].values())
            info = [(r.get("method") or {}).get(method) or {} for r in mine]
            said = {k: _mean_count([i.get(k) for i in info]) for k in TRAINING_KEYS.get(method, ())}
            if method == "groupdro":
                said["kept epoch"] = _mean_count([r.get("best_epoch") for r in mine])
            if method == "jtt":
                said["T"] = _mean_count([r["config"].get("jtt_epochs") for r in mine])
            if said:
                text = "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in said.items())
                out.append({"model": m, "finalist": row["finalist"], "how it trained": text})
    return out


# ---------------------------------------------------------------- what to use, and when

# What a researcher has, beyond the emotion labels, and which methods that allows (each
# method's regime: qat.config.REGIMES). Group labels for validation allow what needs none;
# group labels in training allow everything but the orthogonal corpus's methods.
USE_REGIMES = (
    ("No group labels", ("jtt",)),
    ("Group labels for validation only", ("jtt", "dfr")),
    ("Group labels in training", ("jtt", "dfr", "reweight", "subsample", "groupdro", "dann",
                                  "cdann")),
    ("A separate orthogonal corpus (no group labels)", ("jtt", "at", "cka")),
)  # fmt: skip


def _advice(rows: list[dict], allowed: Sequence[str]) -> str:
    """For one model and regime: the allowed finalist with the highest mean UA gain among those
    whose gain interval is above 0 (at and cka must also beat their placebo by its interval),
    with its gain and share of the gap closed; else the baseline. Pending until the baseline
    and every allowed finalist have all FINAL_PAIRS."""
    by = {r["finalist"]: r for r in rows}
    wanted = ["baseline", *allowed, *(f"{m} placebo" for m in allowed if m in PLACEBO_OF)]
    short = [n for n in wanted if by.get(n, {}).get("runs", 0) < len(FINAL_PAIRS)]
    if short:
        return f"pending ({', '.join(short)} not on all {len(FINAL_PAIRS)} fresh pairs yet)"
    ok = [by[n] for n in allowed if _gains(by[n]) and (
        n not in PLACEBO_OF or by[n].get("placebo 95% low", 0) > 0)]  # fmt: skip
    if not ok:
        best = max((by[n] for n in allowed), key=lambda r: r["UA gain"])
        return ("nothing allowed beats the baseline measurably (best by mean: "
                f"{best['finalist']} {_gain(best)}): use the baseline")  # fmt: skip
    r = max(ok, key=lambda r: r["UA gain"])
    gap = ""
    if r.get("gap closed") is not None:
        share = _fmt(r["gap closed"], r["closed 95% low"], r["closed 95% high"], ".0%")
        gap = f", {share} of the gap closed"
    return f"use {r['finalist']}: {_gain(r)} UA over the baseline{gap}"


def _gain(row: dict) -> str:
    return _fmt(row["UA gain"], row["gain 95% low"], row["gain 95% high"])


def use_lines(rows_by_model: dict[str, list[dict]]) -> list[str]:
    """The page's lead: what to use, and when, by what a researcher has beyond the emotion
    labels (USE_REGIMES), per model, from the main setting's paired intervals."""
    out = []
    for i, (regime, allowed) in enumerate(USE_REGIMES):
        note = ("; every draw here was chosen on a group-balanced validation set, so each "
                "regime names what a method needs beyond that") if i == 0 else ""  # fmt: skip
        per_model = "; ".join(f"{m}: {_advice(rows, allowed)}" for m, rows in rows_by_model.items())
        out.append(f"- **{regime}** (allows {', '.join(allowed)}{note}): {per_model}.")
    return out


def write_report(reports=None) -> Path:
    """reports/demonstration.md and its figures, from the run records only: the short answer
    (what to use by information regime, anti-transfer against its placebo, then the rest), the
    protocol, the figures (forest plot per setting, layer sweep), the targets, what each method
    used and how it trained, the runs that did not train, then the tables."""
    reports = Path(reports or paths.REPORTS)
    everything = runs.load_records(reports)
    records = [r for r in everything if r.get("kind") == "ser"]
    verdicts, figures, body = [], [], []
    measured = {m: measured_costs(everything, m) for m in MODELS}
    settings = {
        v: {m: compare(records, m, v, measured[m]) for m in MODELS} for v in (MAIN, *VARIANTS)
    }
    adjust_placebos(rows for by_model in settings.values() for rows in by_model.values())
    main = settings[MAIN]
    goals = targets(records, main, measured_costs(everything))
    name_of = {v: f"{v[1]}-confounded, rho {v[0]:g}" for v in settings}
    found = [headline(rows, f"{m}, {name_of[MAIN]}") for m, rows in main.items() if rows]
    for variant, by_model in settings.items():
        name = name_of[variant]
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
                planned = (MAIN_PLAN if variant == MAIN else
                           (len(variant_members(records, model)), len(VARIANT_PAIRS)))  # fmt: skip
                verdicts += _verdicts(rows, f"{model}, {name}", planned)
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
        verdicts += said
        body += ["## The layer sweep", "", *said, ""]
        for model, rows in sweep.items():
            body += [f"### {model} VGG16", "", _table(rows), ""]
    counts = grid_counts(records)
    answer = [*use_lines(main), *found, *(verdicts or ["- No finalist has run yet."])]
    answer += [targets_line(goals), failures_line(records), grid_progress(counts),
               costs_line(measured), grid_time(everything, complete=grid_complete(counts)),
               *retrained_lines(records)]  # fmt: skip
    lines = ["# Which method removes the word shortcut, and is it invariance?", ""]
    lines += ["## Short answer", "", *answer, "", *protocol(records)]
    waiting = ["_No finalist has a paired run against the baseline yet._", ""]
    lines += ["## At a glance", "", *(figures or waiting)]
    lines += ["## Targets (main setting; met only when the 95% interval says so)", "",
              tables.markdown_table(goals), ""]  # fmt: skip
    lines += ["## What each finalist used: labelled items, by source (main setting)", "",
              "Over each finalist's runs on the fresh pairs (a mean and range where runs "
              "differ). Emotion labels: the items it trains on, the validation items, the "
              "decorrelated validation set its draw was chosen on, and DFR's refit set; group "
              "labels: wherever the method or its selection reads them.", "",
              tables.markdown_table(labelled_rows(main)), "",
              "## How each finalist trained (main setting)", "",
              tables.markdown_table(training_rows(main)), "",
              "## Runs that did not train (failed of runs, per stage)", "",
              tables.markdown_table(failure_rows(records)), "", *body]  # fmt: skip
    lines += [f"## Selection ({RULES['ua']}, never test)", "",
              tables.markdown_table(selection_summary(records)), "",
              _selection_table(records), ""]  # fmt: skip
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
