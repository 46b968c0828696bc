"""The instrument: SynthEmo at a size that can tell methods apart, a training recipe chosen on
baseline and ceiling runs only, speaker folds, upstream networks trained to convergence, and
reports/instrument.md.

A run is identified by (seed, fold): fold f tests on the f-th of the profile's fixed groups of
speakers, so across PAIRS every speaker is tested. The pilot trains the baseline (word-
confounded split) and the ceiling (the unconfounded control: same test set and size, no
shortcut) under each candidate recipe (qat.config.RECIPES); no method is run until the recipe
is frozen as the `cpu` profile, so nothing here can have been tuned on a method's result.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qat import costs, diagnosis, embedding, io, level, paths, plots, precision, runs, stats, tables
from qat.config import INSTRUMENT_ENCODER, PROFILES, RECIPES, RunConfig
from qat.models import ENCODERS  # RH-emo encoders (published first): each gets its rows
from qat.report import update_readme_block

PAIRS = ((0, 0), (1, 1), (2, 2), (3, 3), (4, 0))  # (seed, fold): five seeds, every fold
MODELS = ("real", "quaternion")
PILOT = tuple(f"pilot-{name}" for name in RECIPES)
FROZEN = "cpu"
SETUPS = ("confounded", "unconfounded")  # baseline and ceiling
GOOD_CEILING = 0.60  # the real ceiling a recipe must reach to be chosen (the target)
POWER_GAINS = (0.02, 0.03, 0.05)
ADOPTED = f"quaternion, RH-emo {INSTRUMENT_ENCODER}"  # the instrument's quaternion pipeline


def configs(profile: str, models=MODELS, pairs=PAIRS, **settings) -> list[RunConfig]:
    """Baseline and ceiling for each model and (seed, fold), with `settings`."""
    return [
        RunConfig(profile=profile, model=model, seed=seed, fold=fold, setup=setup, **settings)
        for model in models
        for seed, fold in pairs
        for setup in SETUPS
    ]


def cost_configs() -> dict[str, RunConfig]:
    """The frozen baseline of each model on the first pair: the two steps the step-time target
    compares, timed side by side (`qat instrument --stage costs`)."""
    return {model: configs(FROZEN, (model,), PAIRS[:1])[0] for model in MODELS}


# ---------------------------------------------------------------- oracle and upstream networks


def oracle(run: RunConfig) -> dict:
    """The prosody oracle on a run's split (its training items, its held-out speakers), as an
    "oracle" record keyed like the run's data; reused when it exists."""
    from qat.data.synth import CORPUS
    from qat.oracle import prosody_oracle, read_prosody
    from qat.rundata import run_data, synthemo_folder
    from qat.upstream import rhemo_key

    key = rhemo_key(run)
    target = runs.record_path("oracle", key)
    if target.exists():
        return runs.load_record(target)
    data = run_data(run, progress=False)
    uids = {name: [data.records[i].uid for i in part.indices]
            for name, part in (("train", data.train), ("test", data.test))}  # fmt: skip
    result = prosody_oracle(
        read_prosody(synthemo_folder(run.profile)), uids["train"],
        data.train.labels["emotion"].numpy(), uids["test"], data.test.labels["emotion"].numpy(),
    )  # fmt: skip
    record = {"kind": "oracle", "config": key, "corpus": CORPUS, "metrics": result,
              "code_version": runs.code_version()}  # fmt: skip
    io.write_json_beside(target, record)
    return record


def upstream(profile: str, pairs=PAIRS) -> None:
    """The word and speaker networks (real), and for each (seed, fold) and RH-emo encoder its
    RH-emo and the quaternion word network that reads it: their records hold their quality."""
    from qat import upstream as networks

    for task in ("word", "speaker"):
        networks.pretrain_orthogonal(RunConfig(profile=profile, orthogonal=task))
    for encoder in ENCODERS:
        for seed, fold in pairs:
            run = RunConfig(profile=profile, model="quaternion", seed=seed, fold=fold,
                            rhemo_encoder=encoder)  # fmt: skip
            networks.pretrain_orthogonal(run, rhemo=networks.pretrain_rhemo(run))


def run(stage: str = "pilot", jobs: int = 2, models=MODELS, engine=None) -> None:
    """Train what a stage needs (runs whose record exists are skipped, so it resumes):
    "pilot": baseline and ceiling under each candidate recipe; "final": the same under the
    frozen recipe (for every RH-emo encoder), the prosody oracle and the upstream networks;
    "diagnose": the ceilings of the diagnoses (why the quaternion ceiling lags); "confirm":
    those that raised it, on fresh pairs; "costs": the steps of the frozen baselines and of
    the diagnosed networks, timed side by side in one process. `engine`: where the runs
    execute (qat.sweep.Engine; the local pool by default)."""
    from qat.experiments import run_configs

    if stage == "embedding":
        run_configs(
            embedding.select_configs(), jobs=jobs, desc="instrument embedding", engine=engine
        )
        return
    if stage == "embedding-confirm":
        _confirm_embedding(jobs, engine)
        return
    if stage == "level":
        level.run(jobs, engine)
        return
    if stage == "precision":
        precision.run(jobs, engine)
        return
    if stage == "costs":
        costs.run([*cost_configs().values(), *diagnosis.cost_configs(FROZEN).values()])
        return
    if stage in ("diagnose", "confirm"):
        grid = diagnosis.configs(PAIRS) if stage == "diagnose" else diagnosis.confirm_configs()
        run_configs(grid, jobs=jobs, desc=f"instrument {stage}", engine=engine)
        return
    profiles = PILOT if stage == "pilot" else (FROZEN,)
    for profile in profiles:
        run_configs(
            configs(profile, models),
            jobs=jobs,
            desc=f"instrument {stage}, {profile}",
            engine=engine,
        )
    if stage == "final" and "quaternion" in models:  # the other RH-emo encoders
        for encoder in list(ENCODERS)[1:]:
            run_configs(configs(FROZEN, ("quaternion",), rhemo_encoder=encoder), jobs=jobs,
                        desc=f"instrument {stage}, RH-emo {encoder}", engine=engine)  # fmt: skip
    if stage == "final":
        for seed, fold in PAIRS:
            oracle(RunConfig(profile=FROZEN, seed=seed, fold=fold, setup="unconfounded"))
        upstream(FROZEN)


def _confirm_embedding(jobs: int, engine=None) -> None:
    """The chosen RH-emo on fresh pairs: its runs (embedding.confirm_configs), then the
    quaternion word networks that read it."""
    from qat import upstream as networks
    from qat.experiments import run_configs

    chosen, why = embedding.choose(embedding.scores(runs.load_records()))
    if chosen is None:
        raise ValueError(f"stage='embedding-confirm': no RH-emo is chosen yet ({why}); run "
                         "`qat instrument --stage embedding` first")  # fmt: skip
    run_configs(
        embedding.confirm_configs(chosen), jobs=jobs, desc=f"confirm {chosen}", engine=engine
    )
    for run in embedding.word_networks(chosen):
        networks.pretrain_orthogonal(run, rhemo=networks.pretrain_rhemo(run))
    costs.run(embedding.cost_configs(chosen))


# ---------------------------------------------------------------- summaries


def _ua(records: dict[tuple, dict]) -> dict[tuple, float]:
    return {k: r["metrics"]["ua"] for k, r in records.items()}


def _mean_sd(values) -> tuple[float | None, float | None]:
    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _history_stats(records) -> dict:
    """Convergence of the training loss, and validation-loss spikes, over runs."""
    finals, slopes, spikes = [], [], 0
    for r in records:
        losses = [h["train_loss"] for h in r["history"]]
        val = [h["val_loss"] for h in r["history"]]
        finals.append(losses[-1])
        if len(losses) >= 3:
            slopes.append((losses[-3] - losses[-1]) / max(abs(losses[-3]), 1e-12))
        spikes += any(b > 2 * a for a, b in itertools.pairwise(val))
    return {
        "final train loss": statistics.fmean(finals) if finals else None,
        "train loss drop, last 2 epochs": statistics.fmean(slopes) if slopes else None,
        "runs with a val-loss spike (x2)": spikes,
    }


def summarise(records, profile: str, model: str, encoder: str | None = None) -> dict:
    """Baseline and ceiling of one profile, model (and RH-emo encoder, None: published) over
    the pairs: means, SDs, the paired confound gap with its interval, and convergence."""
    base = tables.baseline_by_pair(records, PAIRS, profile, model, "confounded", encoder)
    ceil = tables.baseline_by_pair(records, PAIRS, profile, model, "unconfounded", encoder)
    b_mean, b_sd = _mean_sd(_ua(base).values())
    c_mean, c_sd = _mean_sd(_ua(ceil).values())
    sizes = [r["split"]["sizes"] for r in base.values() if "sizes" in r.get("split", {})]
    row = {"profile": profile, "model": model, "pairs": f"{len(base)}/{len(ceil)}",
           "train/val/test items": "/".join(str(round(statistics.fmean(s[k] for s in sizes)))
                                            for k in ("train", "val", "test")) if sizes else None,
           "baseline UA": b_mean, "baseline SD": b_sd, "ceiling UA": c_mean,
           "ceiling SD": c_sd}  # fmt: skip
    both = set(base) & set(ceil)
    gap = stats.paired(_ua({k: ceil[k] for k in both}), _ua({k: base[k] for k in both})) if len(
        both) >= 2 else None  # fmt: skip
    row.update({"gap": gap and gap.mean, "gap 95% low": gap and gap.t_low,
                "gap 95% high": gap and gap.t_high, "gap paired SD": gap and gap.sd})  # fmt: skip
    row.update(_history_stats([*base.values(), *ceil.values()]))
    timings = [r.get("timings_s") for r in [*base.values(), *ceil.values()]]
    shares = [tables.overhead_share(t) for t in timings if t]
    row["overhead / training time"] = statistics.fmean(shares) if shares else None
    times = [r["resources"]["step_time_s"] for r in base.values()]
    row["step time (ms)"] = 1000 * statistics.fmean(times) if times else None
    row["_base"], row["_ceil"] = base, ceil
    return row


def choose(rows: Sequence[dict]) -> tuple[str | None, str]:
    """The recipe rule, stated in the report: among the candidates whose real ceiling reaches
    GOOD_CEILING (or, if none does, those within 0.02 UA of the best real ceiling), the one
    with the lowest real baseline SD over the pairs."""
    real = [r for r in rows if r["model"] == "real" and r["baseline SD"] is not None
            and r["ceiling UA"] is not None]  # fmt: skip
    if not real:
        return None, "no candidate has baseline and ceiling runs yet"
    good = [r for r in real if r["ceiling UA"] >= GOOD_CEILING]
    why = f"real ceiling >= {GOOD_CEILING}"
    if not good:
        best = max(r["ceiling UA"] for r in real)
        good = [r for r in real if r["ceiling UA"] >= best - 0.02]
        why = f"no candidate reaches a real ceiling of {GOOD_CEILING}; within 0.02 of the best"
    pick = min(good, key=lambda r: r["baseline SD"])
    return pick["profile"], f"{why}, then the lowest real baseline SD ({pick['baseline SD']:.4f})"


# ---------------------------------------------------------------- the page


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _fmt(value, spec=".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _time_target(timed) -> dict:
    """The quaternion step against the real one, from the costs record that timed both side by
    side (the runs' own times were taken one run at a time, under different loads)."""
    target = "quaternion step time <= 0.36x the real one"
    if timed is None:
        return {"target": target, "measured": "pending a side-by-side run (`qat instrument "
                "--stage costs`)", "met": "pending"}  # fmt: skip
    steps = cost_configs()
    ratio, low, high = costs.time_ratio(timed, steps["quaternion"], steps["real"])
    return {"target": target,
            "measured": f"{ratio:.2f} [{low:.2f}, {high:.2f}]x (side by side, "
                        f"{timed['config']['rounds']} rounds)",
            "met": stats.verdict(low, high, at_most=0.36)}  # fmt: skip


def _targets(frozen: dict[str, dict], oracle_ua: float | None, timed=None) -> list[dict]:
    """The issue's targets, each "met" only when its interval says so. `timed`: the costs
    record of the frozen baselines' steps, if any."""
    real, quat = frozen.get("real"), frozen.get(ADOPTED)
    out = []

    def sd_target(row, limit, who):
        if not row or row["baseline SD"] is None:
            return {"target": f"{who} baseline SD <= {limit}", "measured": "n/a", "met": "no runs"}
        n = len(row["_base"])
        low, high = stats.sd_interval(row["baseline SD"], n)
        measured = f"{row['baseline SD']:.4f} [{low:.4f}, {high:.4f}] (n={n})"
        return {"target": f"{who} baseline SD <= {limit}", "measured": measured,
                "met": stats.verdict(low, high, at_most=limit)}  # fmt: skip

    out.append(sd_target(real, 0.015, "real"))
    out.append(sd_target(quat, 0.02, "quaternion"))
    if real and real["ceiling UA"] is not None:
        low, high = stats.mean_interval(list(_ua(real["_ceil"]).values()))
        ceiling = "pending" if np.isnan(low) else stats.verdict(low, high, at_least=0.60)
        share = real["ceiling UA"] / oracle_ua if oracle_ua else None
        out.append({"target": "real ceiling UA >= 0.60",
                    "measured": f"{real['ceiling UA']:.3f} [{low:.3f}, {high:.3f}]",
                    "met": ceiling})  # fmt: skip
        out.append({"target": "real ceiling >= 80% of the prosody oracle",
                    "measured": f"{_fmt(share, '.0%')} (oracle {_fmt(oracle_ua)})",
                    "met": "met" if share is not None and share >= 0.8 else "not met"})  # fmt: skip
    if real and real["gap 95% low"] is not None:
        out.append({"target": "real confound gap, 95% lower bound >= 0.05",
                    "measured": f"{real['gap']:.3f} [{real['gap 95% low']:.3f}, "
                                f"{real['gap 95% high']:.3f}]",
                    "met": stats.verdict(real["gap 95% low"], real["gap 95% high"],
                                         at_least=0.05)})  # fmt: skip
    if real and quat and real["ceiling UA"] is not None and quat["ceiling UA"] is not None:
        keys = set(real["_ceil"]) & set(quat["_ceil"])
        if len(keys) >= 2:
            d = stats.paired(_ua({k: quat["_ceil"][k] for k in keys}),
                             _ua({k: real["_ceil"][k] for k in keys}))  # fmt: skip
            out.append({"target": "quaternion ceiling within 0.05 UA of the real one",
                        "measured": f"{d.mean:+.3f} [{d.t_low:+.3f}, {d.t_high:+.3f}]",
                        "met": stats.verdict(d.t_low, d.t_high, at_least=-0.05)})  # fmt: skip
        out.append(_time_target(timed))
    return out


def _upstream(records, profile: str) -> str:
    """The upstream networks of the instrument's runs (its pairs and the confirmation's)."""
    seeds = {s for s, _ in (*PAIRS, *diagnosis.CONFIRM_PAIRS)}
    mine = [r for r in records if r["config"].get("profile") == profile
            and (r.get("kind") != "rhemo" or r["config"].get("seed") in seeds)]  # fmt: skip
    return tables.upstream_markdown(mine)


def _intro() -> str:
    data = PROFILES[FROZEN]
    return (
        "Generated by `qat instrument --report-only` from the records under reports/runs/ "
        "(`qat instrument --stage pilot`, `final`, `diagnose` and `confirm` train what is "
        "missing; all resume). Only baseline and ceiling runs enter this page: the recipe was "
        "chosen before "
        "any method was run on this instrument. The v1 records (the first instrument) were "
        "moved to reports/runs/v1/ and are not read here. SynthEmo with "
        f"{data['corpus'].get('repetitions')} repetitions per (speaker, word, emotion). A run "
        f"is identified by (seed, fold); fold f tests on the f-th of {data['folds']} fixed "
        "groups of speakers, so PAIRS test every speaker. UA is measured on the decorrelated "
        "test set of the held-out speakers. Intervals are 95% t-intervals over the paired "
        "(seed, fold) runs (qat.stats); an SD's interval is the chi-square one."
    )


def write_report(reports=None) -> Path:
    """reports/instrument.md and its figures, from the records only."""
    reports = Path(reports or paths.REPORTS)
    records = runs.load_records(reports)
    ser = [r for r in records if r.get("kind") == "ser"]
    timed = costs.find(records, list(cost_configs().values()))
    figures = reports / "figures"
    lines = ["# The instrument: data, recipe, folds and noise", "", _intro(), ""]

    pilot = [summarise(ser, p, m) for p in PILOT for m in MODELS]
    pilot = [r for r in pilot if r["pairs"] != "0/0"]
    chosen, why = choose(pilot)
    lines += ["## 1. Pilot: candidate recipes on baseline and ceiling runs", ""]
    for name, recipe in RECIPES.items():
        lines.append(f"- `pilot-{name}`: {', '.join(f'{k}={v}' for k, v in recipe.items())}")
    lines += ["", tables.markdown_table([_public(r) for r in pilot])]
    if pilot:
        curves = {f"{r['profile']} {r['model']}": [*r["_base"].values(), *r["_ceil"].values()]
                  for r in pilot}  # fmt: skip
        fig = plots.pilot_curves(curves)
        io.save_figure(fig, figures, "instrument_pilot_curves")
        lines += ["", "![training curves of the pilot](figures/instrument_pilot_curves.png)"]
    lines += ["", "## 2. The recipe chosen", ""]
    frozen_recipe = {k: PROFILES[FROZEN].get(k) for k in RECIPES[next(iter(RECIPES))]}
    if chosen is None:
        lines.append(f"Not chosen yet: {why}.")
    else:
        same = all(PROFILES[FROZEN].get(k) == v for k, v in PROFILES[chosen].items())
        state = "is this recipe (frozen)" if same else f"is NOT yet this recipe ({frozen_recipe})"
        lines.append(f"Rule: {why}. Chosen: `{chosen}`. The `cpu` profile {state}.")
        lines += [
            "",
            f"The quaternion pipeline reads RH-emo with the {INSTRUMENT_ENCODER!r} encoder "
            "(`rhemo_encoder`; qat.config.INSTRUMENT_ENCODER). Section 7 diagnoses the "
            "quaternion ceiling on ceiling runs only; a change is adopted when its gain holds on "
            "fresh (seed, fold) pairs.",
        ]

    frozen = {"real": summarise(ser, FROZEN, "real")}
    for encoder in ENCODERS:
        row = summarise(ser, FROZEN, "quaternion", None if encoder == "published" else encoder)
        if row["pairs"] != "0/0" or encoder == INSTRUMENT_ENCODER:  # run, or the adopted one
            frozen[f"quaternion, RH-emo {encoder}"] = row
    for name, row in frozen.items():
        row["model"] = name
    oracles = [r for r in records if r.get("kind") == "oracle"
               and r["config"].get("profile") == FROZEN]  # fmt: skip
    oracle_ua, oracle_sd = _mean_sd(r["metrics"]["ua"] for r in oracles)
    lines += ["", "## 3. The frozen instrument (`cpu`): oracle, baseline and ceiling", ""]
    lines.append(f"Prosody oracle (logistic regression on the generator's rate, pitch, range and "
                 f"volume, held-out speakers): UA {_fmt(oracle_ua)} (SD {_fmt(oracle_sd)}, "
                 f"{len(oracles)} folds/seeds).")  # fmt: skip
    lines += ["", tables.markdown_table([_public(r) for r in frozen.values()])]
    lines += ["", "Overhead / training time is data preparation, step-cost measurement and probes "
              "over training time. The frozen runs' records predate the split of these timings, "
              "so their share counts everything outside training, and the quaternion one "
              "includes pretraining the split's RH-emo (shared by every method on the split). "
              "The demonstration's records measure it as defined (reports/demonstration.md, "
              "column overhead / training)."]  # fmt: skip
    if any(r["_base"] for r in frozen.values()):
        fig = plots.paired_runs({m: (r["_base"], r["_ceil"]) for m, r in frozen.items()})
        io.save_figure(fig, figures, "instrument_pairs")
        lines += ["", "![baseline and ceiling per (seed, fold)](figures/instrument_pairs.png)"]

    lines += ["", "## 4. Targets", "", tables.markdown_table(_targets(frozen, oracle_ua, timed))]
    lines += ["", "## 5. Upstream networks", ""]
    lines.append(_upstream(records, FROZEN))
    lines += ["", "## 6. Power: paired runs needed for 80% power (two-sided, alpha 0.05)", ""]
    lines.append(
        "The paired SD is that of the ceiling - baseline differences over the same (seed, fold) "
        "pairs: the run-to-run noise a method - baseline comparison will meet."
    )
    power = []
    for model, row in frozen.items():
        sd = row["gap paired SD"]
        if sd:
            power.append({"model": model, "paired SD": sd, **{
                f"runs for +{g * 100:.0f} points": stats.runs_for_power(g, sd) for g in POWER_GAINS
            }})  # fmt: skip
    lines += ["", tables.markdown_table(power)]
    lines += ["", "## 7. Why the ceilings fall short: the quaternion one of the real one, the "
              "real one of the oracle", ""]  # fmt: skip
    lines += diagnosis.section(records, FROZEN, PAIRS, figures)
    lines += ["", "## 8. RH-emo at full strength", "", *embedding.section(records)]
    lines += ["", "## 9. bfloat16 forward passes", "", *precision.section(records)]
    target = reports / "instrument.md"
    io.write_text(target, "\n".join(lines) + "\n")
    if reports.resolve() == (paths.ROOT / "reports").resolve():
        summary = _summary(chosen, why, frozen, oracle_ua)
        update_readme_block("instrument", summary + diagnosis.reading(records, FROZEN, PAIRS)
                            + embedding.reading(records)
                            + precision.reading(records))  # fmt: skip
    return target


def _summary(chosen, why, frozen: dict, oracle_ua) -> list[str]:
    """The README's lines: the recipe chosen and the frozen instrument's numbers, with their
    intervals (from the same records as the page)."""
    if chosen is None:
        return []
    out = [f"- Recipe: `{chosen}`, chosen by the rule ({why}); frozen as the `cpu` profile."]
    for model, row in frozen.items():
        if row["gap"] is None:
            out.append(f"- {model}: the frozen instrument's baseline and ceiling runs are not all "
                       f"in yet ({row['pairs']} pairs).")  # fmt: skip
            continue
        out.append(
            f"- {model}: baseline UA {row['baseline UA']:.3f} (SD {row['baseline SD']:.3f} over "
            f"{row['pairs'].split('/')[0]} (seed, fold) runs), ceiling {row['ceiling UA']:.3f}; "
            f"confound gap {row['gap']:+.3f}, 95% interval [{row['gap 95% low']:+.3f}, "
            f"{row['gap 95% high']:+.3f}]."
        )
    if oracle_ua is not None:
        out.append(f"- Prosody oracle (held-out speakers): UA {oracle_ua:.3f}.")
    return out
