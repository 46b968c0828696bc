"""The demonstration: which invariance method removes the word shortcut on SynthEmo?

Stage 1 runs every method over its main knobs with seed 0 on the word-confounded setup
(rho 0.9); stage 2 reruns the best two configurations of each method (ranked by their
stage-1 decorrelated-test UA, which the report states: seeds 1 and 2 are fresh runs, and the
report also gives their mean alone, which the selection cannot have favoured) with seeds 1
and 2, next to the confounded baseline and the unconfounded ceiling with the same seeds.
Stage 3 takes the best configuration of each method (3-seed mean) to the variants: rho 0.95,
and the speaker-confounded split with the speaker network. Everything in the report comes
from run records.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from qat import runs, tables
from qat.config import RunConfig, label_of

BASE = dict(corpus="synthemo", setup="confounded", orthogonal="word", profile="cpu")
SEEDS = (0, 1, 2)
METHODS = ("at", "cka", "dann", "cdann")
MAIN = (0.9, "word")  # (rho, factor) of the main grid
VARIANTS = ((0.95, "word"), (0.9, "speaker"))  # stage 3
# The main knobs: taps early / middle / late / head, beta 1/10/100, lambda 0.3/1/3. CKA also
# gets beta 0.1, because at beta 10 it collapsed both models to chance on the first try.
BETAS = (1.0, 10.0, 100.0)
AT_TAPS = ("conv2_1", "conv3_3", "conv4_1", "conv5_3", "penultimate")
CKA_TAPS = ("conv3_1", "penultimate", ("conv3_1", "conv5_3", "penultimate"))
CKA_BETAS = (0.1, *BETAS)
LAMBDAS = (0.3, 1.0, 3.0)


def stage1(model: str) -> list[RunConfig]:
    """Each method over its main knobs, one seed. AT comes first: the sweep runs the first
    configuration of a group on its own, and AT's builds the networks the others share."""
    m = RunConfig(**BASE, model=model, seed=0)
    grid = [m.replace(method="at", tap=tap, beta=beta) for tap in AT_TAPS for beta in BETAS]
    grid.append(m.replace(method="at", tap="conv2_1", beta=10.0, gram="batch"))
    grid.append(m.replace(method="at", tap="conv2_1", beta=10.0, init_from_orthogonal=True))
    grid += [m.replace(method="cka", tap=tap, beta=beta) for tap in CKA_TAPS for beta in CKA_BETAS]
    grid += [m.replace(method=method, lam=lam) for method in ("dann", "cdann") for lam in LAMBDAS]
    return [*grid, m.replace(method="baseline"), m.replace(method="baseline", setup="unconfounded")]


def variant_name(variant: tuple[float, str]) -> str:
    rho, factor = variant
    return f"{factor}-confounded, rho {rho:g}"


def label(config: dict) -> str:
    """A configuration's name in the page: RunConfig's label without what every row shares."""
    if config["method"] == "baseline":
        return "ceiling (unconfounded)" if config["setup"] == "unconfounded" else "baseline"
    return label_of(config, without=("setup", "model", "seed"))


def _matches(record: dict, model: str, variant: tuple[float, str] = MAIN) -> bool:
    if record.get("kind") != "ser":
        return False
    c = RunConfig.from_record(record)
    return (
        (c.model, c.profile, c.corpus, c.rho, c.factor) == (model, BASE["profile"],
                                                            BASE["corpus"], *variant)
        and c.confounded
        and (not c.uses_orthogonal or c.orthogonal == c.factor)
    )  # fmt: skip


def stage2(model: str, records: list[dict], best: int = 2) -> list[RunConfig]:
    """Seeds 1 and 2 for baseline, ceiling and the `best` stage-1 configurations of each method."""
    seed0 = [r for r in records if _matches(r, model) and r["config"]["seed"] == 0]
    chosen = [r for r in seed0 if r["config"]["method"] == "baseline"]
    for method in METHODS:
        ranked = sorted(
            (r for r in seed0 if r["config"]["method"] == method), key=lambda r: -r["metrics"]["ua"]
        )
        chosen += ranked[:best]
    return [RunConfig.from_record(r).replace(seed=s) for r in chosen for s in SEEDS[1:]]


def stage3(model: str, records: list[dict]) -> list[RunConfig]:
    """Baseline, ceiling and each method's best configuration (by its 3-seed mean on the main
    grid), all seeds, on each variant; the orthogonal network follows the confounding factor."""
    chosen = [RunConfig.from_record(r) for r in _best_per_method(summarise(records, model))]
    return [
        c.replace(rho=rho, factor=factor, orthogonal=factor, seed=s)
        for rho, factor in VARIANTS
        for c in chosen
        for s in SEEDS
    ]


def run(models=("real", "quaternion"), jobs: int = 2, best: int = 2) -> None:
    """All three stages; runs whose record exists are skipped, so this resumes."""
    from qat.experiments import run_configs

    for stage in (lambda m, _: stage1(m), lambda m, rs: stage2(m, rs, best), stage3):
        records = runs.load_records(kind="ser")
        for model in models:
            run_configs(stage(model, records), jobs=jobs)


def summarise(records: list[dict], model: str, variant: tuple[float, str] = MAIN) -> list[dict]:
    """One row per configuration label: mean and spread over the seeds present."""
    factor = variant[1]
    groups: dict[str, dict[int, dict]] = {}
    for r in records:  # one record per seed: a forced rerun beside a record is not a new seed
        if _matches(r, model, variant):
            groups.setdefault(label(r["config"]), {}).setdefault(r["config"]["seed"], r)
    rows = []
    for name, by_seed in groups.items():
        rs = list(by_seed.values())

        def stat(f, rs=rs):
            values = [v for v in (f(r) for r in rs) if v is not None]
            if not values:
                return None, None
            return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

        ua, ua_sd = stat(lambda r: r["metrics"]["ua"])
        fresh = [r["metrics"]["ua"] for r in rs if r["config"]["seed"] != SEEDS[0]]
        rows.append({
            "model": model,
            "method": rs[0]["config"]["method"],
            "configuration": name,
            "config": rs[0]["config"],
            "seeds": len(rs),
            "ua": ua,
            "ua_sd": ua_sd,
            "ua_fresh": statistics.fmean(fresh) if fresh else None,
            "congruent_ua": stat(lambda r: r["confound"].get("congruent_ua"))[0],
            "incongruent_ua": stat(lambda r: r["confound"].get("incongruent_ua"))[0],
            "follows_shortcut": stat(lambda r: r["confound"].get("follows_shortcut"))[0],
            "probe": {
                tap: stat(lambda r, tap=tap: r["probe"].get(factor, {}).get(tap))[0]
                for tap in rs[0]["probe"].get(factor, {})
            },
            "step_time_s": stat(lambda r: r["resources"]["step_time_s"])[0],
            "peak_memory_mb": stat(lambda r: r["resources"]["peak_memory_bytes"] / 2**20)[0],
        })  # fmt: skip
    return sorted(rows, key=lambda row: (row["method"] != "baseline", -(row["ua"] or 0)))


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _in_se(run: dict, base: dict) -> str:
    """The UA difference in standard errors of the difference of two seed means."""
    se = (run["ua_sd"] ** 2 / run["seeds"] + base["ua_sd"] ** 2 / base["seeds"]) ** 0.5
    if se == 0:
        return "not measurable against the seed spread (one seed)"
    return f"{(run['ua'] - base['ua']) / se:.1f} standard errors of the difference"


def _targets(rows: list[dict], who: str, factor: str = "word") -> list[str]:
    """The issue's targets, checked on 3-seed means (rows with all seeds)."""
    by_name = {r["configuration"]: r for r in rows}
    base, ceil = by_name.get("baseline"), by_name.get("ceiling (unconfounded)")
    if not base or not ceil:
        return [f"- {who}: baseline or ceiling missing; targets not evaluated."]
    gap = ceil["ua"] - base["ua"]
    seeded = [r for r in rows if r["seeds"] >= len(SEEDS) and r["method"] != "baseline"]
    out = [
        f"- {who}: baseline UA {_fmt(base['ua'])} (sd {_fmt(base['ua_sd'])}), "
        f"ceiling {_fmt(ceil['ua'])}, gap {_fmt(gap)}."
    ]
    if not seeded:
        return [*out, f"- {who}: no configuration has {len(SEEDS)} seeds yet."]
    best = max(seeded, key=lambda r: r["ua"])
    headline = f"- {who}: best method {best['configuration']} UA {_fmt(best['ua'])} "
    if gap > 0:
        closed = (best["ua"] - base["ua"]) / gap
        fresh = (best["ua_fresh"] - base["ua_fresh"]) / gap
        out.append(
            f"{headline}(sd {_fmt(best['ua_sd'])}) closes {closed:.0%} of the gap: target "
            f"(>= 50%) {'met' if closed >= 0.5 else 'NOT met'}; the gain is "
            f"{_in_se(best, base)}; on seeds 1-2 alone, which the selection did not see, "
            f"it closes {fresh:.0%}."
        )
    else:
        out.append(
            f"{headline}(sd {_fmt(best['ua_sd'])}): the ceiling is not above the baseline "
            f"here, so there is no measurable gap to close; the gain is {_in_se(best, base)}."
        )
    at_rows = [r for r in seeded if r["method"] in ("at", "cka")]
    if at_rows:
        best_at = max(at_rows, key=lambda r: r["ua"])
        gain = best_at["ua"] - base["ua"]
        base_probe, at_probe = (r["probe"].get("penultimate") for r in (base, best_at))
        probe_down = (at_probe or 1) < (base_probe or 0)
        out.append(
            f"- {who}: best AT variant {best_at['configuration']}: UA {gain * 100:+.1f} points "
            f"over the baseline ({_in_se(best_at, base)}; target +3: "
            f"{'met' if gain >= 0.03 else 'NOT met'}); "
            f"penultimate {factor} probe {_fmt(base_probe)} -> "
            f"{_fmt(at_probe)} ({'lower' if probe_down else 'NOT lower'})."
        )
    return out


def _table(rows: list[dict], factor: str) -> list[str]:
    table = pd.DataFrame(
        [
            {
                "configuration": r["configuration"],
                "seeds": r["seeds"],
                "UA": r["ua"],
                "sd": r["ua_sd"],
                "UA seeds 1-2": r["ua_fresh"],
                "congruent UA": r["congruent_ua"],
                "incongruent UA": r["incongruent_ua"],
                f"follows {factor}": r["follows_shortcut"],
                f"{factor} probe (penult.)": r["probe"].get("penultimate"),
                "step time (s)": r["step_time_s"],
                "peak memory (MiB)": r["peak_memory_mb"],
            }
            for r in rows
        ]
    )
    text = tables.markdown_table(
        table, float_format=".3f", formats={"peak memory (MiB)": ".1f"}, missing="n/a"
    )
    return text.splitlines()


INTRO = (
    "Generated by `qat demonstration` (add `--report-only` to rebuild this page from the "
    "records in reports/runs/ without training). SynthEmo, profile cpu, held-out test speakers "
    "(word-confounded) or held-out test words (speaker-confounded), the confounding factor and "
    "the emotion independent in test. UA = unweighted accuracy on that decorrelated test set. "
    "Stage 1: every configuration of the grid (qat/demonstration.py: AT_TAPS x BETAS, with the "
    "sample Gram, plus the batch Gram and the word-network initialisation at conv2_1; "
    "CKA_TAPS x CKA_BETAS; DANN and CDANN x LAMBDAS; the AT tap sweep at beta 1 from "
    "notebook 05) with seed 0 on the word-confounded split, rho 0.9. Stage 2: seeds 1 and 2 "
    "for baseline, ceiling and the best two stage-1 configurations of each method, ranked by "
    "their seed-0 test UA: the 3-seed means are therefore mildly optimistic, and 'UA seeds 1-2' "
    "is the mean of the two fresh seeds alone, which the selection did not see. Stage 3: the "
    "best configuration of each method (3-seed mean) on rho 0.95 and on the speaker-confounded "
    "split with the speaker network as the orthogonal network (3 seeds each). Step time and "
    "peak memory are those recorded by each run (two runs in parallel, one thread each, on a "
    "shared machine): use reports/benchmarks.md, measured side by side, for cost ratios. "
    "'follows word' = share of incongruent test items predicted as the emotion their word was "
    "paired with in training. Probe = linear probe of the confounding factor on mean-pooled "
    "penultimate features (words: held-out speakers, chance 1/40; speakers: validation items, "
    "chance 1/12)."
)


def write_report(reports=None) -> Path:
    """reports/demonstration.md and its figures, from the run records only."""
    from qat import io, paths, plots

    reports = Path(reports or paths.REPORTS)
    records = runs.load_records(reports, kind="ser")
    figures = reports / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Which invariance method removes the word shortcut?", "", INTRO, ""]
    summary, tables = [], []
    for variant in (MAIN, *VARIANTS):
        factor = variant[1]
        by_model = {m: summarise(records, m, variant) for m in ("real", "quaternion")}
        if not any(by_model.values()):
            continue
        section = [f"## {variant_name(variant)}" + (" (the main grid)" if variant == MAIN else "")]
        section.append("")
        for model, rows in by_model.items():
            if not rows:
                continue
            who = model if variant == MAIN else f"{model}, {variant_name(variant)}"
            targets = _targets(rows, who, factor)
            section += targets
            summary += targets
            if variant == MAIN:
                tables += [f"\n## {model} VGG16, {variant_name(variant)}: every configuration\n"]
                tables += _table(rows, factor)
            else:
                section += ["", *_table(rows, factor), ""]
        figs = [("ua", plots.ranked_configurations(by_model, variant_name(variant)))]
        if variant == MAIN:
            best = {m: _best_per_method(rows) for m, rows in by_model.items()}
            figs.append(("probe", plots.probe_profiles(best, f"{factor} probe")))
        suffix = "" if variant == MAIN else f"_{factor}_rho{variant[0]:g}"
        for kind, fig in figs:
            name = f"demonstration_{kind}{suffix}"
            io.save_figure(fig, figures, name)
            section += ["", f"![{name}](figures/{name}.png)"]
        lines += [*section, ""]
        if variant == MAIN and all(by_model.values()):
            costs = _cost_ratios(by_model)
            lines += costs
            summary.append(
                "- quaternion / real train-step cost (run records): "
                + "; ".join(c[2:] for c in costs if c.startswith("- "))
                + "."
            )
    target = reports / "demonstration.md"
    text = "\n".join(lines + tables) + "\n"
    io.write_text(target, text)
    if reports.resolve() == (paths.ROOT / "reports").resolve():  # the committed results
        _update_readme(summary)
    return target


def _update_readme(summary: list[str]) -> None:
    """Replace the block between the results markers of the top-level README.md."""
    from qat import io, paths

    readme = paths.ROOT / "README.md"
    start, end = "<!-- demonstration:start -->", "<!-- demonstration:end -->"
    text = readme.read_text() if readme.exists() else ""
    if start not in text or end not in text:
        return
    block = "\n".join([start, "", *summary, "", end])
    before, rest = text.split(start, 1)
    text = before + block + rest.split(end, 1)[1]
    io.write_text(readme, text)


def _best_per_method(rows: list[dict]) -> list[dict]:
    """Baseline, ceiling and each method's best configuration with all seeds (summary rows)."""
    seeded = [r for r in rows if r["seeds"] >= len(SEEDS)]
    best = [r for r in seeded if r["method"] == "baseline"]
    for method in METHODS:
        mine = [r for r in seeded if r["method"] == method]
        best += [max(mine, key=lambda r: r["ua"])] if mine else []
    return best


def _cost_ratios(rows: dict[str, list[dict]]) -> list[str]:
    """Quaternion over real train-step time and peak memory per method: the ratio of the means
    over the configurations that both models ran (so it compares the same taps and knobs), and
    the range of the per-configuration ratios."""
    out = ["Quaternion / real train-step cost per method (target <= 0.25):", ""]
    by_label = {model: {r["configuration"]: r for r in rows[model]} for model in rows}
    real, quaternion = by_label["real"], by_label["quaternion"]
    for method in ("baseline", *METHODS):
        both = [n for n, r in real.items() if r["method"] == method and n in quaternion]
        if not both:
            continue
        parts = []
        for key, what in (("step_time_s", "time"), ("peak_memory_mb", "peak memory")):
            mean = statistics.fmean(quaternion[n][key] for n in both) / statistics.fmean(
                real[n][key] for n in both
            )
            each = [quaternion[n][key] / real[n][key] for n in both]
            parts.append(f"{what} {mean:.2f}x (per configuration {min(each):.2f}-{max(each):.2f}x)")
        out.append(f"- {method}: {', '.join(parts)}, {len(both)} configurations")
    return [*out, ""]
