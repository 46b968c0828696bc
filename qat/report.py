"""The report pipeline: run notebooks 01-05 headless, then write reports/README.md.

The README's tables and figures are built from the run records under reports/runs/ only, so
every number in it can be traced to a record (and to the command that made it); nothing is
typed by hand. Tables come from qat.tables, figures from qat.plots, saved as PNG under
reports/figures/; every file is written atomically (qat.io), so an interrupted report never
leaves a half-written README or image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from tqdm.auto import tqdm

from qat import io, notebooks, paths, plots, runs, tables

README = "README.md"
FIGURES = "figures"


def run_pipeline(profile: str = "cpu", names: Sequence[str] = notebooks.PIPELINE) -> Path:
    """Execute the notebooks `names` (default: qat.notebooks.PIPELINE) in order with papermill
    (parameters {"profile": profile}) into reports/, then write reports/README.md from the run
    records of that profile."""
    from qat.config import PROFILES, check_choice

    check_choice("profile", profile, PROFILES)
    for name in tqdm(names, desc=f"notebooks ({profile} profile)"):
        notebooks.run_notebook(notebooks.notebook_path(name), {"profile": profile})
    return write_readme(paths.REPORTS, profile=profile)


def _figure(fig: Figure, figures: Path, name: str) -> str:
    """Save `fig` as figures/<name>.png (qat.io.save_figure); the README-relative path."""
    io.save_figure(fig, figures, name)
    return f"{FIGURES}/{name}.png"


# ---------------------------------------------------------------- markdown


def _image(path: str, caption: str) -> str:
    return f"![{caption}]({path})"


def _command(text: str) -> str:
    return f"Reproduce: `{text}`"


# ---------------------------------------------------------------- sections


def _header(records: list[dict], profile: str | None, reports_dir: Path) -> str:
    versions = sorted({str(r.get("code_version")) for r in records if r.get("code_version")})
    executed = sorted(p.name for p in reports_dir.glob("0*.ipynb"))
    lines = [
        "# qat report",
        "",
        f"Written by `qat report --profile {profile or 'cpu'}` (`make demo` runs the cpu "
        f"profile) from the {len(records)} run records under `reports/runs/`"
        + (f" of the `{profile}` profile" if profile else "")
        + ". Every number below is read from those records.",
    ]
    if len(versions) == 1:
        lines += ["", f"Code version: `{versions[0]}`."]
    elif versions:  # one line however many: each record names its own
        dirty = sum(v.endswith("+dirty)") for v in versions)
        lines += ["", f"Code versions: {len(versions)} ({dirty} with uncommitted changes, "
                  "marked +dirty); each record's `code_version` names its own."]  # fmt: skip
    if executed:
        lines += ["", "Executed notebooks: " + ", ".join(f"[{n}]({n})" for n in executed)]
    return "\n".join(lines)


def _corpus_section(profile: str) -> str:
    return "\n".join(
        [
            "## 1. Corpus",
            "",
            "Class balance, the emotion x word and emotion x speaker co-occurrence of the "
            "training split, spectrograms and audio players are in the executed notebook "
            "[01_corpus.ipynb](01_corpus.ipynb).",
            "",
            _command(f"qat run notebooks/01_corpus.ipynb -p profile {profile}"),
        ]
    )


def _upstream_section(records: list[dict], figures: Path, profile: str) -> str:
    lines = ["## 2. Upstream networks: word and speaker recognition, RH-emo", ""]
    lines.append(_command(f"qat run notebooks/02_orthogonal_networks.ipynb -p profile {profile}"))
    lines.append("")
    lines.append(_command(f"qat run notebooks/03_quaternion_embeddings.ipynb -p profile {profile}"))
    lines += ["", tables.upstream_markdown(records)]
    rhemo = [r for r in records if r.get("kind") == "rhemo"]
    if rhemo:
        path = _figure(plots.rhemo_heads(rhemo), figures, "rhemo_heads")
        lines += ["", _image(path, "RH-emo heads per configuration")]
    return "\n".join(lines)


def _setup_model(record: dict) -> tuple:
    return record["config"].get("setup"), record["config"].get("model")


def _validation_ua(record: dict) -> float:
    """A run's validation UA: the decorrelated validation set's when recorded, else the best
    epoch's; never test."""
    chosen = (record.get("selection_set") or {}).get("ua")
    if chosen is not None:
        return chosen
    return max((h.get("val_ua") or 0.0 for h in record.get("history") or []), default=0.0)


def _pairing(record: dict) -> tuple:
    """What a baseline must share with a method run to be its pair: seed, fold and split."""
    config = record["config"]
    split = config.get("split") or {}
    return config.get("seed"), split.get("fold"), split.get("rho"), split.get("factor")


def _showcase_pairs(ser: list[dict]) -> list[list[dict]]:
    """Per (setup, model): the method run with the best validation UA (never test) and the
    baseline of the same (seed, fold, split), else the baseline of the lowest seed; the pair
    whose curves and confusion matrices the README shows, baseline first."""
    pairs = []
    keys = sorted({_setup_model(r) for r in ser}, key=str)
    for setup, model in keys:
        mine = [r for r in ser if _setup_model(r) == (setup, model)]
        base = sorted(
            (r for r in mine if r["config"].get("method") == "baseline"),
            key=lambda r: r["config"].get("seed", 0),
        )
        others = [r for r in mine if r["config"].get("method") != "baseline"]
        if not others:
            pairs.append(base[:1])
            continue
        best = max(others, key=_validation_ua)
        paired = [b for b in base if _pairing(b) == _pairing(best)]
        pairs.append([*(paired or base)[:1], best])
    return pairs


def _pair_heading(pair: list[dict]) -> str:
    setup, model = _setup_model(pair[0])
    lead = f"### {model} model, {setup} setup: "
    if len(pair) == 1:
        return lead + "one run (its curves, not a result)"
    seed, fold = _pairing(pair[0])[:2]
    whose = "on the same (seed, fold)"
    if _pairing(pair[0]) != _pairing(pair[1]):
        whose = f"of seed {seed}, fold {fold} (no baseline shares the method run's)"
    return (
        lead + "the method run with the best validation UA and a baseline run "
        f"{whose} (one run each: their curves, not a result)"
    )


def _compared_setups(ser: list[dict]) -> list[str]:
    """Setups with a method run to compare against the baseline. A setup holding baselines
    only (e.g. the unconfounded control) appears as the ceiling line of the others' figures;
    if no setup has a method run, every setup is shown."""
    setups = sorted({r["config"].get("setup") for r in ser}, key=str)
    compared = [
        s for s in setups
        if any(r["config"].get("setup") == s and r["config"].get("method") != "baseline"
               for r in ser)
    ]  # fmt: skip
    return compared or setups


def _comparison_section(ser: list[dict], figures: Path, profile: str) -> str:
    lines = ["## 3. Anti-transfer and the other invariance methods vs the baseline", ""]
    lines.append(
        _command(
            f"qat run notebooks/04_anti_transfer.ipynb -p profile {profile} -p method at "
            "-p tap conv2_1 -p beta 1.0"
        )
        + f" (one run: `qat train --profile {profile} --method at --tap conv2_1`)"
    )
    if not ser:
        return "\n".join([*lines, "", "_No SER run records yet._"])
    table = tables.configuration_table(ser)
    table = table.dropna(axis=1, how="all")  # e.g. no worst-group column without a confound
    lines += [
        "",
        "Test metrics (fractions; UA is the headline), one row per configuration: "
        "the mean over its (seed, fold) runs, with the SD and the 95% t-interval of UA, "
        "clipped to [0, 1] (a configuration with one run has none). Each run's record is named "
        "by its configuration with that seed and fold (`qat train ... --seed S --fold F`).",
        "",
    ]
    lines.append(tables.traced_markdown(table))
    for setup in _compared_setups(ser):
        fig = plots.method_comparison(ser, setup=setup)
        lines += ["", _image(_figure(fig, figures, f"method_comparison_{setup}"), setup)]
    drawable = [r for r in ser if r.get("history") and r["metrics"].get("confusion")]
    for pair in _showcase_pairs(drawable):
        if pair[0]["config"].get("setup") not in _compared_setups(ser):
            continue
        name = "_".join(map(str, _setup_model(pair[0])))
        lines += ["", _pair_heading(pair), ""]
        lines.append(
            _image(_figure(plots.learning_curves(pair), figures, f"curves_{name}"), "curves")
        )
        lines.append(
            _image(
                _figure(plots.confusion_matrices(pair), figures, f"confusion_{name}"),
                "confusion matrices",
            )
        )
    return "\n".join(lines)


def _sweep_section(ser: list[dict], figures: Path, profile: str) -> str:
    lines = ["## 4. Layer sweep: anti-transfer at each tap, real vs quaternion", ""]
    lines.append(_command(f"qat run notebooks/05_layer_sweep.ipynb -p profile {profile}"))
    if not ser or tables.sweep_table(ser).empty:
        return "\n".join([*lines, "", "_No single-tap anti-transfer records yet._"])
    columns = [
        "group", "tap", "runs", "UA", "pairs", "UA gain", "UA gain 95% low", "UA gain 95% high",
        "step time (ms)", "baseline step time (ms)", "peak memory (MiB)",
        "baseline peak memory (MiB)", "records",
    ]  # fmt: skip
    lines += [
        "",
        "One row per configuration and tap: mean UA over its runs; the mean UA gain over the "
        "matching baseline of the same (seed, fold), with its 95% t-interval, over the runs that "
        "have one (pairs). Step times are each run's own, timed alone under whatever load the "
        "machine had then, so they do not compare across rows; reports/demonstration.md times "
        "the steps side by side.",
        "",
        tables.traced_markdown(tables.sweep_summary(ser)[columns], ("group", "tap")),
    ]
    lines += ["", _image(_figure(plots.tap_sweep(ser), figures, "tap_sweep"), "sweep")]
    lines += ["", _image(_figure(plots.tradeoff(ser), figures, "tradeoff"), "trade-off")]
    return "\n".join(lines)


def _probe_section(ser: list[dict], figures: Path, profile: str) -> str:
    lines = ["## 5. Invariance probe: how much orthogonal information each tap keeps", ""]
    lines.append(
        "Accuracy of a linear probe decoding the orthogonal label (word or speaker) of held-out "
        "items from each tap of the trained network; lower means more invariant. Recorded by "
        f"every SER run (e.g. `qat train --profile {profile}`)."
    )
    probed = [r for r in ser if r.get("probe")]
    if not probed:
        return "\n".join([*lines, "", "_No probe accuracies recorded yet._"])
    lines += ["", "One row per configuration: the mean over its runs.", ""]
    lines.append(tables.traced_markdown(tables.probe_table(probed)))
    shown = [r for pair in _showcase_pairs(probed) for r in pair]
    lines += ["", _image(_figure(plots.probe_by_tap(shown), figures, "probe_by_tap"), "probe")]
    return "\n".join(lines)


def write_readme(reports_dir: str | os.PathLike | None = None, profile: str | None = None) -> Path:
    """Write <reports_dir>/README.md (and its PNGs under <reports_dir>/figures/) from the run
    records in <reports_dir>/runs/, keeping only the records of `profile` when given."""
    reports_dir = Path(reports_dir or paths.REPORTS)
    if not reports_dir.is_dir():
        raise FileNotFoundError(
            f"reports_dir={str(reports_dir)!r} is not a folder; expected the reports folder "
            "holding runs/ (run `qat report` or a notebook first)"
        )
    records = runs.load_records(reports_dir)
    if profile is not None:
        records = [r for r in records if r.get("config", {}).get("profile") == profile]
    figures = reports_dir / FIGURES
    figures.mkdir(exist_ok=True)
    shown = profile or "cpu"
    ser = tables.ser_records(records)
    sections = [
        _header(records, profile, reports_dir),
        _corpus_section(shown),
        _upstream_section(records, figures, shown),
        _comparison_section(ser, figures, shown),
        _sweep_section(ser, figures, shown),
        _probe_section(ser, figures, shown),
    ]
    target = reports_dir / README
    text = "\n\n".join(sections) + "\n"
    io.write_text(target, text)
    return target


def update_readme_block(name: str, lines: list[str]) -> None:
    """Replace the block between `<!-- name:start -->` and `<!-- name:end -->` in the top-level
    README.md with `lines` (the results a page's script measured; never typed)."""
    readme = paths.ROOT / "README.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text() if readme.exists() else ""
    if start not in text or end not in text:
        return
    block = "\n".join([start, "", *lines, "", end]) if lines else f"{start}\n{end}"
    before, rest = text.split(start, 1)
    io.write_text(readme, before + block + rest.split(end, 1)[1])
