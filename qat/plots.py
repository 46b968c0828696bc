"""Figures built from run records (the JSON dicts under reports/runs/): figures only.

Every function takes records (or utterance records / arrays for the corpus figures) and returns
a matplotlib Figure with labelled axes and units; the records -> DataFrame code, run labels and
matching baselines live in qat.tables. Figures are made with matplotlib.figure.Figure, not
pyplot, so nothing accumulates in pyplot's global figure list and a notebook shows each figure
once (as the value of the cell). Numbers are never typed in: what a figure shows is read from
the records.

UA, WA and macro-F1 are fractions in [0, 1]; "UA gain" is the difference of two UAs (same
units). A run's matching baseline is the baseline record with the same corpus, setup, model,
seed, profile and split options.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from qat import tables

# The widest figure (inches): at the 110 dpi of the saved PNGs (qat.io.save_figure) about
# 1150 pixels, shown at a Markdown page's width (about 1000 pixels) with its text still
# readable; wider figures wrap their panels into rows instead.
PAGE_WIDTH = 10.5

# ---------------------------------------------------------------- training curves


def _panel_of(key: str) -> str:
    """Which panel (y axis) a history column belongs to: values on one scale share a panel."""
    if key.endswith("_loss"):
        return "cross-entropy loss"
    if key == "at":
        return "invariance term (before beta)"
    if key == "lr":
        return "learning rate"
    if key == "adversary":
        return "adversary loss"
    if "mse" in key:
        return "reconstruction MSE"
    if key.endswith(("_ua", "_acc", "_worst_group", "_balanced", "_majority")):
        return "accuracy (fraction)"
    return key


def _series_name(key: str, record: Mapping) -> str:
    """A history column's name in a legend: the invariance term is named by its method."""
    if key == "at":
        return {"cka": "CKA term"}.get(record["config"].get("method"), "cos² AT term")
    return key


def learning_curves(records, title: str | None = None) -> Figure:
    """Per-epoch history of one or more runs (SER, orthogonal networks or RH-emo): one panel per
    kind of quantity (loss, AT term, accuracy, reconstruction error), one colour per run (the
    figure's legend), one line style per quantity (each panel's legend); a thin dotted vertical
    line marks each SER run's selected epoch."""
    records = tables.check_records(records)
    panels: dict[str, list[str]] = {}
    for r in records:
        for row in r.get("history") or []:
            for key, value in row.items():
                if key in ("epoch", "stage") or not isinstance(value, int | float):
                    continue
                keys = panels.setdefault(_panel_of(key), [])
                if key not in keys:
                    keys.append(key)
    if not panels:
        raise ValueError("records: none has a per-epoch history to plot")
    # At most three panels a row: an RH-emo history has four kinds of quantity, and one strip
    # of them is too wide to read at page width.
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(min(4.2 * ncols, PAGE_WIDTH), 3.4 * nrows + 0.5), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = grid.flat[: len(panels)]
    for ax in grid.flat[len(panels) :]:
        ax.set_visible(False)
    last_epoch = max((h.get("epoch") or 0 for r in records for h in r.get("history") or []),
                     default=1)  # fmt: skip
    styles = ("-", "--", ":", "-.")
    labels = tables.unique_labels(records)
    for ax, (panel, keys) in zip(axes, panels.items(), strict=True):
        for i, (r, label) in enumerate(zip(records, labels, strict=True)):
            history = r.get("history") or []
            for j, key in enumerate(keys):
                points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
                if points:
                    x, y = zip(*points, strict=True)
                    ax.plot(
                        x,
                        y,
                        styles[j % len(styles)],
                        color=f"C{i % 10}",
                        marker=".",
                        label=f"{label}: {_series_name(key, r)}",
                    )
            if r.get("best_epoch") and panel == "cross-entropy loss":
                ax.axvline(r["best_epoch"], color=f"C{i % 10}", linestyle=":", linewidth=0.8)
        ax.set_xlabel("epoch")
        # Whole epochs only, and a margin of half an epoch: a one-epoch run is one point at 1,
        # not an axis from 0.945 to 1.055.
        ax.set_xlim(0.5, last_epoch + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        quantities = [Line2D([], [], color="0.35", linestyle=styles[j % len(styles)], marker=".",
                             label="invariance term" if key == "at" else key)
                      for j, key in enumerate(keys)]  # fmt: skip
        # Above the panel, never over its lines or the axis labels.
        ax.legend(handles=quantities, fontsize="x-small", loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)  # fmt: skip
    runs = [Line2D([], [], color=f"C{i % 10}", marker=".", label=label)
            for i, label in enumerate(labels)]  # fmt: skip
    if any(r.get("best_epoch") for r in records):
        runs.append(Line2D([], [], color="0.35", linestyle=":", linewidth=0.8,
                           label="vertical: the run's selected epoch"))  # fmt: skip
    fig.legend(handles=runs, loc="outside lower center", fontsize="small",
               ncols=min(len(runs), 2))  # fmt: skip
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------- confusion matrices


def confusion_matrix(record: Mapping, normalize: bool = True, ax=None) -> Figure:
    """Test confusion matrix of one SER run (rows: true emotion, columns: predicted), as the
    share of each true class (normalize=True, rows sum to 1) or as counts."""
    (record,) = tables.ser_only([record], "confusion_matrix")
    counts = np.asarray(record["metrics"]["confusion"], dtype=float)
    emotions = record["labels"]["emotions"]
    if counts.shape != (len(emotions), len(emotions)):
        raise ValueError(
            f"record {tables.run_label(record)!r}: confusion shape {counts.shape} does not match "
            f"{len(emotions)} emotions"
        )
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    else:
        values = counts
    if ax is None:
        fig = Figure(figsize=_confusion_size(emotions), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    sns.heatmap(
        pd.DataFrame(values, index=emotions, columns=emotions),
        ax=ax,
        annot=True,
        fmt=".2f" if normalize else ".0f",
        cmap="Blues",
        square=True,
        vmin=0,
        vmax=1 if normalize else None,
        cbar_kws={"label": "share of true class" if normalize else "utterances"},
    )
    _whole_names(ax)
    ax.set_xlabel("predicted emotion")
    ax.set_ylabel("true emotion")
    ax.set_title(f"{tables.run_label(record)}\nUA {record['metrics']['ua']:.3f}", fontsize="small")
    return fig


def _confusion_size(emotions: Sequence[str]) -> tuple[float, float]:
    """A confusion matrix's size: its cells, plus room for the longest emotion name written
    out whole (horizontally on the rows, at 30 degrees under the columns)."""
    longest = max((len(str(e)) for e in emotions), default=6)
    side = 0.55 * len(emotions)
    return side + 0.09 * longest + 2.0, side + 0.05 * longest + 1.4


def _whole_names(ax) -> None:
    """Row names horizontal and column names slanted: whole, never cut or overlapping."""
    ax.tick_params(axis="y", labelrotation=0)
    for label in ax.get_xticklabels():
        label.set(rotation=30, ha="right", rotation_mode="anchor")


def confusion_matrices(records, normalize: bool = True) -> Figure:
    """Confusion matrices of several SER runs side by side."""
    ser = tables.ser_only(records, "confusion_matrices")
    width, height = _confusion_size(ser[0]["labels"]["emotions"])
    ncols = min(len(ser), 2)  # two a row: three side by side are too small at page width
    nrows = math.ceil(len(ser) / ncols)
    fig = Figure(figsize=(min(width * ncols, PAGE_WIDTH), height * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for ax in grid.flat[len(ser) :]:
        ax.set_visible(False)
    for ax, r in zip(grid.flat, ser, strict=False):
        confusion_matrix(r, normalize=normalize, ax=ax)
    return fig


# ---------------------------------------------------------------- corpus figures


def class_balance(groups) -> Figure:
    """Utterances per emotion, one bar group per split part ({"train": [...], ...}) or for one
    list of utterance records."""
    if not isinstance(groups, Mapping):
        groups = {"all": list(groups)}
    counts = pd.DataFrame(
        {
            name: pd.Series([u.emotion for u in items]).value_counts()
            for name, items in groups.items()
        }
    ).fillna(0)
    if counts.empty:
        raise ValueError("groups: expected utterance records, got none")
    counts = counts.reindex(tables.ordered_values(counts.index, "emotion"))
    fig = Figure(figsize=(1.2 * len(counts) + 2, 3.4), layout="constrained")
    ax = fig.subplots()
    counts.plot.bar(ax=ax, rot=0)
    ax.set_xlabel("emotion")
    ax.set_ylabel("utterances")
    ax.set_title("class balance")
    ax.grid(axis="y", alpha=0.3)
    return fig


def cooccurrence_heatmap(utterances, column: str = "text", title: str | None = None) -> Figure:
    """Heatmap of emotion x `column` counts ("text" = word/sentence, or "speaker"): in a
    confounded training split each emotion's row concentrates on its own subset."""
    table = tables.cooccurrence_table(utterances, column=column)
    name = {"text": "word (text)", "speaker": "speaker"}.get(column, column)
    fig = Figure(
        figsize=(max(4.5, 0.22 * table.shape[1] + 2.5), 0.45 * table.shape[0] + 1.8),
        layout="constrained",
    )
    ax = fig.subplots()
    sns.heatmap(
        table,
        ax=ax,
        cmap="mako_r",
        cbar_kws={"label": "utterances"},
        linewidths=0.2,
        annot=table.size <= 150,
        fmt="d",
    )
    ax.set_xlabel(name)
    ax.set_ylabel("emotion")
    ax.set_title(title or f"emotion x {name}")
    return fig


def spectrogram_grid(
    spectrograms: Sequence[np.ndarray],
    titles: Sequence[str],
    hop_seconds: float,
    ncols: int = 4,
    bin_label: str = "mel band",
    value_label: str = "log mel power",
) -> Figure:
    """(frames, bins) spectrograms as images: time (s) across, frequency band up, one colour
    scale for all so their levels compare."""
    specs = [np.asarray(s, dtype=float) for s in spectrograms]
    if not specs or len(specs) != len(titles):
        raise ValueError(
            f"spectrograms ({len(specs)}) and titles ({len(titles)}): expected equal, non-zero"
        )
    if any(s.ndim != 2 for s in specs):
        raise ValueError("spectrograms: expected 2-D (frames, bins) arrays")
    if not hop_seconds > 0:
        raise ValueError(f"hop_seconds={hop_seconds!r}: expected the frame hop in seconds, > 0")
    ncols = min(ncols, len(specs))
    nrows = math.ceil(len(specs) / ncols)
    vmin = min(float(s.min()) for s in specs)
    vmax = max(float(s.max()) for s in specs)
    fig = Figure(figsize=(min(3.2 * ncols + 1, PAGE_WIDTH), 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for ax, s, title in zip(axes.flat, specs, titles, strict=False):
        extent = (0.0, s.shape[0] * hop_seconds, 0, s.shape[1])
        image = ax.imshow(
            s.T, origin="lower", aspect="auto", extent=extent, vmin=vmin, vmax=vmax, cmap="magma"
        )
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("time (s)")
        ax.set_ylabel(bin_label)
    for ax in axes.flat[len(specs) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, label=value_label, shrink=0.8)
    return fig


def embedding_axes(embeddings, titles: Sequence[str]) -> Figure:
    """RH-emo quaternion embeddings (n, 4, T', F'): one row per utterance, one column per
    axis (r: emotion, i: valence, j: arousal, k: dominance), one colour scale per axis."""
    z = np.asarray(embeddings, dtype=float)
    if z.ndim != 4 or z.shape[1] != 4:
        raise ValueError(f"embeddings: expected shape (n, 4, T', F'), got {z.shape}")
    if len(titles) != len(z):
        raise ValueError(f"titles: expected {len(z)} (one per embedding), got {len(titles)}")
    fig = Figure(figsize=(PAGE_WIDTH, 1.9 * len(z) + 1.4), layout="constrained")
    axes = fig.subplots(len(z), 4, squeeze=False, sharex=True, sharey=True)
    for col, axis_name in enumerate(tables.RHEMO_AXES):
        lo, hi = float(z[:, col].min()), float(z[:, col].max())
        for row in range(len(z)):
            ax = axes[row, col]
            image = ax.imshow(
                z[row, col].T, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="viridis"
            )
            if col == 0:
                ax.set_ylabel(f"{titles[row]}\nfrequency (bin)", fontsize="small")
        axes[0, col].set_title(axis_name)
        axes[-1, col].set_xlabel("time (embedding frame)")
        fig.colorbar(
            image,
            ax=axes[:, col],
            label=f"{axis_name[0]} activation",
            location="bottom",
            shrink=0.8,
        )
    return fig


def rhemo_heads(records) -> Figure:
    """Validation accuracy of RH-emo's four heads at the last epoch (emotion UA on r,
    binarised valence/arousal/dominance accuracy on i, j, k), one bar per head and RH-emo
    configuration (profile, setup, encoder): the mean over that configuration's RH-emos (one
    per split), their range as error bars. One compact figure however many RH-emos there
    are."""
    records = tables.check_records(records)
    groups: dict[str, list[np.ndarray]] = {}
    for r in records:
        last = (r.get("history") or [None])[-1]
        if last is None:
            raise ValueError("records: an RH-emo record has no history to read head accuracies")
        c = r["config"]
        name = " ".join(str(x) for x in (c.get("profile"), c.get("setup"),
                                          c.get("rhemo_encoder") or "published") if x)  # fmt: skip
        values = [tables.as_float(last.get(k)) for k in tables.RHEMO_HEAD_KEYS]
        groups.setdefault(name, []).append(np.array(values))
    fig = Figure(figsize=(max(7.5, 1.1 * len(groups) + 6.0), 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(groups)
    x = np.arange(len(tables.RHEMO_AXES))
    for i, (name, rows) in enumerate(sorted(groups.items())):
        values = np.array(rows)
        mean = np.nanmean(values, axis=0)
        spread = [mean - np.nanmin(values, axis=0), np.nanmax(values, axis=0) - mean]
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, mean, width, yerr=spread, capsize=3,
               color=f"C{i % 10}", label=f"{name} (n={len(rows)})")  # fmt: skip
    ax.set_xticks(x, tables.RHEMO_AXES)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("embedding axis: head")
    ax.set_ylabel("validation accuracy (fraction)")
    fig.suptitle(f"RH-emo heads, last epoch: mean and range of {len(records)} RH-emo(s)")
    fig.legend(fontsize="x-small", loc="outside right upper")  # never over the bars
    return fig


# ---------------------------------------------------------------- comparisons and sweeps


def method_comparison(
    records,
    metric: str = "ua",
    setup: str | None = None,
    ceiling_setup: str | None = "unconfounded",
) -> Figure:
    """`metric` per configuration, one panel per model side by side, on one setup (default:
    the most common setup of the records): a horizontal bar per configuration at the mean over
    its (seed, fold) runs, coloured by method, with each run as a dot. Dashed line: that
    model's baseline on the setup; dotted line: the ceiling, the baseline trained on
    `ceiling_setup` (e.g. the unconfounded control of a confounded split), when such a record
    exists."""
    ser = tables.ser_only(records, "method_comparison")
    if metric not in tables.METRIC_NAMES:
        raise ValueError(f"metric={metric!r}: expected one of {tuple(tables.METRIC_NAMES)}")
    if setup is None:
        setups = pd.Series([r["config"].get("setup") for r in ser])
        setup = setups.value_counts().index[0]
    on_setup = [r for r in ser if r["config"].get("setup") == setup]
    if not on_setup:
        raise ValueError(f"setup={setup!r}: no SER record on that setup")
    models = sorted({r["config"].get("model") for r in on_setup})
    panels = {}
    for model in models:
        groups: dict[str, list[Mapping]] = defaultdict(list)
        for r in sorted(on_setup, key=tables.configuration_order):
            if r["config"].get("model") == model:
                groups[tables.run_label(r, without=("model", "seed", "setup"))].append(r)
        panels[model] = groups
    rows = max(len(g) for g in panels.values())
    fig = Figure(figsize=(min(6.5 * len(models), PAGE_WIDTH), 0.28 * rows + 2.0),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, (model, groups) in zip(axes, panels.items(), strict=True):
        values = [[tables.metric_value(r, metric) for r in runs] for runs in groups.values()]
        means = [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in values]
        colors = [METHOD_COLORS.get(runs[0]["config"].get("method"), "C7")
                  for runs in groups.values()]  # fmt: skip
        y = np.arange(len(groups))
        ax.barh(y, means, color=colors, height=0.7)
        for i, v in enumerate(values):
            ax.plot(v, np.full(len(v), float(i)), "k.", markersize=4, label="_run")
        ax.plot([], [], "k.", label="one (seed, fold) run")
        _reference_line(ax, groups.get("baseline", []), metric, "baseline", "k", "--")
        ceiling = [r for r in ser
                   if r["config"].get("setup") == ceiling_setup
                   and r["config"].get("model") == model]  # fmt: skip
        _reference_line(ax, ceiling, metric, f"ceiling (baseline on {ceiling_setup})", "C3", ":")
        ax.set_yticks(y, list(groups), fontsize="small")
        ax.invert_yaxis()  # the first configuration on top
        ax.set_xlabel(f"test {tables.METRIC_NAMES.get(metric, metric)} (fraction)")
        ax.set_ylabel("configuration")
        ax.set_title(f"{model} model, {setup} setup")
        ax.grid(axis="x", alpha=0.3)
    handles = {
        label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)
    }
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", fontsize="x-small",
               ncols=len(handles))  # fmt: skip
    return fig


METHOD_COLORS = {
    "baseline": "0.55",
    "ceiling": "0.3",
    "at": "C0",
    "cka": "C2",
    "dann": "C1",
    "cdann": "C3",
    "reweight": "C4",
    "subsample": "C5",
    "groupdro": "C6",
    "jtt": "C8",
    "dfr": "C9",
}


def probe_profiles(rows: Mapping[str, Sequence[Mapping]], what: str = "word probe") -> Figure:
    """Mean linear-probe accuracy per probed tap (over seeds), one line per configuration,
    coloured by method, one panel per model. `rows` maps a model name to summary rows with
    "configuration", "method", "seeds" and "probe" = {tap: accuracy}.
    Lower means the confounding factor is less decodable there."""
    panels = {model: list(r) for model, r in rows.items() if r}
    if not panels:
        raise ValueError("rows: no configuration to plot")
    fig = Figure(figsize=(5.2 * len(panels), 4.6), layout="constrained")
    for ax, (model, mine) in zip(
        fig.subplots(1, len(panels), squeeze=False, sharey=True)[0], panels.items(), strict=True
    ):
        for r in mine:
            taps = sorted((t for t, v in r["probe"].items() if v is not None), key=tables.tap_order)
            style = ":" if "placebo" in r["configuration"] else "-"
            ax.plot(
                taps,
                [r["probe"][t] for t in taps],
                marker="o",
                linestyle=style,
                color=METHOD_COLORS.get(r["method"], "C7"),
                label=f"{r['configuration']} ({r['seeds']})",
            )
        ax.set_title(f"{model} VGG16")
        ax.set_xlabel("probed tap")
        ax.set_ylabel(f"{what} accuracy (fraction, mean over runs)")
        ax.grid(alpha=0.3)
        # Tap names slanted: thirteen of them side by side overlap at page width.
        ax.tick_params(axis="x", labelrotation=45, labelsize="small")
        for tick in ax.get_xticklabels():
            tick.set_ha("right")
    # The configurations are the same in every panel: one legend under them, off the lines.
    handles = {label: h for ax in fig.axes
               for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}  # fmt: skip
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", fontsize="x-small",
               ncols=4)  # fmt: skip
    return fig


def _reference_line(ax, records, metric: str, label: str, color: str, style: str) -> None:
    """A vertical line at the mean `metric` of the baseline runs among `records`."""
    values = [
        tables.metric_value(r, metric) for r in records if r["config"].get("method") == "baseline"
    ]
    values = [v for v in values if np.isfinite(v)]
    if values:
        ax.axvline(float(np.mean(values)), color=color, linestyle=style, label=label)


SWEEP_COSTS = {
    "step_time": ("step time (ms)", "step time (ms, each run timed alone)"),
    "memory": ("peak memory (MiB)", "peak memory per step (MiB)"),
}


def tap_sweep(records, costs: Sequence[str] = ("step_time", "memory")) -> Figure:
    """Layer sweep: UA gain over the matching baseline (mean over (seed, fold) runs, 95%
    t-interval) against the tap, then each of `costs` ("step_time": each run's own step time,
    timed alone, so only comparable within one sweep run together; "memory": peak memory of a
    step), one panel under the other, one line per configuration (e.g. real and quaternion
    AT). Dashed lines: the baselines' costs (without anti-transfer). A tap a configuration did
    not run is a gap in its line, never bridged."""
    for cost in costs:
        if cost not in SWEEP_COSTS:
            raise ValueError(f"costs: {cost!r} is not one of {tuple(SWEEP_COSTS)}")
    summary = tables.sweep_summary(records)
    taps = sorted(summary["tap"].unique(), key=tables.tap_order)
    groups = list(summary.groupby("group", sort=True))
    fig = Figure(figsize=(9.0, 2.6 * (1 + len(costs)) + 0.3 * math.ceil(len(groups) / 2) + 0.6),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(1 + len(costs), 1, sharex=True, squeeze=False)[:, 0]
    gain_ax, cost_axes = axes[0], axes[1:]
    for i, (group, part) in enumerate(groups):
        part = part.set_index("tap").reindex(taps)  # NaN where the group has no run: a gap
        x = np.arange(len(taps), dtype=float)
        color, marker = f"C{i % 10}", "osD^v<>p"[i % 8]
        gain = part["UA gain"].to_numpy(dtype=float)
        spread = np.nan_to_num(  # the 95% t-interval; none for a tap with one run
            [gain - part["UA gain 95% low"].to_numpy(dtype=float),
             part["UA gain 95% high"].to_numpy(dtype=float) - gain]
        )  # fmt: skip
        gain_ax.errorbar(x, gain, yerr=spread, color=color, marker=marker, capsize=3,
                         label=group)  # fmt: skip
        for ax, cost in zip(cost_axes, costs, strict=True):
            column = SWEEP_COSTS[cost][0]
            ax.plot(x, part[column].to_numpy(dtype=float), color=color, marker=marker)
            base = np.nanmean(part[f"baseline {column}"].to_numpy(dtype=float))
            if np.isfinite(base):
                ax.axhline(base, color=color, linestyle="--", alpha=0.7)
    gain_ax.axhline(0.0, color="k", linewidth=0.8)
    gain_ax.set_ylabel("UA gain over baseline\n(fraction, 95% CI)")
    for ax, cost in zip(cost_axes, costs, strict=True):
        ax.set_ylabel(SWEEP_COSTS[cost][1].replace(" (", "\n(", 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlabel("anti-transfer tap")
    axes[-1].set_xticks(range(len(taps)), taps, rotation=30, ha="right")
    handles, labels = gain_ax.get_legend_handles_labels()
    if costs:
        handles.append(Line2D([], [], color="0.4", linestyle="--"))
        labels.append("dashed: the configuration's baseline")
    fig.legend(handles, labels, loc="outside lower center", fontsize="small", ncols=2)
    return fig


COSTS = {
    "step_time": ("step time (ms)", "step time (ms, each run timed alone)"),
    "memory": ("peak memory (MiB)", "peak memory per step (MiB)"),
    "flops": ("GFLOPs/step", "GFLOPs per training step"),
}


def tradeoff(records, cost: str = "step_time") -> Figure:
    """Gain vs cost: one point per (configuration, tap), x = the cost of a training step
    (`cost`: "step_time", "memory" or "flops"), y = UA gain over the matching baseline; points
    up and to the left are the good compromises."""
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r}: expected one of {tuple(COSTS)}")
    column, xlabel = COSTS[cost]
    summary = tables.sweep_summary(records)
    summary = summary[np.isfinite(summary["UA gain"].to_numpy(dtype=float))]  # has a baseline
    fig = Figure(figsize=(8.4, 4.4), layout="constrained")
    ax = fig.subplots()
    if summary.empty:
        ax.text(0.5, 0.5, "no tap run has a baseline of its own (seed, fold) yet",
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
    for i, (group, part) in enumerate(summary.groupby("group", sort=True)):
        ax.scatter(
            part[column].to_numpy(dtype=float),
            part["UA gain"].to_numpy(dtype=float),
            color=f"C{i % 10}",
            label=group,
        )
        for _, row in part.iterrows():
            ax.annotate(
                row["tap"],
                (row[column], row["UA gain"]),
                fontsize="x-small",
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("UA gain over baseline (fraction)")
    ax.set_title("gain vs cost per AT tap")
    ax.grid(alpha=0.3)
    if len(summary):
        fig.legend(loc="outside lower center", fontsize="small", ncols=2)
    return fig


def probe_by_tap(records) -> Figure:
    """Invariance probe: accuracy of a linear probe decoding the orthogonal label (word or
    speaker, held-out items) from each probed tap, one panel per (label, model), one line per
    run in it. Every panel spans the same taps; a tap a run did not probe is a gap in its line,
    never bridged. Runs whose curves coincide (e.g. DFR, which retrains only the last layer,
    and its baseline) stay visible by their markers and line styles. Lower is more invariant;
    anti-transfer should push the curve down."""
    ser = [r for r in tables.ser_only(records, "probe_by_tap") if r.get("probe")]
    if not ser:
        raise ValueError("records: no SER record has probe accuracies")
    names = dict(zip(map(id, ser), tables.unique_labels(ser), strict=True))
    panels: dict[tuple, list] = defaultdict(list)
    for r in ser:
        for label in r["probe"]:
            panels[(label, r["config"].get("model"))].append(r)
    keys = sorted(panels, key=str)
    taps = sorted({t for r in ser for by_tap in r["probe"].values() for t in by_tap},
                  key=tables.tap_order)  # fmt: skip
    ncols = min(len(keys), 2)
    nrows = math.ceil(len(keys) / ncols)
    entries = max(len(v) for v in panels.values())  # the legend above each panel grows the row
    fig = Figure(figsize=(5.0 * ncols, (3.9 + 0.16 * entries) * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax in grid.flat[len(keys) :]:
        ax.set_visible(False)
    styles = ("-", "--", ":", "-.")
    for ax, (label, model) in zip(grid.flat, keys, strict=False):
        for i, r in enumerate(panels[(label, model)]):
            by_tap = r["probe"][label]
            y = [tables.as_float(by_tap[t]) if t in by_tap else np.nan for t in taps]
            ax.plot(range(len(taps)), y, marker="osD^v<>p"[i % 8], linestyle=styles[i % 4],
                    markerfacecolor="none" if i % 2 else None, color=f"C{i % 10}",
                    label=names[id(r)])  # fmt: skip
        ax.set_xticks(range(len(taps)), taps, rotation=45, ha="right", fontsize="small")
        ax.set_xlabel("probed tap")
        ax.set_ylabel(f"{label} probe accuracy (fraction)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        # Above the panel, titled by it: never over the lines, the tap names or a title.
        ax.legend(title=f"{model} VGG16: {label} probe", fontsize="x-small", loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), frameon=False)  # fmt: skip
    return fig


# ---------------------------------------------------------------- the instrument


def pilot_curves(groups: Mapping[str, Sequence[Mapping]]) -> Figure:
    """Per-epoch mean (line) and range (band) over each group's runs of the training loss, the
    validation UA and the test UA (recorded for analysis only), one colour per group (e.g. a
    candidate recipe and model): whether training has flattened by the last epoch."""
    keys = (
        ("train_loss", "training loss (cross-entropy)"),
        ("val_ua", "validation UA (fraction)"),
        ("test_ua", "test UA, analysis only (fraction)"),
    )
    fig = Figure(figsize=(PAGE_WIDTH, 3.8), layout="constrained")
    axes = fig.subplots(1, len(keys))
    for i, (name, records) in enumerate(groups.items()):
        for ax, (key, label) in zip(axes, keys, strict=True):
            rows = [[h.get(key) for h in r.get("history") or []] for r in records]
            rows = [row for row in rows if row and None not in row]
            if not rows:
                continue
            n = min(len(row) for row in rows)
            values = np.array([row[:n] for row in rows], dtype=float)
            epochs = np.arange(1, n + 1)
            ax.plot(epochs, values.mean(0), color=f"C{i % 10}", label=f"{name} ({len(rows)})")
            ax.fill_between(epochs, values.min(0), values.max(0), color=f"C{i % 10}", alpha=0.15)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    return fig


def paired_runs(pairs: Mapping[str, tuple[Mapping, Mapping]]) -> Figure:
    """For each model, the baseline and ceiling test UA of every (seed, fold), joined by a line:
    the confound gap run by run, and how much runs vary."""
    fig = Figure(figsize=(min(4.2 * len(pairs), PAGE_WIDTH), 3.8), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, (model, (base, ceil)) in zip(axes, pairs.items(), strict=True):
        for j, key in enumerate(sorted(set(base) & set(ceil), key=str)):
            ua = [base[key]["metrics"]["ua"], ceil[key]["metrics"]["ua"]]
            ax.plot([0, 1], ua, "o-", color=f"C{j % 10}", label=f"seed {key[0]}, fold {key[1]}")
        ax.set_xticks([0, 1], ["baseline\n(confounded)", "ceiling\n(unconfounded)"])
        ax.set_xlim(-0.3, 1.3)
        ax.set_ylabel("test UA (fraction)")
        ax.set_title(f"{model} VGG16")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="x-small")
    return fig


# ---------------------------------------------------------------- the demonstration


def forest(rows_by_model: Mapping[str, Sequence[Mapping]], title: str = "") -> Figure:
    """Paired UA difference against the baseline with its 95% interval, one row per finalist
    (the ceiling is the gap), one panel per model side by side; placebos are hollow markers
    right under their method, colours mark the information regime. `rows`: compare()'s rows
    ("finalist", "UA gain", "gain 95% low", "gain 95% high", "information")."""
    panels = {
        m: [r for r in rows if r.get("UA gain") is not None] for m, rows in rows_by_model.items()
    }
    panels = {m: rows for m, rows in panels.items() if rows}
    if not panels:
        raise ValueError("rows: no finalist has a paired UA difference against the baseline yet")
    regimes = sorted({r["information"] for rows in panels.values() for r in rows})
    colour = {regime: f"C{i % 10}" for i, regime in enumerate(regimes)}
    height = 1.2 + 0.32 * max(len(rows) for rows in panels.values())
    fig = Figure(figsize=(min(6.0 * len(panels), PAGE_WIDTH), height), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=False)[0]
    for ax, (model, rows) in zip(axes, panels.items(), strict=True):
        for y, r in enumerate(reversed(rows)):
            low, high = r["UA gain"] - r["gain 95% low"], r["gain 95% high"] - r["UA gain"]
            hollow = r["finalist"].endswith("placebo")
            ax.errorbar(
                r["UA gain"],
                y,
                xerr=[[low], [high]],
                fmt="o",
                capsize=3,
                color=colour[r["information"]],
                markerfacecolor="white" if hollow else colour[r["information"]],
            )
        ax.set_yticks(range(len(rows)), [r["finalist"] for r in reversed(rows)])
        ax.axvline(0, color="0.3", linewidth=1)
        ax.set_xlabel("UA difference vs the baseline\n(fraction; paired 95% interval)")
        ax.set_ylabel("finalist")
        ax.set_title(f"{model} VGG16")
        ax.grid(alpha=0.3, axis="x")
    handles = [Line2D([], [], marker="o", linestyle="", color=colour[g], label=g) for g in regimes]
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            color="0.4",
            markerfacecolor="white",
            label="placebo (random network)",
        )
    )
    # One column: the regimes' long names side by side would be wider than the page.
    fig.legend(handles=handles, loc="outside lower center", fontsize="x-small", ncols=1)
    if title:
        fig.suptitle(title)
    return fig


def diagnosis(rows: Sequence[Mapping], within: float) -> Figure:
    """Left: each network's ceiling minus the real ceiling on the same (seed, fold) pairs, with
    its 95% interval, and the margin the quaternion one should stay within; right: its step
    time relative to the real network's. `rows`: qat.diagnosis.rows with a "_vs_real"
    PairedResult."""
    fig = Figure(figsize=(10.5, 1.4 + 0.45 * len(rows)), layout="constrained")
    gain, cost = fig.subplots(1, 2, sharey=True, width_ratios=(2, 1))
    names = [r["network"] for r in rows]
    for y, r in enumerate(rows):
        d = r["_vs_real"]
        gain.errorbar(d.mean, y, xerr=[[d.mean - d.t_low], [d.t_high - d.mean]], fmt="o",
                      capsize=3, color="C0")  # fmt: skip
        if r["step time vs real"]:
            cost.barh(y, r["step time vs real"], color="C1")
    gain.axvline(0, color="0.3", linewidth=1)
    gain.axvline(-within, color="C3", linestyle="--", linewidth=1, label=f"-{within} UA")
    gain.set_yticks(range(len(rows)), names)
    gain.invert_yaxis()
    gain.set_xlabel("ceiling UA minus the real ceiling (fraction; paired 95% interval)")
    gain.legend(fontsize="x-small", loc="lower right")
    cost.axvline(1, color="0.3", linewidth=1)
    cost.set_xlabel("step time / the real network's (ratio)")
    for ax in (gain, cost):
        ax.grid(alpha=0.3, axis="x")
    return fig


def layer_sweep(rows_by_model: Mapping[str, Sequence[Mapping]], taps: Sequence[str]) -> Figure:
    """The layer sweep: per tap, the UA gain of AT over the baseline with its 95% interval,
    and the step time (timed side by side, qat.costs; a gap where it was not) and peak memory
    of AT at that tap, one line per model. `taps`: the network's taps in order; a model whose
    sweep is partial leaves gaps at the same place."""
    fig = Figure(figsize=(PAGE_WIDTH, 4.5), layout="constrained")
    axes = gain_ax, time_ax, memory_ax = fig.subplots(1, 3, sharex=True)
    shown = [t for t in taps if any(r["tap"] == t for rows in rows_by_model.values() for r in rows)]
    for i, (model, rows) in enumerate(rows_by_model.items()):
        if not rows:
            continue
        x = [shown.index(r["tap"]) for r in rows]
        gains = [r["UA gain"] for r in rows]
        low = [g - r["gain 95% low"] for g, r in zip(gains, rows, strict=True)]
        high = [r["gain 95% high"] - g for g, r in zip(gains, rows, strict=True)]
        gain_ax.errorbar(
            x, gains, yerr=[low, high], fmt="o-", capsize=3, color=f"C{i}", label=model
        )
        times = [np.nan if r["step time (ms)"] is None else r["step time (ms)"] for r in rows]
        time_ax.plot(x, times, "o-", color=f"C{i}", label=model)
        memory_ax.plot(x, [r["peak memory (MiB)"] for r in rows], "o-", color=f"C{i}", label=model)
    gain_ax.axhline(0, color="0.3", linewidth=1)
    gain_ax.set_ylabel("UA gain vs baseline (fraction, 95% CI)")
    time_ax.set_ylabel("train step time (ms, side by side)")
    if not any(r["step time (ms)"] is not None for rows in rows_by_model.values() for r in rows):
        time_ax.text(0.5, 0.5, "not yet timed side by side", ha="center", va="center",
                     transform=time_ax.transAxes)  # fmt: skip
    memory_ax.set_ylabel("train step peak memory (MiB)")
    for ax in axes:
        ax.set_xticks(range(len(shown)), shown, rotation=60, fontsize="small")
        ax.set_xlabel("anti-transfer tap")
        ax.grid(alpha=0.3)
    handles, labels = gain_ax.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", fontsize="small", ncols=len(labels) or 1
    )  # under the panels, never over the error bars
    return fig


# ---------------------------------------------------------------- cross-corpus evaluation


def _eval_record(record: Mapping) -> Mapping:
    """`record` if it is a cross-corpus "eval" record (qat.evaluate.evaluate_corpus)."""
    if not isinstance(record, Mapping) or record.get("kind") != "eval":
        kind = record.get("kind") if isinstance(record, Mapping) else type(record).__name__
        raise ValueError(f"record: expected a cross-corpus eval record (kind 'eval'), got {kind!r}")
    return record


def _recalls(confusion) -> np.ndarray:
    """Per-class recall from a confusion matrix (rows true, columns predicted): the diagonal
    over the row sums; NaN for a class without test items."""
    counts = np.asarray(confusion, dtype=float)
    totals = counts.sum(axis=1)
    return np.divide(np.diag(counts), totals, out=np.full(len(counts), np.nan), where=totals > 0)


def _model_name(record: Mapping) -> str:
    model = record["model"]
    return model.get("label") or str(model["path"]).rsplit("/", 1)[-1]


def cross_corpus_confusion(record: Mapping, normalize: bool = True) -> Figure:
    """Confusion matrix of a saved model on another corpus (an "eval" record): rows the true
    emotion after the mapping, columns the predicted one, over the emotions the model and the
    corpus share; as the share of each true class (normalize=True, rows sum to 1) or counts."""
    record = _eval_record(record)
    emotions = record["labels"]["emotions"]
    counts = np.asarray(record["metrics"]["confusion"], dtype=float)
    if counts.shape != (len(emotions), len(emotions)):
        raise ValueError(
            f"eval record: confusion shape {counts.shape} does not match {len(emotions)} emotions"
        )
    totals = counts.sum(axis=1, keepdims=True)
    values = (
        np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
        if normalize
        else counts
    )
    fig = Figure(figsize=_confusion_size(emotions), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(
        pd.DataFrame(values, index=emotions, columns=emotions),
        ax=ax, annot=True, fmt=".2f" if normalize else ".0f", cmap="Blues", square=True,
        vmin=0, vmax=1 if normalize else None,
        cbar_kws={"label": "share of true class" if normalize else "utterances"},
    )  # fmt: skip
    _whole_names(ax)
    ax.set_xlabel("predicted emotion")
    ax.set_ylabel("true emotion (after mapping)")
    ax.set_title(
        f"{_model_name(record)} on {record['config']['corpus']}\n"
        f"UA {record['metrics']['ua']:.3f}, {record['items']['kept']} utterances",
        fontsize="small",
    )
    return fig


def recall_comparison(record: Mapping, in_corpus: Mapping | None = None) -> Figure:
    """Per-emotion recall of a saved model on another corpus (an "eval" record) beside its
    recall on the test split of the corpus it was trained on (`in_corpus`: the training run's
    record; None: the cross-corpus bars alone), over the emotions the two corpora share. Recalls
    are read from the records' confusion matrices (diagonal over row sums); on the other corpus
    the answer is restricted to the shared emotions, in-corpus it is over all of the model's."""
    record = _eval_record(record)
    emotions = record["labels"]["emotions"]
    folder = str(record["config"]["root"]).rstrip("/").rsplit("/", 1)[-1]
    other = f"{record['config']['corpus']} at {folder} (cross-corpus)"
    bars = {f"{other}, UA {record['metrics']['ua']:.3f}": _recalls(record["metrics"]["confusion"])}
    if in_corpus is not None:
        own = list(in_corpus["labels"]["emotions"])
        recall = _recalls(in_corpus["metrics"]["confusion"])
        name = f"{in_corpus['config'].get('corpus', 'training corpus')} test split (in-corpus)"
        bars = {
            f"{name}, UA {in_corpus['metrics']['ua']:.3f}":
                np.array([recall[own.index(e)] if e in own else np.nan for e in emotions]),
            **bars,
        }  # fmt: skip
    width = 0.8 / len(bars)
    x = np.arange(len(emotions))
    fig = Figure(figsize=(1.3 * len(emotions) + 2.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for i, (label, heights) in enumerate(bars.items()):
        offset = (i - (len(bars) - 1) / 2) * width
        drawn = ax.bar(x + offset, heights, width, label=label, color=f"C{i}")
        ax.bar_label(drawn, fmt="%.2f", fontsize="x-small")
    ax.set_xticks(x, emotions)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("emotion (shared by both corpora)")
    ax.set_ylabel("recall (fraction)")
    ax.set_title(f"{_model_name(record)}: per-emotion recall", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", fontsize="x-small")
    return fig


# ---------------------------------------------------------------- perturbations


def perturbation_curves(lines: Mapping[str, Mapping]) -> Figure:
    """UA against gain and against SNR (qat.perturbed), one colour per model or method:
    `lines` {label: {"clean": UA, "gain": {dB: UA}, "white" | "pink" | "babble": {SNR dB:
    UA}}}. Left, UA against the gain with the clean UA at 0 dB; right, UA against the SNR, one
    line style and marker per noise. A dotted line at each clean UA is the reference."""
    noises = {"white": ("-", "o"), "pink": ("--", "s"), "babble": (":", "^")}
    if not any(k in line for line in lines.values() for k in ("gain", *noises)):
        raise ValueError("lines: no model has a gain or noise perturbation to plot")
    fig = Figure(figsize=(PAGE_WIDTH, 4.2), layout="constrained")
    gain_ax, snr_ax = fig.subplots(1, 2, sharey=True)
    for i, (label, line) in enumerate(lines.items()):
        colour = f"C{i % 10}"
        for ax in (gain_ax, snr_ax):
            ax.axhline(line["clean"], color=colour, linestyle=(0, (1, 3)), linewidth=1)
        if line.get("gain"):
            points = sorted({**line["gain"], 0.0: line["clean"]}.items())
            gain_ax.plot(*zip(*points, strict=True), "o-", color=colour, label=label)
        for noise, (style, marker) in noises.items():
            if line.get(noise):
                snr_ax.plot(*zip(*sorted(line[noise].items()), strict=True), marker=marker,
                            linestyle=style, color=colour)  # fmt: skip
    gain_ax.set_xlabel("gain (dB; 0 dB: clean)")
    snr_ax.set_xlabel("SNR (dB)")
    gain_ax.set_ylabel("UA (fraction)")
    gain_ax.set_title("level", fontsize="small")
    snr_ax.set_title("additive noise", fontsize="small")
    for ax in (gain_ax, snr_ax):
        ax.grid(alpha=0.3)
    snr_ax.legend(
        handles=[
            *(Line2D([], [], color="0.3", linestyle=s, marker=m, label=f"{n} noise")
              for n, (s, m) in noises.items()),
            Line2D([], [], color="0.3", linestyle=(0, (1, 3)), label="clean UA"),
        ],
        fontsize="x-small",
    )  # fmt: skip
    handles = [Line2D([], [], color=f"C{i % 10}", marker="o", label=label)
               for i, label in enumerate(lines)]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", fontsize="x-small",
               ncols=min(len(handles), 2))  # fmt: skip
    return fig
