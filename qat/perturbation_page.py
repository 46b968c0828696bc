"""reports/perturbations.md and its figure, from the eval records `qat perturb` writes
(qat.perturbed): per model, clean UA and the paired difference under each perturbation; per
method with models on several (seed, fold) pairs, the difference over the pairs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qat import io, level, paths, plots, runs, stats, tables
from qat.config import label_of
from qat.perturb import PERTURBATIONS
from qat.perturbed import NAMES, ROOMS, SCORING, TALKERS

LEVEL = 0.95  # the intervals' level
ITEM_BOOT = 2000  # bootstrap resamples over items (qat.stats.paired resamples whole pairs)
PAGE = "perturbations.md"
FIGURE = "perturbations"


def perturbation_records(reports: Path | None = None) -> list[dict]:
    """The eval records of `qat perturb` under <reports>/runs/, one per configuration (of a
    configuration rerun with --force, the latest written)."""
    latest: dict[str, dict] = {}
    for record in runs.load_records(Path(reports or paths.REPORTS), kind="eval"):
        if isinstance(record["config"].get("perturbation"), dict) and "paired" in record:
            latest[runs.config_key(record["config"])] = record
    return list(latest.values())


def ua_weights(emotions: Sequence[str]) -> np.ndarray:
    """Per-item weights whose mean, times each item's correctness, is the UA: n / (classes *
    the item's class count), so that mean(w * correct) = mean over classes of the recall."""
    emotions = np.asarray(emotions)
    classes, index, counts = np.unique(emotions, return_inverse=True, return_counts=True)
    return len(emotions) / (len(classes) * counts[index])


def item_interval(record: dict):
    """The paired UA difference (perturbed - clean) of one record over its items, with its
    percentile bootstrap interval (qat.stats.paired over items, each item's UA weight fixed)."""

    items = record["per_item"]
    w = ua_weights(items["emotions"])
    clean = dict(zip(items["uids"], w * np.asarray(items["clean_correct"]), strict=True))
    moved = dict(zip(items["uids"], w * np.asarray(items["perturbed_correct"]), strict=True))
    return stats.paired(moved, clean, level=LEVEL, n_boot=ITEM_BOOT)


def _pair(run: dict) -> tuple:
    return (run.get("seed"), (run.get("split") or {}).get("fold"))


def run_name(model: dict) -> str:
    """A model's label with its run's seed and fold: "<label>, seed 3, fold 1"."""
    seed, fold = _pair(model["run"] or {})
    parts = [model["method"], f"seed {seed}" if seed is not None else None,
             f"fold {fold}" if fold is not None else None]  # fmt: skip
    return ", ".join(p for p in parts if p)


def evaluated_models(records: Sequence[dict]) -> list[dict]:
    """One entry per model file (and test items and seed) the records score: its label, run,
    path, clean UA and {perturbation name: record} in declaration order; sorted by label."""
    models: dict[str, dict] = {}
    for r in records:
        c = r["config"]
        key = json.dumps([c["model"]["sha256"], c["test"], c["seed"]], sort_keys=True)
        entry = models.setdefault(key, {
            "label": r["model"]["label"], "run": c["model"]["run"], "path": r["model"]["path"],
            "sha256": c["model"]["sha256"], "items": r["paired"]["n"], "seed": c["seed"],
            "records": {},
        })  # fmt: skip
        entry["records"][c["perturbation"]["name"]] = r
    for entry in models.values():
        order = {n: i for i, n in enumerate(NAMES)}
        ranked = sorted(entry["records"].items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))
        entry["records"] = dict(ranked)
        entry["clean_ua"] = next(iter(entry["records"].values()))["paired"]["clean_ua"]
        run = entry["run"]
        entry["method"] = label_of(run, ("fold", "seed")) if run else entry["label"]
        entry["profile"] = (entry["run"] or {}).get("profile")
    return sorted(models.values(), key=lambda m: (m["method"], str(_pair(m["run"] or {})),
                                                  -m["items"], m["seed"]))  # fmt: skip


def model_rows(model: dict) -> list[dict]:
    """A model's table: per perturbation, perturbed UA, the paired difference with its
    bootstrap interval over items, and the share of predictions unchanged."""
    rows = []
    for name, r in model["records"].items():
        result = item_interval(r)
        rows.append({
            "perturbation": name, "UA": r["paired"]["perturbed_ua"], "UA difference": result.mean,
            "95% low": result.boot_low, "95% high": result.boot_high,
            "unchanged": r["paired"]["unchanged"], "items": r["paired"]["n"],
        })  # fmt: skip
    return rows


def method_rows(group: Sequence[dict]) -> list[dict]:
    """A method's table over its runs ((seed, fold) pairs, one model each): per perturbation,
    the mean clean and perturbed UA, the mean paired difference with its t-interval and
    bootstrap interval over the pairs, the mean share unchanged."""

    rows = []
    names = [n for n in NAMES if all(n in m["records"] for m in group)]
    for name in names:
        clean = {_pair(m["run"]): m["records"][name]["paired"]["clean_ua"] for m in group}
        moved = {_pair(m["run"]): m["records"][name]["paired"]["perturbed_ua"] for m in group}
        result = stats.paired(moved, clean, level=LEVEL)
        unchanged = [m["records"][name]["paired"]["unchanged"] for m in group]
        rows.append({
            "perturbation": name, "clean UA": float(np.mean(list(clean.values()))),
            "UA": float(np.mean(list(moved.values()))), "UA difference": result.mean,
            "t 95% low": result.t_low, "t 95% high": result.t_high,
            "bootstrap 95% low": result.boot_low, "bootstrap 95% high": result.boot_high,
            "unchanged": float(np.mean(unchanged)), "runs": result.n,
        })  # fmt: skip
    return rows


def method_groups(models: Sequence[dict]) -> dict[str, list[dict]]:
    """{method label: its models}, for the methods with models on two or more (seed, fold)
    pairs of one profile and corpus, scored on as many test items with the same seed (one
    model per pair)."""
    groups: dict[tuple, dict] = {}
    for m in models:
        if m["run"]:
            run = m["run"]
            key = (m["method"], m["profile"], run.get("corpus"), run.get("root"), m["items"],
                   m["seed"])  # fmt: skip
            groups.setdefault(key, {}).setdefault(_pair(m["run"]), m)
    out: dict[str, list[dict]] = {}
    for key, pairs in groups.items():
        if len(pairs) >= 2:
            name = f"{key[0]} (profile {key[1]}, {key[4]} test items, noise seed {key[5]})"
            while name in out:  # another corpus folder under the same label
                name += "'"
            out[name] = list(pairs.values())
    return out


def curve_points(models: Sequence[dict]) -> dict:
    """{"clean": UA, "gain": {dB: UA}, noise kind: {SNR dB: UA}} of models (their mean UA):
    the figure's line of a model or a method."""
    line: dict = {"clean": float(np.mean([m["clean_ua"] for m in models]))}
    for p in PERTURBATIONS:
        if p.kind not in ("gain", "white", "pink", "babble"):
            continue
        values = [m["records"][p.name]["paired"]["perturbed_ua"] for m in models
                  if p.name in m["records"]]  # fmt: skip
        if len(values) == len(models):
            line.setdefault(p.kind, {})[p.value] = float(np.mean(values))
    return line


def finalist_models(reports: Path) -> tuple[list[dict], bool]:
    """(the demonstration's finalist runs (issue 34) whose model file is in this cache, as
    their ser records; whether the finalists are chosen at all)."""
    from qat import demonstration
    from qat.saved import resolve_stored

    ser = runs.load_records(reports, kind="ser")
    grid = [c for m in demonstration.MODELS for c in demonstration.final_grid(m, ser)]
    keys = {runs.config_key(c.key_dict()) for c in grid}
    found = [r for r in ser if runs.config_key(r["config"]) in keys and r.get("model")
             and resolve_stored(r["model"]).is_file()]  # fmt: skip
    return found, bool(grid)


def _fmt(value: float, spec: str = ".3f") -> str:
    return format(value, spec)


FORMATS = {
    "UA": ".3f", "clean UA": ".3f", "UA difference": "+.3f", "95% low": "+.3f",
    "95% high": "+.3f", "t 95% low": "+.3f", "t 95% high": "+.3f",
    "bootstrap 95% low": "+.3f", "bootstrap 95% high": "+.3f", "unchanged": ".1%",
}  # fmt: skip


def write_page(reports: Path | None = None) -> Path:
    """reports/perturbations.md and reports/figures/perturbations.png, from the records only."""

    reports = Path(reports or paths.REPORTS)
    records = perturbation_records(reports)
    models = evaluated_models(records)
    finalists, chosen = finalist_models(reports)
    interval = f"{LEVEL:.0%}"
    described = ", ".join(f"`{p.name}`" for p in PERTURBATIONS)
    lines = [
        "# Perturbations: models under the recording chain",
        "",
        "Generated by `qat perturb --report-only` from the eval records of `qat perturb` under "
        "reports/runs/; do not edit by hand. `qat perturb --model PATH` scores a saved model on "
        "its own run's test split, clean and under each declared perturbation "
        f"(qat.perturb.PERTURBATIONS: {described}), and writes one record per perturbation.",
        "",
        f"- **Paired:** every item is scored clean and perturbed; scoring: {SCORING}.",
        "- **UA difference:** perturbed UA minus clean UA on the same items. For one model its "
        f"{interval} interval is the percentile bootstrap over items ({ITEM_BOOT} resamples; "
        "qat.stats.paired on per-item values weighted so that their mean is the UA). For a "
        f"method with models on several (seed, fold) pairs, the {interval} t-interval and "
        "bootstrap interval are over the pairs.",
        "- **unchanged:** the share of items whose perturbed prediction equals the clean one.",
        f"- **Noise and rooms:** each item's noise from a seed of (seed, uid); {ROOMS} simulated "
        f"rooms per RT60; babble mixes {TALKERS} other speakers than the item's (from the test "
        "split's speakers when it holds several, else the corpus's).",
        "",
        "## Which models",
        "",
    ]
    if finalists:
        evaluated = {runs.config_key(m["run"]) for m in models if m["run"]}
        done = [r for r in finalists if runs.config_key(r["config"]) in evaluated]
        lines.append(
            f"The demonstration's finalists (issue 34): {len(done)} of the {len(finalists)} "
            "finalist model files in this cache are evaluated here."
        )
        missing = [label_of(r["config"]) + f" (seed {r['config']['seed']})" for r in finalists
                   if runs.config_key(r["config"]) not in evaluated]  # fmt: skip
        if missing:
            lines.append(f"Not yet evaluated: {io.summarise(missing, 12)}.")
    else:
        why = ("no finalist run has a model file in this cache" if chosen
               else "the selection has not chosen them")  # fmt: skip
        so_far = (
            "the models below are the ones `qat perturb --model` has evaluated so far, not the "
            "finalists, and the page says nothing yet about the methods' robustness"
            if models
            else "no model has been evaluated yet (`qat perturb --model PATH`)"
        )
        lines.append(
            f"The demonstration's finalists (issue 34) are not trained yet ({why}): {so_far}."
        )
    if finalists and not models:
        lines += ["", "No model has been evaluated yet: run `qat perturb --model PATH`."]
    lines.append("")
    if models:
        lines.append(tables.markdown_table([{
            "model": m["method"], "seed": (m["run"] or {}).get("seed"),
            "fold": ((m["run"] or {}).get("split") or {}).get("fold"),
            "profile": m["profile"], "file": f"`{m['path']}`", "test items": m["items"],
            "clean UA": m["clean_ua"], "perturbations": len(m["records"]),
        } for m in models], formats={"clean UA": ".3f"}))  # fmt: skip

    groups = method_groups(models)
    if groups:
        lines += ["", "## Methods over (seed, fold) pairs", ""]
        for method, group in groups.items():
            lines += [f"### {method}: {len(group)} runs", ""]
            rows = method_rows(group)
            lines += [tables.markdown_table(rows, formats={k: v for k, v in FORMATS.items()
                                                           if k in rows[0]}), ""]  # fmt: skip
    if models:
        lines += ["", "## Each model", ""]
    for m in models:
        lines += [f"### {run_name(m)}: {m['items']} test items, noise seed {m['seed']}", "",
                  f"Clean UA {_fmt(m['clean_ua'])} on {m['items']} test items "
                  f"(`{m['path']}`).", ""]  # fmt: skip
        rows = model_rows(m)
        lines += [tables.markdown_table(rows, formats={k: v for k, v in FORMATS.items()
                                                       if k in rows[0]}), ""]  # fmt: skip

    checks = {m["path"]: m["records"] for m in models}
    lines += level.section(runs.load_records(reports, kind="ser"), checks)

    curves = {f"{method} (mean of {len(group)} runs)": curve_points(group)
              for method, group in groups.items()}  # fmt: skip
    grouped = {id(m) for group in groups.values() for m in group}
    for m in models:
        if id(m) not in grouped:
            curves[run_name(m)] = curve_points([m])
    curves = {k: v for k, v in curves.items() if len(v) > 1}
    if curves:
        fig = plots.perturbation_curves(curves)
        io.save_figure(fig, reports / "figures", FIGURE)
        lines += ["## UA against gain and SNR", "",
                  f"![UA against gain and SNR](figures/{FIGURE}.png)", ""]  # fmt: skip
    target = reports / PAGE
    io.write_text(target, "\n".join(lines).rstrip("\n") + "\n")
    return target
