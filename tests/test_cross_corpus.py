"""Notebook 06's pieces: the cross-corpus figures show what the records' confusion matrices say
(recall = diagonal over row sum, computed here by hand) with labelled axes, and the panel's Run
button calls the headless function with the chosen values, refusing a bad one in one line."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
from test_plots import assert_nothing_clipped

from qat import paths, plots, runs, widgets

MODEL_EMOTIONS = ["neutral", "happy", "sad", "angry"]
SHARED = ["happy", "sad", "angry"]
IN_CORPUS = [[5, 1, 0, 2], [2, 6, 1, 1], [0, 3, 4, 1], [1, 0, 0, 7]]  # rows: MODEL_EMOTIONS
CROSS = [[3, 1, 4], [0, 5, 0], [2, 2, 6]]  # rows: SHARED (no neutral in the other corpus)
RUN = {"corpus": "synthemo", "setup": "random", "model": "real", "method": "baseline"}


def in_corpus_record() -> dict:
    return {
        "kind": "ser",
        "config": {**RUN, "root": None, "seed": 0, "profile": "smoke", "taps": []},
        "labels": {"emotions": MODEL_EMOTIONS},
        "metrics": {"ua": 0.61, "wa": 0.6, "macro_f1": 0.58, "confusion": IN_CORPUS},
    }


def eval_record() -> dict:
    kept = int(np.sum(CROSS))
    return {
        "kind": "eval",
        "config": {"model": {"path": "/cache/models/ser-x.pt", "run": RUN}, "corpus": "ravdess",
                   "root": "/data/RAVDESS", "mapping": {"calm": None}, "resample": True},
        "model": {"path": "/cache/models/ser-x.pt", "label": "[random] real baseline",
                  "emotions": MODEL_EMOTIONS},
        "labels": {"emotions": SHARED, "mapping": {"calm": None}, "model_only": ["neutral"]},
        "items": {"total": kept + 4, "kept": kept,
                  "dropped": {"calm: dropped by the mapping": {"count": 4, "uids": []}}},
        "metrics": {"ua": 0.5, "wa": 0.49, "macro_f1": 0.47, "confusion": CROSS,
                    "predicted_outside_shared": 0},
        "record_path": "/reports/runs/eval-x.json",
    }  # fmt: skip


def recall_by_hand(confusion, emotions, wanted):
    out = []
    for e in wanted:
        row = confusion[emotions.index(e)]
        out.append(row[emotions.index(e)] / sum(row))
    return out


def test_cross_corpus_confusion_is_row_normalised_and_labelled():
    fig = plots.cross_corpus_confusion(eval_record())
    assert_nothing_clipped(fig)
    ax = fig.axes[0]
    shown = np.asarray(ax.collections[0].get_array(), dtype=float).reshape(3, 3)
    for i, row in enumerate(CROSS):
        for j, n in enumerate(row):
            assert shown[i, j] == pytest.approx(n / sum(row), abs=1e-12)
    assert [t.get_text() for t in ax.get_xticklabels()] == SHARED
    assert [t.get_text() for t in ax.get_yticklabels()] == SHARED
    assert ax.get_xlabel() == "predicted emotion"
    assert ax.get_ylabel().startswith("true emotion")
    assert fig.axes[1].get_ylabel() == "share of true class"  # the colour bar
    assert "ravdess" in ax.get_title() and "[random] real baseline" in ax.get_title()
    counts = plots.cross_corpus_confusion(eval_record(), normalize=False).axes[0]
    assert np.array_equal(np.asarray(counts.collections[0].get_array()).reshape(3, 3), CROSS)


def test_recall_bars_equal_the_recalls_of_both_confusion_matrices():
    fig = plots.recall_comparison(eval_record(), in_corpus_record())
    assert_nothing_clipped(fig)
    ax = fig.axes[0]
    in_bars, cross_bars = ax.containers
    assert [b.get_height() for b in in_bars] == pytest.approx(
        recall_by_hand(IN_CORPUS, MODEL_EMOTIONS, SHARED), abs=1e-12
    )
    assert [b.get_height() for b in cross_bars] == pytest.approx(
        recall_by_hand(CROSS, SHARED, SHARED), abs=1e-12
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == SHARED
    assert ax.get_ylabel() == "recall (fraction)"
    assert ax.get_xlabel().startswith("emotion")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["synthemo test split (in-corpus), UA 0.610",
                      "ravdess at RAVDESS (cross-corpus), UA 0.500"]  # fmt: skip


def test_recall_without_a_training_record_shows_the_cross_corpus_bars_alone():
    (bars,) = plots.recall_comparison(eval_record()).axes[0].containers
    assert [b.get_height() for b in bars] == pytest.approx([3 / 8, 1.0, 6 / 10])
    with pytest.raises(ValueError, match="expected a cross-corpus eval record"):
        plots.recall_comparison(in_corpus_record())


def test_evaluate_and_show_finds_the_models_training_record(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "REPORTS", tmp_path)
    calls = []

    def fake_evaluate(*args, **kwargs):
        calls.append((args, kwargs))
        return eval_record()

    monkeypatch.setattr("qat.evaluate.evaluate_corpus", fake_evaluate)
    result = widgets.evaluate_and_show("m.pt", "ravdess", "/data/RAVDESS", {"calm": "neutral"},
                                       resample=True, progress=False)  # fmt: skip
    assert calls == [(("m.pt", "ravdess", "/data/RAVDESS", {"calm": "neutral"}),
                      {"resample": True, "progress": False})]  # fmt: skip
    assert result["in_corpus"] is None  # no training record yet
    target = runs.record_path("ser", RUN)
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(in_corpus_record()))
    result = widgets.evaluate_and_show("m.pt", "ravdess", "/data/RAVDESS", progress=False)
    assert result["in_corpus"]["metrics"]["confusion"] == IN_CORPUS


def test_panel_run_calls_the_headless_function_with_the_chosen_values():
    seen = []

    def fake_run(**values):
        seen.append((panel.button.disabled, values))
        return "result"

    panel = widgets.CrossCorpusPanel(on_run=fake_run, model="/cache/a.pt", root="/data/other",
                                     progress=False)  # fmt: skip
    assert panel.controls["corpus"].value == "synthemo"
    panel.controls["model"].value = "/cache/b.pt "
    panel.controls["corpus"].value = "ravdess"
    panel.controls["root"].value = "/data/RAVDESS"
    panel.controls["mapping"].value = "calm=neutral, disgust="
    panel.controls["resample"].value = True
    panel.button.click()
    assert seen == [(True, {"progress": False, "model": "/cache/b.pt", "corpus": "ravdess",
                            "root": "/data/RAVDESS", "mapping": {"calm": "neutral",
                                                                 "disgust": None},
                            "resample": True})]  # fmt: skip
    assert not panel.button.disabled and panel.button.description == "Run"
    assert panel.status.value.startswith("done: /cache/b.pt on ravdess")
    assert panel.run() == "result"


def test_panel_starts_from_the_notebooks_values_including_a_mapping():
    panel = widgets.CrossCorpusPanel(on_run=lambda **kw: None, model=None, corpus="emodb",
                                     root="/data/EmoDB", mapping={"boredom": None})  # fmt: skip
    assert panel.controls["model"].value == ""
    assert panel.controls["mapping"].value == "boredom="
    assert panel.values()["mapping"] == {"boredom": None}


@pytest.mark.parametrize(
    ("control", "value", "named"),
    [("model", "  ", "model=None: expected the path of a model file"),
     ("root", "", "root=None: expected the folder of the synthemo corpus"),
     ("mapping", "calm", "EMOTION=MODEL_EMOTION"),
     ("mapping", "glee=happy", "'glee' is not an emotion")],
)  # fmt: skip
def test_panel_refuses_a_bad_value_in_one_line_without_running(control, value, named):
    calls = []
    panel = widgets.CrossCorpusPanel(on_run=lambda **kw: calls.append(kw), model="/cache/a.pt",
                                     root="/data/other")  # fmt: skip
    panel.controls[control].value = value
    panel.button.click()
    assert calls == []
    assert html.escape(named) in panel.status.value and "Traceback" not in panel.status.value
    assert not panel.button.disabled


def test_panel_shows_a_user_error_of_the_run_in_one_line():
    def missing(**values):
        raise FileNotFoundError("model file /cache/a.pt does not exist")

    panel = widgets.CrossCorpusPanel(on_run=missing, model="/cache/a.pt", root="/data/other")
    panel.button.click()
    assert "/cache/a.pt does not exist" in panel.status.value
    assert not panel.button.disabled and panel.button.description == "Run"


def test_notebook_values_are_checked_before_anything_runs():
    widgets.check_cross_corpus(None, "synthemo", None, None, False, notebook_fills_in=True)
    with pytest.raises(ValueError, match="root=None: expected the folder of the ravdess corpus"):
        widgets.check_cross_corpus(None, "ravdess", None, notebook_fills_in=True)
    with pytest.raises(ValueError, match=r"corpus='ravdes': expected one of"):
        widgets.check_cross_corpus("m.pt", "ravdes", "/data")
    with pytest.raises(ValueError, match="model=None"):
        widgets.check_cross_corpus(None, "synthemo", "/data")
    with pytest.raises(ValueError, match="mapping='calm=neutral': expected None or a dict"):
        widgets.check_cross_corpus("m.pt", "ravdess", "/data", "calm=neutral")
    with pytest.raises(ValueError, match="resample='yes': expected True or False"):
        widgets.check_cross_corpus("m.pt", "ravdess", "/data", resample="yes")
