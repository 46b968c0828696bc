"""Figures from small synthetic run records: labelled axes, and numbers that match an
independent computation from the records (float64, by hand). The record builders here are
shared with test_tables, test_widgets and test_demonstration."""

from __future__ import annotations

import numpy as np
import pytest

from qat import plots, tables
from qat.data.records import Utterance

EMOTIONS = ["neutral", "happy", "sad", "angry"]


def ser_record(rng, model="real", method="baseline", tap=None, seed=0, setup="confounded",
               ua=None, probe=True, confound=True, epochs=3):  # fmt: skip
    """A run record shaped like train_ser's, with random metrics and costs."""
    k = len(EMOTIONS)
    confusion = rng.integers(0, 20, size=(k, k))
    uses_at = method in ("at", "cka")
    config = {
        "corpus": "synthemo", "root": None, "setup": setup, "model": model, "method": method,
        "orthogonal": "word" if method != "baseline" else None,
        "taps": [tap] if uses_at else [], "beta": 1.0 if uses_at else None,
        "gram": "sample" if method == "at" else None,
        "lam": 1.0 if method.endswith("dann") else None,
        "init_from_orthogonal": False, "seed": seed, "profile": "smoke",
        "split": {"rho": 0.9, "factor": "word"},
    }  # fmt: skip
    history = [
        {"epoch": e + 1, "train_loss": float(rng.uniform(0.5, 2)),
         "val_loss": float(rng.uniform(0.5, 2)), "val_ua": float(rng.uniform(0.2, 0.8))}
        for e in range(epochs)
    ]  # fmt: skip
    if uses_at:
        for h in history:
            h["at"] = float(rng.uniform(0, 1))
    return {
        "kind": "ser",
        "config": config,
        "labels": {"emotions": EMOTIONS},
        "metrics": {
            "ua": float(rng.uniform(0.3, 0.8)) if ua is None else ua,
            "wa": float(rng.uniform(0.3, 0.8)),
            "macro_f1": float(rng.uniform(0.3, 0.8)),
            "confusion": confusion.tolist(),
        },
        "confound": {
            "congruent_ua": float(rng.uniform(0.5, 0.9)),
            "incongruent_ua": float(rng.uniform(0.1, 0.5)),
            "follows_shortcut": float(rng.uniform(0, 1)),
            "congruent_share_test": 0.25,
        }
        if confound
        else {},
        "probe": {"word": {t: float(rng.uniform(0, 1)) for t in ("conv5_3", "conv2_2")}}
        if probe
        else {},
        "history": history,
        "best_epoch": 2,
        "resources": {
            "params": int(rng.integers(1000, 10**6)),
            "flops_per_step": int(rng.integers(10**6, 10**10)),
            "peak_memory_bytes": int(rng.integers(10**6, 10**9)),
            "step_time_s": float(rng.uniform(0.01, 1)),
            "train_time_s": float(rng.uniform(1, 100)),
        },
    }


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def utterances(rng, n=60):
    words, speakers = ["yes", "no", "up"], ["s1", "s2"]
    return [
        Utterance(
            path=f"/x/{i}.wav",
            corpus="synthemo",
            emotion=str(rng.choice(EMOTIONS)),
            speaker=str(rng.choice(speakers)),
            text=str(rng.choice(words)),
            uid=f"u{i}",
        )
        for i in range(n)
    ]


def assert_labelled(fig):
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or not ax.get_visible():
            continue
        assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axes: {ax.get_title()!r}"
    assert_nothing_clipped(fig)


def assert_nothing_clipped(fig):
    """Everything drawn (labels, ticks, titles, legends) lies inside the saved figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    drawn = fig.get_tightbbox(renderer)  # inches, like the figure's size
    width, height = fig.get_size_inches()
    tol = 0.02
    assert drawn.x0 >= -tol and drawn.y0 >= -tol, f"cut off at the left or bottom: {drawn}"
    assert drawn.x1 <= width + tol and drawn.y1 <= height + tol, (
        f"cut off at the right or top: {drawn} in a {width} x {height} in figure"
    )


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    return renderer


def assert_legends_clear(fig):
    """No legend lies over a panel or a title (legends beside, above or under them)."""
    renderer = _drawn(fig)
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    titles = [t for ax in panels for t in (ax.title,) if t.get_text()]
    if fig._suptitle is not None:
        titles.append(fig._suptitle)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in panels:
            assert not box.overlaps(ax.get_window_extent(renderer)), f"legend over {ax}"
        for title in titles:
            assert not box.overlaps(title.get_window_extent(renderer)), "legend over a title"


def assert_ticks_apart(ax, axis="x"):
    """Tick labels do not overlap one another (e.g. thirteen tap names side by side): level
    labels' boxes are apart; slanted ones are spaced, across their slant, by more than a line
    of text."""
    import itertools
    import math

    renderer = _drawn(ax.figure)
    labels = [t for t in (ax.get_xticklabels() if axis == "x" else ax.get_yticklabels())
              if t.get_text()]  # fmt: skip
    for a, b in itertools.pairwise(labels):
        angle = math.radians(a.get_rotation() % 180)
        if axis == "y" or angle == 0:
            assert not a.get_window_extent(renderer).overlaps(b.get_window_extent(renderer)), (
                f"tick labels {a.get_text()!r} and {b.get_text()!r} overlap"
            )
            continue
        step = abs(ax.transData.transform((b.get_position()[0], 0))[0]
                   - ax.transData.transform((a.get_position()[0], 0))[0])  # fmt: skip
        height = renderer.points_to_pixels(a.get_fontsize())
        assert step * math.sin(angle) >= height, f"slanted labels {a.get_text()!r} overlap"


# ---------------------------------------------------------------- figures


def rhemo_record():
    return {
        "kind": "rhemo",
        "config": {"corpus": "synthemo", "setup": "confounded", "seed": 0},
        "history": [
            {"epoch": 1, "stage": "reconstruction", "val_reconstruction_mse": 0.9,
             "val_emotion_ua": 0.2},
            {"epoch": 2, "stage": "heads", "val_reconstruction_mse": 0.5, "val_emotion_ua": 0.6,
             "val_valence_acc": 0.7, "val_arousal_acc": 0.8, "val_dominance_acc": 0.65},
        ],
    }  # fmt: skip


def test_rhemo_heads_draws_the_last_epochs_head_accuracies():
    fig = plots.rhemo_heads(rhemo_record())
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [0.6, 0.7, 0.8, 0.65]
    assert_labelled(fig)


def test_learning_curves_plot_the_history_values(rng):
    records = [ser_record(rng), ser_record(rng, method="at", tap="conv2_1"),
               ser_record(rng, method="cka", tap="conv3_1")]  # fmt: skip
    fig = plots.learning_curves(records)
    assert_labelled(fig)
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}
    panels = {"cross-entropy loss", "accuracy (fraction)", "invariance term (before beta)"}
    assert set(by_label) == panels
    terms = [line.get_label() for line in by_label["invariance term (before beta)"].get_lines()]
    assert terms == ["[confounded] real at word@conv2_1 β=1: cos² AT term",
                     "[confounded] real cka word@conv3_1 β=1: CKA term"]  # fmt: skip
    lines = {line.get_label(): line for line in by_label["accuracy (fraction)"].get_lines()}
    line = lines["[confounded] real at word@conv2_1 β=1: val_ua"]
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(line.get_ydata(), [h["val_ua"] for h in records[1]["history"]])
    assert by_label["cross-entropy loss"].get_xlabel() == "epoch"
    quantities = [t.get_text() for t in by_label["cross-entropy loss"].get_legend().get_texts()]
    assert quantities == ["train_loss", "val_loss"]  # each panel's legend: its line styles
    runs = [t.get_text() for t in fig.legends[0].get_texts()]
    assert runs[:3] == tables.unique_labels(records)  # the figure's legend: a colour per run


def test_confusion_matrix_shows_row_normalised_counts(rng):
    record = ser_record(rng)
    fig = plots.confusion_matrix(record)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted emotion", "true emotion")
    assert_nothing_clipped(fig)
    counts = np.array(record["metrics"]["confusion"], dtype=np.float64)
    expected = counts / counts.sum(axis=1, keepdims=True)
    shown = np.asarray(ax.collections[0].get_array(), dtype=np.float64).reshape(4, 4)
    np.testing.assert_allclose(shown, expected, rtol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == EMOTIONS
    raw = plots.confusion_matrix(record, normalize=False).axes[0]
    np.testing.assert_array_equal(np.asarray(raw.collections[0].get_array()).reshape(4, 4), counts)


def test_one_epoch_curves_tick_whole_epochs():
    """A one-epoch run is one point at epoch 1 on an axis of whole epochs (it was an axis
    from 0.945 to 1.055 ticked in hundredths)."""
    record = ser_record(np.random.default_rng(1))
    record["history"] = record["history"][:1]
    fig = plots.learning_curves([record])
    assert_legends_clear(fig)
    for ax in fig.axes:
        if ax.get_visible() and ax.get_xlabel() == "epoch":
            assert ax.get_xlim() == (0.5, 1.5)
            ticks = [t for t in ax.get_xticks() if 0.5 <= t <= 1.5]
            assert ticks == [1.0]


def test_learning_curves_wrap_many_panels_within_the_page():
    """An RH-emo history (learning rate, reconstruction, objective, head accuracies) is at
    most three panels a row, no wider than the page; balanced and majority accuracies share
    the accuracy panel."""
    history = [{"epoch": e, "lr": 1e-3, "val_reconstruction_mse": 0.3 / e,
                "val_objective": 1.0 / e, "val_emotion_ua": 0.2 * e, "val_valence_acc": 0.5,
                "val_valence_balanced": 0.5, "val_valence_majority": 0.6}
               for e in (1, 2)]  # fmt: skip
    record = {"kind": "rhemo", "config": {"corpus": "synthemo", "setup": "confounded",
                                           "seed": 0}, "history": history}  # fmt: skip
    fig = plots.learning_curves([record])
    assert_labelled(fig)
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH
    shown = [ax.get_ylabel() for ax in fig.axes if ax.get_visible()]
    assert sorted(shown) == sorted(["learning rate", "reconstruction MSE", "val_objective",
                                    "accuracy (fraction)"])  # fmt: skip


def test_confusion_matrix_writes_long_emotion_names_whole(rng):
    record = ser_record(rng)
    names = ["neutral", "pleasant_surprise", "disgusted", "fearful"]
    record["labels"]["emotions"] = names
    fig = plots.confusion_matrix(record)
    assert_nothing_clipped(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert_ticks_apart(ax, "x")
    assert_ticks_apart(ax, "y")
    assert all(t.get_rotation() == 0 for t in ax.get_yticklabels())


def test_confusion_matrices_one_panel_per_run(rng):
    records = [ser_record(rng, seed=s) for s in range(3)]
    fig = plots.confusion_matrices(records)
    assert_labelled(fig)
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH  # two a row, not three side by side
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.collections]
    assert len(panels) == 3
    for ax, r in zip(panels, records, strict=True):
        counts = np.array(r["metrics"]["confusion"], dtype=np.float64)
        shown = np.asarray(ax.collections[0].get_array(), dtype=np.float64).reshape(4, 4)
        np.testing.assert_allclose(shown, counts / counts.sum(1, keepdims=True), rtol=1e-12)


def test_cooccurrence_heatmap_cells_are_the_counts(rng):
    items = utterances(rng)
    fig = plots.cooccurrence_heatmap(items, column="speaker")
    assert_labelled(fig)
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    expected = np.array([[sum(u.emotion == e and u.speaker == s for u in items) for s in cols]
                         for e in rows])  # fmt: skip
    shown = np.asarray(ax.collections[0].get_array()).reshape(len(rows), len(cols))
    np.testing.assert_array_equal(shown, expected)
    assert sorted(rows) == sorted({u.emotion for u in items})


def test_class_balance_bars_are_the_counts(rng):
    items = utterances(rng)
    fig = plots.class_balance({"train": items[:40], "test": items[40:]})
    assert_labelled(fig)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    expected = [sum(u.emotion == e for u in items[:40]) for e in EMOTIONS]
    expected += [sum(u.emotion == e for u in items[40:]) for e in EMOTIONS]
    assert heights == expected


def test_spectrogram_grid_axes_are_seconds_and_bands(rng):
    specs = [rng.normal(size=(64, 32)) for _ in range(3)]
    fig = plots.spectrogram_grid(specs, ["a", "b", "c"], hop_seconds=128 / 16000, ncols=2)
    assert_labelled(fig)
    image = fig.axes[0].images[0]
    assert image.get_extent() == pytest.approx([0, 64 * 128 / 16000, 0, 32])
    np.testing.assert_array_equal(image.get_array(), specs[0].T)
    assert fig.axes[0].get_xlabel() == "time (s)" and fig.axes[0].get_ylabel() == "mel band"
    with pytest.raises(ValueError, match="titles"):
        plots.spectrogram_grid(specs, ["a"], hop_seconds=0.008)
    with pytest.raises(ValueError, match="hop_seconds"):
        plots.spectrogram_grid(specs, ["a", "b", "c"], hop_seconds=0)


def test_embedding_axes_one_column_per_quaternion_component(rng):
    z = rng.normal(size=(2, 4, 8, 6))
    fig = plots.embedding_axes(z, ["happy", "sad"])
    assert_nothing_clipped(fig)
    grid = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in grid[:4]] == list(tables.RHEMO_AXES)
    assert [ax.get_ylabel() for ax in grid[::4]] == [
        "happy\nfrequency (bin)",
        "sad\nfrequency (bin)",
    ]
    assert all(ax.get_xlabel() == "time (embedding frame)" for ax in grid[4:])
    np.testing.assert_array_equal(grid[5].images[0].get_array(), z[1, 1].T)
    lo, hi = z[:, 2].min(), z[:, 2].max()  # one colour scale per axis, across utterances
    assert grid[2].images[0].get_clim() == grid[6].images[0].get_clim() == (lo, hi)
    with pytest.raises(ValueError, match=r"\(n, 4, T', F'\)"):
        plots.embedding_axes(z[:, :3], ["a", "b"])


def test_tap_sweep_and_tradeoff_plot_gain_and_cost_per_tap(rng):
    records = [ser_record(rng, seed=s) for s in (0, 1)]
    taps = ["conv3_1", "conv1_1"]
    records += [ser_record(rng, method="at", tap=t, seed=s) for t in taps for s in (0, 1)]
    fig = plots.tap_sweep(records)
    assert_labelled(fig)
    assert_legends_clear(fig)
    gain_ax, time_ax, memory_ax = fig.axes[:3]  # one panel under the other, sharing the taps
    assert [t.get_text() for t in memory_ax.get_xticklabels()] == ["conv1_1", "conv3_1"]
    expected_gain, expected_time = [], []
    for tap in ("conv1_1", "conv3_1"):
        gains = [
            r["metrics"]["ua"] - next(
                b for b in records[:2] if b["config"]["seed"] == r["config"]["seed"]
            )["metrics"]["ua"]
            for r in records[2:] if r["config"]["taps"] == [tap]
        ]  # fmt: skip
        expected_gain.append(np.mean(gains))
        expected_time.append(
            1000 * np.mean([r["resources"]["step_time_s"] for r in records[2:]
                            if r["config"]["taps"] == [tap]])
        )  # fmt: skip
    gain_line = gain_ax.get_lines()[0]
    np.testing.assert_allclose(gain_line.get_ydata(), expected_gain, rtol=1e-12)
    np.testing.assert_allclose(time_ax.get_lines()[0].get_ydata(), expected_time, rtol=1e-12)
    base_time = 1000 * np.mean([b["resources"]["step_time_s"] for b in records[:2]])
    assert time_ax.get_lines()[1].get_ydata()[0] == pytest.approx(base_time)

    fig = plots.tradeoff(records)
    assert_labelled(fig)
    points = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(points, np.c_[expected_time, expected_gain], rtol=1e-12)
    with pytest.raises(ValueError, match="cost='money'"):
        plots.tradeoff(records, cost="money")
    unpaired = [*records, ser_record(rng, model="quaternion", method="at", tap="conv1_1")]
    fig = plots.tradeoff(unpaired)  # a run with no baseline of its own has no gain to place
    assert len(fig.axes[0].collections) == 1 and len(fig.legends[0].get_texts()) == 1
    assert_labelled(plots.tradeoff(records[2:]))  # no pairs at all: an empty, labelled plot
    with pytest.raises(ValueError, match="single-tap"):
        plots.tap_sweep(records[:2])


def test_tap_sweep_fits_the_page_and_leaves_a_gap_where_a_sweep_has_no_run(rng):
    """16 configurations (the committed records' sweep groups) in a figure no wider than the
    page, its legend under the panels; a tap a configuration did not run is a gap in its
    line, never bridged; costs=("memory",) drops the step time timed alone."""
    taps = ["conv1_1", "conv2_1", "conv3_1"]
    records = [ser_record(rng, seed=0)]
    for beta in range(1, 17):
        mine = taps if beta > 1 else ["conv1_1", "conv3_1"]  # the first skips conv2_1
        for tap in mine:
            records.append(ser_record(rng, method="at", tap=tap))
            records[-1]["config"]["beta"] = float(beta)
    fig = plots.tap_sweep(records, costs=("memory",))
    assert_labelled(fig)
    assert_legends_clear(fig)
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH
    gain_ax, memory_ax = fig.axes
    assert "memory" in memory_ax.get_ylabel()
    first = gain_ax.get_lines()[0].get_ydata()  # β=1 sorts first
    assert np.isnan(first[1]) and np.isfinite(first[[0, 2]]).all()
    with pytest.raises(ValueError, match="costs: 'money'"):
        plots.tap_sweep(records, costs=("money",))


def test_probe_by_tap_plots_accuracies_in_network_order(rng):
    records = [ser_record(rng), ser_record(rng, method="at", tap="conv2_1")]
    fig = plots.probe_by_tap(records)
    assert_labelled(fig)
    assert_legends_clear(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv2_2", "conv5_3"]
    for line, r in zip(ax.get_lines(), records, strict=True):
        np.testing.assert_allclose(
            line.get_ydata(), [r["probe"]["word"]["conv2_2"], r["probe"]["word"]["conv5_3"]]
        )


def test_probe_by_tap_keeps_models_apart_and_never_bridges_a_missing_tap(rng):
    """One panel per (label, model): runs of different networks are never drawn together; a
    tap a run did not probe is a gap; coinciding curves differ by marker and style."""
    real = ser_record(rng)
    twin = ser_record(rng, method="dfr")
    twin["probe"] = {"word": dict(real["probe"]["word"])}  # DFR keeps the features
    partial = ser_record(rng, model="quaternion")
    partial["probe"] = {"word": {"conv2_2": 0.3, "conv3_1": 0.2, "conv5_3": 0.1}}
    other = ser_record(rng, model="quaternion", method="at", tap="conv2_1")
    other["probe"] = {"word": {"conv2_2": 0.4, "conv5_3": 0.2}}
    fig = plots.probe_by_tap([real, twin, partial, other])
    assert_labelled(fig)
    assert_legends_clear(fig)
    titles = [ax.get_legend().get_title().get_text() for ax in fig.axes if ax.get_visible()]
    assert titles == ["quaternion VGG16: word probe", "real VGG16: word probe"]
    quaternion, real_ax = fig.axes[:2]
    assert [t.get_text() for t in quaternion.get_xticklabels()] == ["conv2_2", "conv3_1",
                                                                    "conv5_3"]  # fmt: skip
    gap = quaternion.get_lines()[1].get_ydata()
    assert np.isnan(gap[1]) and list(gap[[0, 2]]) == [0.4, 0.2]
    a, b = real_ax.get_lines()
    np.testing.assert_array_equal(a.get_ydata(), b.get_ydata())
    assert (a.get_marker(), a.get_linestyle()) != (b.get_marker(), b.get_linestyle())


def test_method_comparison_marks_baseline_and_ceiling(rng):
    base = [ser_record(rng, seed=s) for s in (0, 1)]
    at = [ser_record(rng, method="at", tap="conv2_1", seed=s) for s in (0, 1)]
    ceiling = ser_record(rng, setup="unconfounded")
    fig = plots.method_comparison([*base, *at, ceiling], setup="confounded")
    assert_labelled(fig)
    ax = fig.axes[0]
    widths = [p.get_width() for p in ax.patches]
    expected = [np.mean([r["metrics"]["ua"] for r in rs]) for rs in (base, at)]
    np.testing.assert_allclose(widths, expected, rtol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["baseline", "at word@conv2_1 β=1"]
    lines = {line.get_label(): line.get_xdata() for line in ax.get_lines()}
    assert lines["baseline"][0] == pytest.approx(expected[0])
    assert lines["ceiling (baseline on unconfounded)"][0] == ceiling["metrics"]["ua"]
    runs = sorted(
        x for line in ax.get_lines() if line.get_label() == "_run" for x in line.get_xdata()
    )
    assert runs == sorted(r["metrics"]["ua"] for r in [*base, *at])  # one dot per run
    fig = plots.method_comparison([*base, *at], metric="incongruent_ua")
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths[1] == pytest.approx(np.mean([r["confound"]["incongruent_ua"] for r in at]))
    assert fig.axes[0].get_xlabel() == "test UA on incongruent items (fraction)"
    with pytest.raises(ValueError, match="metric='accuracy'"):
        plots.method_comparison(base, metric="accuracy")


def test_rhemo_heads_of_several_rhemos_show_mean_and_range():
    a, b = rhemo_record(), rhemo_record()
    b["history"][-1] = {**b["history"][-1], "val_emotion_ua": 0.2, "val_valence_acc": 0.9}
    fig = plots.rhemo_heads([a, b])
    assert_nothing_clipped(fig)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([0.4, 0.8, 0.8, 0.65])  # (0.6 + 0.2) / 2, (0.7 + 0.9) / 2
    assert "2 RH-emo(s)" in fig.get_suptitle()


def test_rhemo_heads_draw_one_bar_per_head_and_configuration():
    a, b = rhemo_record(), rhemo_record()
    b["config"] = {**b["config"], "rhemo_encoder": "wide"}
    b["history"][-1] = {**b["history"][-1], "val_emotion_ua": 0.3}
    fig = plots.rhemo_heads([a, b])
    assert_labelled(fig)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([0.6, 0.7, 0.8, 0.65, 0.3, 0.7, 0.8, 0.65])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["confounded published (n=1)", "confounded wide (n=1)"]


# ---------------------------------------------------------------- the demonstration's figures


def finalist_rows(rng, names=("ceiling", "at", "at placebo", "reweight")):
    rows = []
    for name in names:
        gain = float(rng.uniform(-0.05, 0.1))
        low, high = sorted(rng.uniform(0.001, 0.03, size=2))
        regime = "group labels" if name == "reweight" else "a network"
        rows.append({"finalist": name, "UA gain": gain, "gain 95% low": gain - low,
                     "gain 95% high": gain + high, "information": regime})  # fmt: skip
    return rows


@pytest.mark.parametrize("models", [("real",), ("real", "quaternion")])
def test_forest_draws_each_gain_and_interval_placebos_hollow(rng, models):
    by_model = {m: finalist_rows(rng) for m in models}
    fig = plots.forest(by_model, "word-confounded")
    assert_labelled(fig)
    for ax, (model, rows) in zip(fig.axes, by_model.items(), strict=True):
        assert ax.get_title() == f"{model} VGG16"
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == [r["finalist"] for r in reversed(rows)]  # top to bottom as given
        points = [line for line in ax.get_lines() if line.get_marker() == "o"]
        for y, (line, r) in enumerate(zip(points, reversed(rows), strict=True)):
            assert (line.get_xdata()[0], line.get_ydata()[0]) == (r["UA gain"], y)
            hollow = line.get_markerfacecolor() == "white"
            assert hollow == r["finalist"].endswith("placebo")
        bars = [c for c in ax.collections if c.get_segments()]
        spans = sorted(tuple(s[:, 0]) for c in bars for s in c.get_segments())
        expected = sorted((r["gain 95% low"], r["gain 95% high"]) for r in rows)
        np.testing.assert_allclose(spans, expected, rtol=1e-12)


def test_layer_sweep_aligns_a_partial_sweep_with_the_full_one(rng):
    taps = ["conv1_1", "conv2_1", "conv3_1", "penultimate"]

    def rows(mine):
        out = []
        for tap in mine:
            gain = float(rng.uniform(-0.05, 0.1))
            out.append({"tap": tap, "UA gain": gain, "gain 95% low": gain - 0.02,
                        "gain 95% high": gain + 0.01, "step time (ms)": float(rng.uniform(10, 900)),
                        "peak memory (MiB)": float(rng.uniform(10, 900))})  # fmt: skip
        return out

    by_model = {"real": rows(taps), "quaternion": rows(["conv1_1", "conv3_1"])}
    fig = plots.layer_sweep(by_model, taps)
    assert_labelled(fig)
    gain_ax, time_ax, memory_ax = fig.axes
    assert [t.get_text() for t in gain_ax.get_xticklabels()] == taps
    for ax, key in ((gain_ax, "UA gain"), (time_ax, "step time (ms)"),
                    (memory_ax, "peak memory (MiB)")):  # fmt: skip
        lines = [line for line in ax.get_lines() if line.get_marker() == "o"]
        for line, (model, mine) in zip(lines, by_model.items(), strict=True):
            assert list(line.get_xdata()) == [taps.index(r["tap"]) for r in mine], model
            ys = np.asarray(line.get_ydata(), dtype=float)
            np.testing.assert_allclose(ys, [r[key] for r in mine], rtol=1e-12)


def test_probe_profiles_plot_each_configurations_probe_in_network_order(rng):
    taps = ["penultimate", "conv1_1", "conv4_2"]  # out of order on purpose
    rows = {
        m: [{"configuration": c, "method": c.split()[0], "seeds": 5,
             "probe": {t: float(rng.uniform()) for t in taps}}
            for c in ("baseline", "at word@conv2_1", "at placebo")]
        for m in ("real", "quaternion")
    }  # fmt: skip
    fig = plots.probe_profiles(rows)
    assert_labelled(fig)
    assert_legends_clear(fig)
    for ax in fig.axes:
        assert_ticks_apart(ax)
    for ax, mine in zip(fig.axes, rows.values(), strict=True):
        for line, r in zip(ax.get_lines(), mine, strict=True):
            assert list(line.get_xdata()) == ["conv1_1", "conv4_2", "penultimate"]
            assert list(line.get_ydata()) == [r["probe"][t] for t in line.get_xdata()]
            assert (line.get_linestyle() == ":") == ("placebo" in r["configuration"])
    with pytest.raises(ValueError, match="no configuration"):
        plots.probe_profiles({"real": []})


def test_paired_runs_join_each_pairs_baseline_and_ceiling(rng):
    keys = [(0, 0), (1, 1), (2, 2)]
    pairs = {
        m: tuple({k: {"metrics": {"ua": float(rng.uniform())}} for k in keys} for _ in "bc")
        for m in ("real", "quaternion")
    }
    fig = plots.paired_runs(pairs)
    assert all(ax.get_ylabel() for ax in fig.axes)
    assert_nothing_clipped(fig)
    for ax, (base, ceil) in zip(fig.axes, pairs.values(), strict=True):
        ys = [tuple(line.get_ydata()) for line in ax.get_lines()]
        assert ys == [(base[k]["metrics"]["ua"], ceil[k]["metrics"]["ua"]) for k in keys]


def test_pilot_curves_draw_the_mean_and_range_over_runs(rng):
    def run():
        return {"history": [{k: float(rng.uniform()) for k in ("train_loss", "val_ua", "test_ua")}
                            for _ in range(4)]}  # fmt: skip

    groups = {"cpu real": [run(), run(), run()], "cpu quaternion": [run()]}
    fig = plots.pilot_curves(groups)
    assert_labelled(fig)
    for ax, key in zip(fig.axes, ("train_loss", "val_ua", "test_ua"), strict=True):
        for line, runs in zip(ax.get_lines(), groups.values(), strict=True):
            values = np.array([[h[key] for h in r["history"]] for r in runs])
            np.testing.assert_allclose(line.get_ydata(), values.mean(0), rtol=1e-12)
            np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])


def test_diagnosis_plots_each_networks_interval_and_cost():
    from qat import stats

    rng = np.random.default_rng(3)
    rows = []
    for name in ("quaternion", "rhemo-pools", "rhemo-encoder"):
        a = {(s, 0): float(rng.uniform(0.4, 0.6)) for s in range(5)}
        b = {k: float(rng.uniform(0.4, 0.6)) for k in a}
        rows.append({"network": name, "_vs_real": stats.paired(a, b),
                     "step time vs real": float(rng.uniform(0.1, 1))})  # fmt: skip
    fig = plots.diagnosis(rows, within=0.05)
    assert_nothing_clipped(fig)
    gain, cost = fig.axes
    assert gain.get_xlabel() and cost.get_xlabel()
    points = [line for line in gain.get_lines() if line.get_marker() == "o"]
    for y, (line, r) in enumerate(zip(points, rows, strict=True)):
        assert (line.get_xdata()[0], line.get_ydata()[0]) == (r["_vs_real"].mean, y)
    widths = [p.get_width() for p in cost.patches]
    assert widths == [r["step time vs real"] for r in rows]
