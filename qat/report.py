"""The report pipeline: run notebooks 01-05 headless, then write reports/README.md.

The README's tables and figures are built from the run records under reports/runs/ only, so
every number in it can be traced to a record (and to the command that made it); nothing is
typed by hand. Figures are saved as PNG under reports/figures/; every file is written
atomically (temporary file, then os.replace), so an interrupted report never leaves a
half-written README or image.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from qat import paths, plots, runs

NOTEBOOKS = (
    "01_corpus",
    "02_orthogonal_networks",
    "03_quaternion_embeddings",
    "04_anti_transfer",
    "05_layer_sweep",
)
README = "README.md"
FIGURES = "figures"


def run_pipeline(profile: str = "cpu", notebooks: Sequence[str] = NOTEBOOKS) -> Path:
    """Execute the notebooks in order with papermill (parameters {"profile": profile}) into
    reports/, then write reports/README.md from the run records of that profile."""
    from qat import cli
    from qat.experiments import PROFILES, check_choice

    check_choice("profile", profile, PROFILES)
    for name in tqdm(notebooks, desc=f"notebooks ({profile} profile)"):
        cli.run_notebook(cli.NOTEBOOKS / f"{name}.ipynb", {"profile": profile})
    return write_readme(paths.REPORTS, profile=profile)


# ---------------------------------------------------------------- atomic files


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call write(temporary path) in the target's folder, then rename it onto `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save_figure(fig: Figure, figures: Path, name: str) -> str:
    """Save `fig` as figures/<name>.png; returns the README-relative path."""
    _write_atomic(figures / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return f"{FIGURES}/{name}.png"


# ---------------------------------------------------------------- markdown


def _is_metric(column: str) -> bool:
    """Columns holding fractions (UA, accuracy, shares): printed with 3 decimals."""
    keys = ("UA", "WA", "F1", "accuracy", "share", "shortcut", " @ ")
    return any(k in column for k in keys)


def _cell(value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if column == "UA gain":
            return f"{value:+.3f}"
        return f"{value:.3f}" if _is_metric(column) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table: fractions with 3 decimals, gains signed, other
    numbers with 4 significant digits, missing values as a dash."""
    if table.empty:
        return "_(no rows)_"
    columns = [str(c) for c in table.columns]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in table.itertuples(index=False):
        lines.append(
            "| " + " | ".join(_cell(v, c) for v, c in zip(row, columns, strict=True)) + " |"
        )
    return "\n".join(lines)


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
    if versions:
        lines += ["", "Code versions: " + ", ".join(f"`{v}`" for v in versions)]
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


def _orthogonal_section(records: list[dict], figures: Path, profile: str) -> str:
    networks = [r for r in records if str(r.get("kind", "")).startswith("orthogonal-")]
    lines = ["## 2. Orthogonal networks (word and speaker recognition)", ""]
    lines.append(_command(f"qat run notebooks/02_orthogonal_networks.ipynb -p profile {profile}"))
    if not networks:
        return "\n".join([*lines, "", "_No orthogonal-network records yet._"])
    lines += ["", markdown_table(plots.pretrained_table(networks))]
    fig = plots.learning_curves(networks, title="orthogonal networks")
    lines += ["", _image(_save_figure(fig, figures, "orthogonal_learning_curves"), "curves")]
    return "\n".join(lines)


def _rhemo_section(records: list[dict], figures: Path, profile: str) -> str:
    rhemo = [r for r in records if r.get("kind") == "rhemo"]
    lines = ["## 3. RH-emo quaternion embeddings", ""]
    lines.append(_command(f"qat run notebooks/03_quaternion_embeddings.ipynb -p profile {profile}"))
    if not rhemo:
        return "\n".join([*lines, "", "_No RH-emo records yet._"])
    lines += ["", markdown_table(plots.rhemo_table(rhemo))]
    fig = plots.learning_curves(rhemo, title="RH-emo: reconstruction and heads (validation)")
    lines += ["", _image(_save_figure(fig, figures, "rhemo_history"), "RH-emo history")]
    for i, r in enumerate(rhemo):
        path = _save_figure(plots.rhemo_heads(r), figures, f"rhemo_heads_{i}")
        lines += ["", _image(path, f"RH-emo heads: {plots.run_label(r)}")]
    return "\n".join(lines)


def _setup_model(record: dict) -> tuple:
    return record["config"].get("setup"), record["config"].get("model")


def _showcase_pairs(ser: list[dict]) -> list[list[dict]]:
    """Per (setup, model): the baseline (lowest seed) and the best-UA method run, the pair
    whose curves and confusion matrices the README shows."""
    pairs = []
    keys = sorted({_setup_model(r) for r in ser}, key=str)
    for setup, model in keys:
        mine = [r for r in ser if _setup_model(r) == (setup, model)]
        base = sorted(
            (r for r in mine if r["config"].get("method") == "baseline"),
            key=lambda r: r["config"].get("seed", 0),
        )
        others = [r for r in mine if r["config"].get("method") != "baseline"]
        pair = base[:1] + ([max(others, key=lambda r: r["metrics"]["ua"])] if others else [])
        pairs.append(pair)
    return pairs


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
    lines = ["## 4. Anti-transfer and the other invariance methods vs the baseline", ""]
    lines.append(
        _command(
            f"qat run notebooks/04_anti_transfer.ipynb -p profile {profile} -p method at "
            "-p tap conv2_1 -p beta 1.0"
        )
        + f" (one run: `qat train --profile {profile} --method at --tap conv2_1`)"
    )
    if not ser:
        return "\n".join([*lines, "", "_No SER run records yet._"])
    table = plots.results_table(sorted(ser, key=plots.configuration_order))
    confound = [c for c in plots.CONFOUND_COLUMNS if table[c].notna().any()]
    lines += ["", "Test metrics (fractions; UA is the headline):", ""]
    lines.append(markdown_table(table[["run", *plots.METRIC_COLUMNS, *confound]]))
    lines += ["", "Cost of training (one step on one batch, and the whole run):", ""]
    lines.append(markdown_table(table[["run", *plots.RESOURCE_COLUMNS]]))
    for setup in _compared_setups(ser):
        fig = plots.method_comparison(ser, setup=setup)
        lines += ["", _image(_save_figure(fig, figures, f"method_comparison_{setup}"), setup)]
    for pair in _showcase_pairs(ser):
        if pair[0]["config"].get("setup") not in _compared_setups(ser):
            continue
        setup, model = pair[0]["config"].get("setup"), pair[0]["config"].get("model")
        name = f"{setup}_{model}"
        lines += ["", f"### {model} model, {setup} setup: baseline vs the best method run", ""]
        lines.append(
            _image(_save_figure(plots.learning_curves(pair), figures, f"curves_{name}"), "curves")
        )
        lines.append(
            _image(
                _save_figure(plots.confusion_matrices(pair), figures, f"confusion_{name}"),
                "confusion matrices",
            )
        )
    return "\n".join(lines)


def _sweep_section(ser: list[dict], figures: Path, profile: str) -> str:
    lines = ["## 5. Layer sweep: anti-transfer at each tap, real vs quaternion", ""]
    lines.append(_command(f"qat run notebooks/05_layer_sweep.ipynb -p profile {profile}"))
    table = plots.sweep_table(ser) if ser else pd.DataFrame()
    if table.empty:
        return "\n".join([*lines, "", "_No single-tap anti-transfer records yet._"])
    columns = [
        "group", "tap", "seed", "UA", "baseline UA", "UA gain", "step time (ms)",
        "baseline step time (ms)", "peak memory (MiB)", "baseline peak memory (MiB)",
    ]  # fmt: skip
    lines += ["", markdown_table(table[columns])]
    lines += ["", _image(_save_figure(plots.tap_sweep(ser), figures, "tap_sweep"), "sweep")]
    lines += ["", _image(_save_figure(plots.tradeoff(ser), figures, "tradeoff"), "trade-off")]
    return "\n".join(lines)


def _probe_section(ser: list[dict], figures: Path, profile: str) -> str:
    lines = ["## 6. Invariance probe: how much orthogonal information each tap keeps", ""]
    lines.append(
        "Accuracy of a linear probe decoding the orthogonal label (word or speaker) of held-out "
        "items from each tap of the trained network; lower means more invariant. Recorded by "
        f"every SER run (e.g. `qat train --profile {profile}`)."
    )
    probed = [r for r in ser if r.get("probe")]
    if not probed:
        return "\n".join([*lines, "", "_No probe accuracies recorded yet._"])
    probed = sorted(probed, key=plots.configuration_order)
    lines += ["", markdown_table(plots.probe_table(probed))]
    shown = [r for pair in _showcase_pairs(probed) for r in pair]
    lines += ["", _image(_save_figure(plots.probe_by_tap(shown), figures, "probe_by_tap"), "probe")]
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
    ser = plots.ser_records(records)
    sections = [
        _header(records, profile, reports_dir),
        _corpus_section(shown),
        _orthogonal_section(records, figures, shown),
        _rhemo_section(records, figures, shown),
        _comparison_section(ser, figures, shown),
        _sweep_section(ser, figures, shown),
        _probe_section(ser, figures, shown),
    ]
    target = reports_dir / README
    text = "\n\n".join(sections) + "\n"
    _write_atomic(target, lambda tmp: Path(tmp).write_text(text))
    return target
