"""The notebook panel and checks: built from RunConfig, same messages as the CLI, no silent
clamping, the Run button disabled while a run trains; progress bars leave text, not widgets."""

from __future__ import annotations

import dataclasses
import html

import numpy as np
import pytest
from test_plots import ser_record

from qat import config as cfg
from qat import widgets
from qat.config import RunConfig


def test_check_parameters_names_the_parameter_and_what_is_valid():
    widgets.check_parameters(setup="confounded", tap="conv5_3", beta=0.5, seeds=[0, 1])
    with pytest.raises(ValueError, match=r"tap='conv6_1': expected one of conv1_1.*penultimate"):
        widgets.check_parameters(tap="conv6_1")
    with pytest.raises(ValueError, match=r"model='complex': expected one of real, quaternion"):
        widgets.check_parameters(models=["real", "complex"])
    with pytest.raises(ValueError, match=r"beta=-1\.0: expected a number >= 0"):
        widgets.check_parameters(beta=-1.0)
    with pytest.raises(ValueError, match="unknown parameter 'layer'"):
        widgets.check_parameters(layer="conv2_1")
    assert len(widgets.vgg16_taps()) == 13


def test_panel_has_one_control_per_run_setting_with_its_choices():
    panel = widgets.AntiTransferPanel(on_run=lambda **kw: None, profile="smoke")
    assert list(panel.controls) == [f.name for f in dataclasses.fields(RunConfig)]
    assert tuple(panel.controls["method"].options) == cfg.METHODS
    assert tuple(panel.controls["setup"].options) == cfg.SETUPS


def test_panel_run_button_calls_the_headless_function_with_the_chosen_values():
    calls = []
    panel = widgets.AntiTransferPanel(on_run=lambda **kw: calls.append(kw), method="at",
                                      tap="conv3_2", beta=0.5, profile="smoke",
                                      ceiling=False)  # fmt: skip
    panel.controls["model"].value = "quaternion"
    panel.controls["method"].value = "dann"
    assert panel.controls["beta"].disabled and not panel.controls["lam"].disabled
    panel.button.click()
    (call,) = calls
    assert call.pop("ceiling") is False and call["tap"] == "conv3_2"  # one tap per click
    expected = RunConfig(profile="smoke", model="quaternion", method="dann", tap="conv3_2",
                         beta=0.5)  # fmt: skip
    assert RunConfig(**call) == expected and set(call) == {f.name for f in cfg.fields()}
    assert "done: [confounded] quaternion dann word λ=1" in panel.status.value
    with pytest.raises(ValueError, match="setup='lab'"):
        widgets.AntiTransferPanel(setup="lab")


@pytest.mark.parametrize(
    ("control", "value", "named", "cli"),
    [("beta", "-1.0", "beta=-1.0", -1.0), ("lam", "inf", "lam=inf", float("inf")),
     ("seed", "-3", "seed=-3", -3), ("rho", "1.5", "rho=1.5", 1.5),
     ("beta", "nan", "beta=nan", float("nan")), ("beta", "", "beta=''", None),
     ("seed", " ", "seed=''", None), ("seed", "1.5", "seed='1.5'", "1.5")],
)  # fmt: skip
def test_panel_refuses_out_of_range_values_with_the_cli_message(control, value, named, cli):
    """Typed values are read when Run is pressed: out of range, NaN or an empty box is refused
    in red with the CLI's message (number boxes used to put the old value back silently and
    report the run done)."""
    calls = []
    panel = widgets.AntiTransferPanel(on_run=lambda **kw: calls.append(kw), method="at",
                                      profile="smoke")  # fmt: skip
    panel.controls[control].value = value
    assert panel.controls[control].value == value  # never clamped, never put back
    panel.button.click()
    assert calls == []  # refused visibly: not run with the old value
    assert html.escape(named) in panel.status.value and "expected" in panel.status.value
    assert "color:#c62828" in panel.status.value
    if cli is not None:
        with pytest.raises(ValueError) as cli_error:  # the CLI's message, word for word
            RunConfig(method="at", profile="smoke", **{control: cli})
        assert html.escape(str(cli_error.value)) in panel.status.value


def test_panel_disables_run_while_training_and_shows_a_user_error_in_one_line():
    seen = []

    def slow_run(**kw):
        seen.append((panel.button.disabled, panel.status.value))
        raise FileNotFoundError("root='/nowhere': folder not found")

    panel = widgets.AntiTransferPanel(on_run=slow_run, method="baseline", profile="smoke")
    panel.button.click()
    assert seen == [(True, "running [confounded] real baseline")]
    assert not panel.button.disabled and panel.button.description == "Run"
    assert "/nowhere" in panel.status.value and "Traceback" not in panel.status.value


def test_compare_trains_baseline_ceiling_and_method_with_everything_else_equal(monkeypatch):
    rng = np.random.default_rng(0)
    calls = []

    def fake_train_ser(config, progress=True):
        calls.append(config)
        return ser_record(rng, method=config.method, tap=config.tap[0], setup=config.setup)

    monkeypatch.setattr(widgets.experiments, "train_ser", fake_train_ser)
    runs = widgets.compare(method="at", tap="conv4_1", beta=0.25, seed=3, profile="smoke")
    assert list(runs) == ["baseline", "ceiling", "at"]
    for call in calls:
        assert (call.corpus, call.model, call.seed) == ("synthemo", "real", 3)
        assert call.profile == "smoke"
    assert [(c.method, c.setup) for c in calls] == [
        ("baseline", "confounded"), ("baseline", "unconfounded"), ("at", "confounded")
    ]  # fmt: skip
    assert calls[2].tap == ("conv4_1",) and calls[2].beta == 0.25
    widgets.show_comparison(runs)  # every figure and table builds from the records

    calls.clear()
    runs = widgets.compare(setup="random", method="baseline", profile="smoke")
    assert list(runs) == ["baseline"] and len(calls) == 1


def test_a_finished_notebook_bar_leaves_text_not_a_widget(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    papermill = pytest.importorskip("papermill")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from qat.progress import tqdm\n"
        "for _ in tqdm(range(3), desc='baseline: epoch 1/1'): pass\n"
        "for _ in tqdm(range(3), desc='gone', leave=False): pass\n"
    )]  # fmt: skip
    nb.metadata["kernelspec"] = {"name": "qat", "display_name": "qat", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(
        str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="qat",
        progress_bar=False,
    )  # fmt: skip
    outputs = nbformat.read(tmp_path / "out.ipynb", 4).cells[0].outputs
    kinds = [set(o.get("data", {})) for o in outputs]
    assert all("application/vnd.jupyter.widget-view+json" not in k for k in kinds)
    texts = [o["data"]["text/plain"] for o in outputs if "data" in o]
    assert texts[0].startswith("baseline: epoch 1/1: 100%") and texts[1] == ""


def test_optional_settings_read_empty_as_unset_and_text_as_numbers():
    calls = []
    panel = widgets.AntiTransferPanel(on_run=lambda **kw: calls.append(kw), method="groupdro",
                                      profile="smoke")  # fmt: skip
    assert panel.controls["selection"].value == "default"  # the profile's rule
    panel.controls["weight_decay"].value = " 0.1 "
    panel.controls["fold"].value = ""
    panel.controls["selection"].value = "worst_group"
    panel.button.click()
    assert calls[0]["weight_decay"] == 0.1 and calls[0]["fold"] is None
    assert calls[0]["selection"] == "worst_group" and calls[0]["orthogonal_root"] is None
    panel.controls["weight_decay"].value = "lots"
    panel.button.click()
    assert len(calls) == 1 and "weight_decay=&#x27;lots&#x27;" in panel.status.value


def test_a_panel_run_leaves_its_results_as_an_ordinary_output(monkeypatch):
    """The Run button's plots and tables are one HTML output of the panel's cell (figures as
    inline PNG), not widget state: what a saved notebook keeps after the kernel stops."""
    rng = np.random.default_rng(0)
    monkeypatch.setattr(
        widgets.experiments, "train_ser",
        lambda config, progress=True: ser_record(rng, method=config.method, tap=config.tap[0],
                                                 setup=config.setup),
    )  # fmt: skip
    panel = widgets.AntiTransferPanel(method="at", tap="conv2_1", profile="smoke")
    assert panel.results.html == ""
    panel.button.click()
    shown = panel.results.html
    assert shown.startswith("<h2>Run: [confounded] real at word@conv2_1")
    for heading in ("Learning curves", "Test confusion matrices", "Test metrics (fractions)"):
        assert f"<h3>{heading}" in shown
    assert shown.count('<img src="data:image/png;base64,') >= 3
    assert "<table" in shown
    assert "done:" in panel.status.value


def test_records_only_reads_the_records_and_trains_nothing(monkeypatch, tmp_path):
    """make demo's results: compare and sweep with records_only read the records of the same
    runs; a missing one is named, and nothing trains."""
    import json

    from qat import paths, runs

    monkeypatch.setattr(paths, "REPORTS", tmp_path)
    monkeypatch.setattr(widgets.experiments, "train_ser", lambda *a, **k: pytest.fail("trained"))
    rng = np.random.default_rng(0)
    base = RunConfig(profile="smoke", seed=5, method="baseline")
    configs = [base, base.replace(setup="unconfounded"), base.replace(method="at")]
    for config in configs:
        target = runs.record_path("ser", config.key_dict())
        target.parent.mkdir(parents=True, exist_ok=True)
        record = ser_record(rng, method=config.method, tap="conv2_1", setup=config.setup)
        target.write_text(json.dumps(record))
    found = widgets.compare(method="at", profile="smoke", seed=5, records_only=True)
    assert list(found) == ["baseline", "ceiling", "at"]
    assert found["ceiling"]["config"]["setup"] == "unconfounded"
    with pytest.raises(ValueError, match=r"no record of .*seed 6.*records_only=False"):
        widgets.compare(method="at", profile="smoke", seed=6, records_only=True)
    swept = widgets.sweep(records_only=True, taps=["conv2_1"], models=["real"], seeds=[5],
                          profile="smoke")  # fmt: skip
    assert [r["config"]["method"] for r in swept] == ["at", "baseline"]
