"""The report pipeline: run notebooks 01-05 headless, then write reports/README.md; and the
tour `make demo` runs.

The README's tables and figures are built from the run records under reports/runs/ only, so
every number in it can be traced to a record (and to the command that made it); nothing is
typed by hand. Its lead is the verdict, quoted from reports/demonstration.md (written from the
same records by `qat demonstration`), then links to every page; the per-configuration tables
sit in collapsed sections. Tables come from qat.tables, figures from qat.plots, saved as PNG
under figures/; every file is written atomically (qat.io), so an interrupted report never
leaves a half-written README or image. Pages are kept per profile (qat.notebooks.pages_folder):
a run at another profile than the committed one writes under reports/<profile>/.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from matplotlib.figure import Figure

from qat import io, notebooks, paths, plots, runs, tables

README = "README.md"
FIGURES = "figures"
# The other pages of reports/ (each written by its own command), linked from the README's lead.
PAGES = {
    "demonstration.md": "which method removes the word shortcut, against its placebo and the "
    "field's baselines, with paired intervals (`qat demonstration`)",
    "instrument.md": "the instrument: corpus, recipe, folds, noise, upstream networks "
    "(`qat instrument`)",
    "benchmarks.md": "speed and memory of anti-transfer, quaternion vs real, the solvers "
    "(`python -m qat.bench all`)",
    "robustness.md": "what each bad input does (`python scripts/robustness_report.py`)",
    "perturbations.md": "saved models under another gain, noise, rooms and an 8 kHz chain "
    "(`qat perturb --model PATH`; `qat perturb --report-only` rewrites it)",
}


def run_pipeline(
    profile: str = "cpu",
    names: Sequence[str] = notebooks.PIPELINE,
    log: TextIO | None = None,
    parameters: dict | None = None,
) -> Path:
    """Execute the notebooks `names` (default: qat.notebooks.PIPELINE) in order with papermill
    (parameters {"profile": profile, **parameters[name]}) into the profile's pages folder,
    then write its README.md from the run records of that profile. `log`: which notebook and
    which cell runs, and the kernels' progress bars (qat.notebooks.run_notebook)."""
    from qat.config import PROFILES, check_choice

    check_choice("profile", profile, PROFILES)
    parameters = parameters or {}
    for i, name in enumerate(names, 1):
        if log is not None:
            print(f"== notebook {i}/{len(names)}: {name} ({profile} profile)", file=log, flush=True)
        params = {"profile": profile, **parameters.get(name, {})}
        notebooks.run_notebook(notebooks.notebook_path(name), params, **_log(log))
    return write_readme(paths.REPORTS, profile=profile)


def _log(log: TextIO | None) -> dict:
    return {} if log is None else {"log": log}


# `make demo` (`qat report --tour`) in minutes on a fresh clone: everything that trains runs
# at the smallest profile (the tour), into reports/<TOUR_PROFILE>/; the results come from the
# committed records: notebooks 04 and 05 on the committed profile at one (seed, fold) pair of
# the previous demonstration (its records now under reports/runs/v2/, until the fair race's
# exist), served from its records (records_only: nothing trains), and the
# committed pages rebuilt from the records. The full instrument stays with `qat instrument`
# and `qat demonstration`.
TOUR_PROFILE = "smoke"
RESULTS = {
    "04_anti_transfer": dict(method="at", tap="conv3_3", seed=200, fold=0, records_only=True),
    "05_layer_sweep": dict(seeds=[200], fold=0, records_only=True),
}


def run_tour(log: TextIO | None = sys.stderr) -> list[Path]:
    """What `make demo` runs: the tour (notebooks 01-05 at TOUR_PROFILE, trained small, with
    their own pages under reports/<TOUR_PROFILE>/), then the committed results (RESULTS, on
    the committed profile's records, nothing trained) and reports/README.md rebuilt from
    them. Returns the pages written."""
    start = time.monotonic()
    say = (lambda text: print(text, file=log, flush=True)) if log is not None else print
    say(f"== the tour: notebooks 01-05 at the {TOUR_PROFILE} profile (small, trained here)")
    tour = run_pipeline(TOUR_PROFILE, log=log)
    committed = notebooks.COMMITTED_PROFILE
    say(f"== the results: notebooks {', '.join(RESULTS)} on the committed {committed} records")
    for name, params in RESULTS.items():
        params = {"profile": committed, **params}
        notebooks.run_notebook(notebooks.notebook_path(name), params, **_log(log))
    readme = write_readme(paths.REPORTS, profile=committed)
    say(f"== done in {(time.monotonic() - start) / 60:.1f} min: {readme} (the answer), {tour}")
    return [readme, tour]


def _figure(fig: Figure, figures: Path, name: str) -> str:
    """Save `fig` as figures/<name>.png (qat.io.save_figure); the README-relative path."""
    io.save_figure(fig, figures, name)
    return f"{FIGURES}/{name}.png"


# ---------------------------------------------------------------- markdown


def _image(path: str, caption: str) -> str:
    return f"![{caption}]({path})"


def _command(text: str) -> str:
    return f"Reproduce: `{text}`"


def _collapsed(summary: str, body: str) -> str:
    """`body` (Markdown, e.g. a wide table) in a collapsed section: the page stays readable,
    every number is one click away."""
    return "\n".join([f"<details><summary>{summary}</summary>", "", body, "", "</details>"])


# ---------------------------------------------------------------- the lead


def verdict(reports_dir: Path) -> list[str]:
    """The answer, quoted from the "Short answer" of reports_dir/demonstration.md (written from
    the records by `qat demonstration`): its headline per model (bold), the finalists that gain
    on the headline's setting, the layer sweep and the targets; [] without that page."""
    page = Path(reports_dir) / "demonstration.md"
    if not page.is_file():
        return []
    text = page.read_text()
    if "## Short answer" not in text:
        return []
    answer = text.split("## Short answer", 1)[1].split("\n## ", 1)[0]
    bullets = [line for line in answer.splitlines() if line.startswith("- ")]
    heads = [line for line in bullets if line.startswith("- **")]
    settings = {line[4:].split(":", 1)[0] for line in heads}  # "real, word-confounded, rho 0.9"
    gains = [line for line in bullets
             if line[2:].split(":", 1)[0] in settings and "finalists whose" in line]  # fmt: skip
    sweep = [line for line in bullets if ": the best tap by mean gain" in line]
    goals = [line for line in bullets if line.startswith("- Targets:")]
    return heads + gains + sweep + goals


def _lead(reports_dir: Path, pages_dir: Path, profile: str | None) -> list[str]:
    """The verdict (the committed profile's pages only) and a link to every other page."""
    lines = []
    answer = verdict(reports_dir) if pages_dir == reports_dir else []
    if answer:
        lines += ["## The answer", "",
                  "Quoted from the short answer of [demonstration.md](demonstration.md), which "
                  "`qat demonstration --report-only` writes from the same records (paired 95% "
                  "intervals of the test UA difference):", "", *answer, ""]  # fmt: skip
    elif pages_dir != reports_dir:
        lines += [f"These pages hold the `{profile}` profile's runs only; the committed answer "
                  "is in [../README.md](../README.md).", ""]  # fmt: skip
    pages = [(name, what) for name, what in PAGES.items() if (pages_dir / name).is_file()]
    if pages:
        lines += ["## Pages", "", *(f"- [{name}]({name}): {what}" for name, what in pages), ""]
    return lines


# ---------------------------------------------------------------- sections


def _header(records: list[dict], profile: str | None, pages_dir: Path) -> str:
    versions = sorted({str(r.get("code_version")) for r in records if r.get("code_version")})
    executed = sorted(p.name for p in pages_dir.glob("0*.ipynb"))
    lines = [
        f"Written by `qat report --profile {profile or 'cpu'}` from the {len(records)} run "
        "records under `reports/runs/`"
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


def _notebook_link(pages_dir: Path, name: str) -> str:
    """A link to the executed notebook when this folder holds it, else its name."""
    return f"[{name}]({name})" if (pages_dir / name).is_file() else f"`{name}` (not run here yet)"


def _corpus_section(profile: str, pages_dir: Path) -> str:
    return "\n".join(
        [
            "## 1. Corpus",
            "",
            "Class balance, the emotion x word and emotion x speaker co-occurrence of the "
            "training split, spectrograms and audio players are in the executed notebook "
            f"{_notebook_link(pages_dir, '01_corpus.ipynb')}.",
            "",
            _command(f"qat run notebooks/01_corpus.ipynb -p profile {profile}"),
        ]
    )


def _upstream_section(records: list[dict], figures: Path, profile: str) -> str:
    lines = ["## 2. Upstream networks: word and speaker recognition, RH-emo", ""]
    lines.append(_command(f"qat run notebooks/02_orthogonal_networks.ipynb -p profile {profile}"))
    lines.append("")
    lines.append(_command(f"qat run notebooks/03_quaternion_embeddings.ipynb -p profile {profile}"))
    rhemo = [r for r in records if r.get("kind") == "rhemo"]
    if rhemo:
        path = _figure(plots.rhemo_heads(rhemo), figures, "rhemo_heads")
        lines += ["", _image(path, "RH-emo heads per configuration")]
    lines += ["", _collapsed("the upstream networks, one row per configuration",
                             tables.upstream_markdown(records))]  # fmt: skip
    return "\n".join(lines)


def _setup_model(record: dict) -> tuple:
    return record["config"].get("setup"), record["config"].get("model")


def _split_of(record: dict) -> tuple:
    """The split a run trained on, beyond its setup: rho and the confounding factor."""
    split = record["config"].get("split") or {}
    return split.get("rho"), split.get("factor")


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


def _main_split(runs_: list[dict]) -> tuple:
    """The split (rho, factor) most method runs trained on: the showcase stays on one split,
    so its figures never mix runs of unrelated splits."""
    counts: dict[tuple, int] = {}
    for r in runs_:
        counts[_split_of(r)] = counts.get(_split_of(r), 0) + 1
    return max(counts, key=lambda k: (counts[k], str(k)))


def _showcase_pairs(ser: list[dict]) -> list[list[dict]]:
    """Per (setup, model), on the split most of that setup's method runs trained on: the method
    run with the best validation UA (never test) and the baseline of the same (seed, fold,
    split), else the baseline of the lowest seed on that split; the pair whose curves and
    confusion matrices the README shows, baseline first."""
    pairs = []
    keys = sorted({_setup_model(r) for r in ser}, key=str)
    for setup, model in keys:
        mine = [r for r in ser if _setup_model(r) == (setup, model)]
        others = [r for r in mine if r["config"].get("method") != "baseline"]
        split = _main_split(others or mine)
        base = sorted(
            (r for r in mine if r["config"].get("method") == "baseline" and _split_of(r) == split),
            key=lambda r: r["config"].get("seed", 0),
        )
        others = [r for r in others if _split_of(r) == split]
        if not others:
            pairs.append(base[:1])
            continue
        best = max(others, key=_validation_ua)
        paired = [b for b in base if _pairing(b) == _pairing(best)]
        pairs.append([*(paired or base)[:1], best])
    return [pair for pair in pairs if pair]


def _pair_heading(pair: list[dict]) -> str:
    setup, model = _setup_model(pair[0])
    rho, factor = _split_of(pair[0])
    split = f", {factor}-confounded at rho {rho:g}" if rho is not None and factor else ""
    lead = f"### {model} model, {setup} setup{split}: "
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
    for setup in _compared_setups(ser):
        fig = plots.method_comparison(ser, setup=setup)
        lines += ["", _image(_figure(fig, figures, f"method_comparison_{setup}"), setup)]
    table = tables.configuration_table(ser)
    table = table.dropna(axis=1, how="all")  # e.g. no worst-group column without a confound
    lines += [
        "",
        _collapsed(
            "test metrics, one row per configuration",
            "Test metrics (fractions; UA is the headline), one row per configuration: the mean "
            "over its (seed, fold) runs, with the SD and the 95% t-interval of UA, clipped to "
            "[0, 1] (a configuration with one run has none). Each run's record is named by its "
            "configuration with that seed and fold (`qat train ... --seed S --fold F`).\n\n"
            + tables.traced_markdown(table),
        ),
    ]
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


def _full_sweeps(ser: list[dict]) -> list[dict]:
    """The records of the sweep groups (method, orthogonal task, beta, model) that cover the
    most taps, and their baselines: the figure shows whole sweeps, the table every group."""
    table = tables.sweep_table(ser)
    covered = table.groupby("group")["tap"].nunique()
    kept = set(covered[covered == covered.max()].index)
    names = {r for ids in table[table["group"].isin(kept)]["records"] for r in ids}
    models = set(table[table["group"].isin(kept)]["model"])
    return [
        r
        for r in ser
        if tables.record_id(r) in names
        or (r["config"].get("method") == "baseline" and r["config"].get("model") in models)
    ]


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
    shown = _full_sweeps(ser)
    lines += [
        "",
        "The sweeps that cover the most taps: the UA gain over the baseline of the same (seed, "
        "fold) with its 95% t-interval, and the peak memory of a training step. Step times are "
        "compared side by side in [demonstration.md](demonstration.md) (each run's own step "
        "time, in the table below, was timed alone under whatever load the machine had then).",
        "",
        _image(_figure(plots.tap_sweep(shown, costs=("memory",)), figures, "tap_sweep"), "sweep"),
        "",
        _collapsed(
            "every swept configuration and tap",
            "One row per configuration and tap: mean UA over its runs; the mean UA gain over "
            "the matching baseline of the same (seed, fold), with its 95% t-interval, over the "
            "runs that have one (pairs).\n\n"
            + tables.traced_markdown(tables.sweep_summary(ser)[columns], ("group", "tap")),
        ),
    ]
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
    compared = _compared_setups(probed)
    shown = [r for pair in _showcase_pairs(probed) for r in pair
             if r["config"].get("setup") in compared]  # fmt: skip
    lines += ["", "Below: the runs of section 3's curves (one pair per model, on one split)."]
    lines += ["", _image(_figure(plots.probe_by_tap(shown), figures, "probe_by_tap"), "probe")]
    lines += ["", _collapsed("the probe of every configuration (mean over its runs)",
                             tables.traced_markdown(tables.probe_table(probed)))]  # fmt: skip
    return "\n".join(lines)


def write_readme(reports_dir: str | os.PathLike | None = None, profile: str | None = None) -> Path:
    """Write the README.md of `profile`'s pages (and its PNGs under figures/) from the run
    records in <reports_dir>/runs/, keeping only the records of `profile` when given. The pages
    go to qat.notebooks.pages_folder(profile): <reports_dir> itself for the committed profile
    (or None), <reports_dir>/<profile>/ for another, so that no other profile's run replaces
    the committed pages."""
    reports_dir = Path(reports_dir or paths.REPORTS)
    if not reports_dir.is_dir():
        raise FileNotFoundError(
            f"reports_dir={str(reports_dir)!r} is not a folder; expected the reports folder "
            "holding runs/ (run `qat report` or a notebook first)"
        )
    records = runs.load_records(reports_dir)
    if profile is not None:
        records = [r for r in records if r.get("config", {}).get("profile") == profile]
    pages_dir = notebooks.pages_folder(profile, reports_dir)
    figures = pages_dir / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    shown = profile or "cpu"
    ser = tables.ser_records(records)
    sections = [
        "# qat report",
        "\n".join(_lead(reports_dir, pages_dir, profile)).strip(),
        "## Runs\n\n" + _header(records, profile, pages_dir),
        _corpus_section(shown, pages_dir),
        _upstream_section(records, figures, shown),
        _comparison_section(ser, figures, shown),
        _sweep_section(ser, figures, shown),
        _probe_section(ser, figures, shown),
    ]
    target = pages_dir / README
    text = "\n\n".join(s for s in sections if s) + "\n"
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
