"""Plots and tables from small synthetic run records: labelled axes, and numbers that match an
independent computation from the records (float64, by hand). Also the anti-transfer panel's
parameter checks and its Run button."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from qat import plots, widgets
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


# ---------------------------------------------------------------- tables


def test_results_table_reads_metrics_confound_and_resources_with_units(rng):
    records = [ser_record(rng), ser_record(rng, method="at", tap="conv2_1", confound=False)]
    table = plots.results_table(records)
    assert len(table) == 2
    for (_, row), r in zip(table.iterrows(), records, strict=True):
        res = r["resources"]
        assert row["UA"] == r["metrics"]["ua"] and row["WA"] == r["metrics"]["wa"]
        assert row["macro-F1"] == r["metrics"]["macro_f1"]
        assert row["step time (ms)"] == pytest.approx(res["step_time_s"] * 1000)
        assert row["peak memory (MiB)"] == pytest.approx(res["peak_memory_bytes"] / 1048576)
        assert row["GFLOPs/step"] == pytest.approx(res["flops_per_step"] / 1e9)
        assert row["params"] == res["params"] and row["epochs"] == 3
    assert table.loc[0, "incongruent UA"] == records[0]["confound"]["incongruent_ua"]
    assert math.isnan(table.loc[1, "incongruent UA"])  # not a confounded run
    assert table.loc[1, "taps"] == "conv2_1" and table.loc[1, "beta"] == 1.0


def test_results_table_rejects_records_without_ser_runs(rng):
    with pytest.raises(ValueError, match="kind 'ser'"):
        plots.results_table([{"kind": "rhemo", "config": {}}])
    with pytest.raises(ValueError, match="at least one"):
        plots.results_table([])


def test_sweep_table_pairs_each_run_with_its_own_baseline(rng):
    base_real = [ser_record(rng, seed=0), ser_record(rng, seed=0)]  # a repeated baseline
    base_q = ser_record(rng, model="quaternion")
    base_seed1 = ser_record(rng, seed=1)
    base_other_setup = ser_record(rng, setup="random")
    runs = [
        ser_record(rng, method="at", tap="conv3_1"),
        ser_record(rng, method="at", tap="conv1_2"),
        ser_record(rng, method="at", tap="conv1_2", seed=1),
        ser_record(rng, model="quaternion", method="at", tap="conv1_2"),
        ser_record(rng, method="at", tap="conv1_2", seed=5),  # no baseline
    ]
    table = plots.sweep_table([*base_real, base_q, base_seed1, base_other_setup, *runs])
    assert len(table) == len(runs)
    expected_base = {
        ("real", "conv3_1", 0): np.mean([b["metrics"]["ua"] for b in base_real]),
        ("real", "conv1_2", 0): np.mean([b["metrics"]["ua"] for b in base_real]),
        ("real", "conv1_2", 1): base_seed1["metrics"]["ua"],
        ("quaternion", "conv1_2", 0): base_q["metrics"]["ua"],
    }
    for _, row in table.iterrows():
        run = next(
            r for r in runs
            if (r["config"]["model"], r["config"]["taps"][0], r["config"]["seed"])
            == (row["model"], row["tap"], row["seed"])
        )  # fmt: skip
        key = (row["model"], row["tap"], row["seed"])
        if key in expected_base:
            assert row["baseline UA"] == pytest.approx(expected_base[key], abs=1e-12)
            assert row["UA gain"] == pytest.approx(run["metrics"]["ua"] - expected_base[key])
        else:
            assert math.isnan(row["baseline UA"]) and math.isnan(row["UA gain"])
    real = table[table["model"] == "real"]
    assert list(real["tap"]) == ["conv1_2", "conv1_2", "conv1_2", "conv3_1"]  # network order


def test_probe_table_columns_follow_network_order(rng):
    record = ser_record(rng)
    table = plots.probe_table([record])
    assert list(table.columns) == ["run", "word @ conv2_2", "word @ conv5_3"]
    assert table.loc[0, "word @ conv5_3"] == record["probe"]["word"]["conv5_3"]


def test_cooccurrence_table_counts_match_a_hand_count(rng):
    items = utterances(rng)
    table = plots.cooccurrence_table(items, column="text")
    counts = Counter((u.emotion, u.text) for u in items)
    assert list(table.index) == [e for e in EMOTIONS if any(u.emotion == e for u in items)]
    for emotion in table.index:
        for word in table.columns:
            assert table.loc[emotion, word] == counts[(emotion, word)]
    with pytest.raises(ValueError, match="'colour' is not an utterance field"):
        plots.cooccurrence_table(items, column="colour")


def test_pretrained_and_rhemo_tables(rng):
    orth = {
        "kind": "orthogonal-word-real",
        "config": {"task": "word", "model": "real", "seed": 0},
        "history": [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_ua": 0.4}],
        "metrics": {"ua": 0.91, "wa": 0.92, "macro_f1": 0.9},
        "wall_time_s": 12.5,
    }
    rhemo = {
        "kind": "rhemo",
        "config": {"corpus": "synthemo", "setup": "confounded", "seed": 0},
        "history": [
            {"epoch": 1, "stage": "reconstruction", "val_reconstruction_mse": 0.9,
             "val_emotion_ua": 0.2},
            {"epoch": 2, "stage": "heads", "val_reconstruction_mse": 0.5, "val_emotion_ua": 0.6,
             "val_valence_acc": 0.7, "val_arousal_acc": 0.8, "val_dominance_acc": 0.65},
        ],
    }  # fmt: skip
    table = plots.pretrained_table([orth, rhemo])
    assert len(table) == 1 and table.loc[0, "test UA"] == 0.91 and table.loc[0, "epochs"] == 1
    table = plots.rhemo_table([orth, rhemo])
    assert len(table) == 1 and table.loc[0, "val reconstruction MSE"] == 0.5
    assert table.loc[0, "j: arousal accuracy"] == 0.8
    fig = plots.rhemo_heads(rhemo)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [0.6, 0.7, 0.8, 0.65]
    assert_labelled(fig)


def test_run_label_names_the_configuration(rng):
    at = ser_record(rng, model="quaternion", method="at", tap="conv2_1", seed=3)
    assert plots.run_label(at) == "[confounded] quaternion at word@conv2_1 β=1 seed 3"
    assert plots.run_label(at, without=("setup", "seed", "taps")) == "quaternion at word β=1"
    assert plots.run_label(ser_record(rng)) == "[confounded] real baseline"


def test_pick_examples_takes_the_first_of_each_emotion_in_vocabulary_order(rng):
    items = utterances(rng, n=40)
    picked = plots.pick_examples(items, per_emotion=2)
    expected = []
    for e in EMOTIONS:
        expected += [i for i, u in enumerate(items) if u.emotion == e][:2]
    assert picked == expected


# ---------------------------------------------------------------- figures


def test_learning_curves_plot_the_history_values(rng):
    records = [ser_record(rng), ser_record(rng, method="at", tap="conv2_1")]
    fig = plots.learning_curves(records)
    assert_labelled(fig)
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}
    assert set(by_label) == {"cross-entropy loss", "accuracy (fraction)", "AT term (before beta)"}
    lines = {line.get_label(): line for line in by_label["accuracy (fraction)"].get_lines()}
    line = lines["[confounded] real at word@conv2_1 β=1: val_ua"]
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(line.get_ydata(), [h["val_ua"] for h in records[1]["history"]])
    assert by_label["cross-entropy loss"].get_xlabel() == "epoch"


def test_confusion_matrix_shows_row_normalised_counts(rng):
    record = ser_record(rng)
    fig = plots.confusion_matrix(record)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted emotion", "true emotion")
    counts = np.array(record["metrics"]["confusion"], dtype=np.float64)
    expected = counts / counts.sum(axis=1, keepdims=True)
    shown = np.asarray(ax.collections[0].get_array(), dtype=np.float64).reshape(4, 4)
    np.testing.assert_allclose(shown, expected, rtol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == EMOTIONS
    raw = plots.confusion_matrix(record, normalize=False).axes[0]
    np.testing.assert_array_equal(np.asarray(raw.collections[0].get_array()).reshape(4, 4), counts)


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
    grid = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in grid[:4]] == list(plots.RHEMO_AXES)
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
    gain_ax, time_ax, _ = fig.axes[:3]
    assert [t.get_text() for t in gain_ax.get_xticklabels()] == ["conv1_1", "conv3_1"]
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
    with pytest.raises(ValueError, match="single-tap"):
        plots.tap_sweep(records[:2])


def test_probe_by_tap_plots_accuracies_in_network_order(rng):
    records = [ser_record(rng), ser_record(rng, method="at", tap="conv2_1")]
    fig = plots.probe_by_tap(records)
    assert_labelled(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv2_2", "conv5_3"]
    for line, r in zip(ax.get_lines(), records, strict=True):
        np.testing.assert_allclose(
            line.get_ydata(), [r["probe"]["word"]["conv2_2"], r["probe"]["word"]["conv5_3"]]
        )


def test_method_comparison_marks_baseline_and_ceiling(rng):
    base = [ser_record(rng, seed=s) for s in (0, 1)]
    at = [ser_record(rng, method="at", tap="conv2_1", seed=s) for s in (0, 1)]
    ceiling = ser_record(rng, setup="unconfounded")
    fig = plots.method_comparison([*base, *at, ceiling], setup="confounded")
    assert_labelled(fig)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    expected = [np.mean([r["metrics"]["ua"] for r in rs]) for rs in (base, at)]
    np.testing.assert_allclose(heights, expected, rtol=1e-12)
    lines = {line.get_label().split(":")[0]: line.get_ydata()[0] for line in ax.get_lines()}
    assert lines["baseline"] == pytest.approx(expected[0])
    assert lines["ceiling (baseline on unconfounded)"] == ceiling["metrics"]["ua"]
    fig = plots.method_comparison([*base, *at], metric="incongruent_ua")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights[1] == pytest.approx(np.mean([r["confound"]["incongruent_ua"] for r in at]))
    assert fig.axes[0].get_ylabel() == "test UA on incongruent items (fraction)"
    with pytest.raises(ValueError, match="metric='accuracy'"):
        plots.method_comparison(base, metric="accuracy")


# ---------------------------------------------------------------- widgets


def test_check_parameters_names_the_parameter_and_the_choices():
    widgets.check_parameters(setup="confounded", tap="conv5_3", beta=0.5, seeds=[0, 1])
    with pytest.raises(ValueError, match=r"tap='conv6_1' is not valid.*'conv1_1'.*'penultimate'"):
        widgets.check_parameters(tap="conv6_1")
    with pytest.raises(ValueError, match=r"model='complex'.*\('real', 'quaternion'\)"):
        widgets.check_parameters(models=["real", "complex"])
    with pytest.raises(ValueError, match=r"beta=-1\.0: expected a finite number >= 0"):
        widgets.check_parameters(beta=-1.0)
    with pytest.raises(ValueError, match="unknown parameter 'layer'"):
        widgets.check_parameters(layer="conv2_1")
    assert len(widgets.vgg16_taps()) == 13


def test_panel_run_button_calls_the_headless_function_with_the_chosen_values():
    calls = []
    panel = widgets.AntiTransferPanel(on_run=lambda **kw: calls.append(kw), method="at",
                                      tap="conv3_2", beta=0.5, profile="smoke",
                                      ceiling=False)  # fmt: skip
    panel.controls["model"].value = "quaternion"
    panel.controls["method"].value = "dann"
    assert panel.controls["beta"].disabled and not panel.controls["lam"].disabled
    panel.button.click()
    assert calls == [
        {"corpus": "synthemo", "root": None, "setup": "confounded", "model": "quaternion",
         "method": "dann", "orthogonal": "word", "tap": "conv3_2", "beta": 0.5, "lam": 1.0,
         "init_from_orthogonal": False, "seed": 0, "profile": "smoke", "ceiling": False}
    ]  # fmt: skip
    assert set(calls[0]) <= set(widgets.compare.__code__.co_varnames)
    with pytest.raises(ValueError, match="setup='lab'"):
        widgets.AntiTransferPanel(setup="lab")


def test_compare_trains_baseline_ceiling_and_method_with_everything_else_equal(monkeypatch, rng):
    calls = []

    def fake_train_ser(**kwargs):
        calls.append(kwargs)
        method, setup = kwargs["method"], kwargs["setup"]
        return ser_record(rng, method=method, tap=kwargs.get("tap"), setup=setup)

    monkeypatch.setattr(widgets.experiments, "train_ser", fake_train_ser)
    runs = widgets.compare(method="at", tap="conv4_1", beta=0.25, seed=3, profile="smoke")
    assert list(runs) == ["baseline", "ceiling", "at"]
    shared = {"corpus": "synthemo", "model": "real", "seed": 3, "profile": "smoke", "root": None}
    for call in calls:
        assert {k: call[k] for k in shared} == shared
    assert [(c["method"], c["setup"]) for c in calls] == [
        ("baseline", "confounded"), ("baseline", "unconfounded"), ("at", "confounded")
    ]  # fmt: skip
    assert calls[2]["tap"] == "conv4_1" and calls[2]["beta"] == 0.25
    widgets.show_comparison(runs)  # every figure and table builds from the records

    calls.clear()
    runs = widgets.compare(setup="random", method="baseline", profile="smoke")
    assert list(runs) == ["baseline"] and len(calls) == 1
