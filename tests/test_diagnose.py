"""The diagnostic profiles (why the quaternion ceiling lags): each changes one thing of the
frozen instrument, reuses its RH-emo where that is unchanged, and runs baselines only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from qat import config as cfg
from qat import experiments, rundata, upstream
from qat.config import RunConfig
from qat.models import ENCODERS, RHEmo
from qat.saved import load_model
from qat.train import TrainConfig, fit_rhemo

SMOKE = cfg.PROFILES["smoke"]
DIAG = {
    "diag-smoke-width": {**SMOKE, "quaternion_width": 1 / 8, "rhemo_profile": "smoke"},
    "diag-smoke-real-on-rhemo": {**SMOKE, "real_input": "rhemo", "rhemo_profile": "smoke"},
    "diag-smoke-recipe": {**SMOKE, "rhemo_recipe": dict(optimizer="adamw", schedule="onecycle")},
    "diag-smoke-bad": {**SMOKE, "lr": 0.5, "rhemo_profile": "smoke"},
}


@pytest.fixture(autouse=True)
def diag_profiles(monkeypatch):
    for name, settings in DIAG.items():
        monkeypatch.setitem(cfg.PROFILES, name, settings)


def test_every_shipped_diagnosis_changes_the_frozen_instrument_in_one_place():
    frozen = cfg.PROFILES["cpu"]
    for name, (what, change) in cfg.DIAGNOSES.items():
        profile = cfg.PROFILES[f"diag-{name}"]
        assert what and {k for k in profile if profile[k] != frozen.get(k)} == set(change)
        upstream.rhemo_key(RunConfig(profile=f"diag-{name}", model="quaternion"))  # consistent


def test_width_and_input_follow_the_profile():
    assert RunConfig(profile="diag-smoke-width", model="quaternion").width == 1 / 8
    assert RunConfig(profile="diag-smoke-width", model="real").width == SMOKE["width"]
    assert RunConfig(profile="diag-smoke-real-on-rhemo", model="real").reads_rhemo
    assert not RunConfig(profile="smoke", model="real").reads_rhemo
    assert RunConfig(profile="smoke", model="quaternion").reads_rhemo


def test_a_diagnostic_profile_runs_baselines_only():
    with pytest.raises(ValueError, match=r"profile='diag-smoke-width': expected method='baseline'"):
        RunConfig(profile="diag-smoke-width", method="dann")


def test_rhemo_profile_reuses_that_profiles_rhemo_and_refuses_other_data():
    ours = RunConfig(profile="diag-smoke-width", model="quaternion", seed=3)
    theirs = RunConfig(profile="smoke", model="quaternion", seed=3)
    assert upstream.rhemo_key(ours) == upstream.rhemo_key(theirs)
    assert upstream.rhemo_key(RunConfig(profile="diag-smoke-recipe", model="quaternion")) != (
        upstream.rhemo_key(RunConfig(profile="smoke", model="quaternion"))
    )
    with pytest.raises(ValueError, match=r"rhemo_profile='smoke' differs in lr"):
        upstream.rhemo_key(RunConfig(profile="diag-smoke-bad", model="quaternion"))


def test_the_rhemo_encoder_is_a_run_setting_in_the_key_only_when_not_published():
    published = RunConfig(profile="smoke", model="quaternion")
    wide = published.replace(rhemo_encoder="wide")
    assert "rhemo_encoder" not in published.key_dict() and wide.key_dict()["rhemo_encoder"]
    assert wide.key() != published.key()
    assert upstream.rhemo_key(wide) != upstream.rhemo_key(published)
    real = RunConfig(profile="smoke", model="real")
    assert real.replace(rhemo_encoder="wide").key() == real.key()  # a real run reads no RH-emo
    assert "RH-emo wide" in wide.label()
    assert wide.prerequisites() != published.prerequisites()  # they share no RH-emo
    with pytest.raises(ValueError, match="rhemo_encoder='huge': expected one of published, wide"):
        RunConfig(rhemo_encoder="huge")
    record = experiments.train_ser(wide.replace(setup="unconfounded"), progress=False)
    rhemo = load_model(record["model"]).rhemo
    convs = [m for m in rhemo.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(ENCODERS["wide"].channels[1:])


def test_the_encoders_channels_are_checked_and_shape_the_network():
    net = RHEmo(5, pools=((2, 1), (1, 1), (1, 1)), channels=(1, 3, 5, 4))
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 3), (3, 5), (5, 4)]
    assert net.encode(torch.randn(2, 1, 8, 6)).shape == (2, 4, 4, 6)
    for bad in ((1, 2, 4, 3), (2, 2, 4, 4), (1, 2, 4), (1, 0, 4, 4)):
        with pytest.raises(ValueError, match="channels="):
            RHEmo(5, channels=bad)


def test_real_on_rhemo_trains_on_the_embedding_and_its_saved_model_predicts():
    run = RunConfig(profile="diag-smoke-real-on-rhemo", model="real", setup="unconfounded")
    record = experiments.train_ser(run, progress=False)
    predictor = load_model(record["model"])
    assert predictor.rhemo is not None and not predictor.net.quaternion
    assert predictor.net.in_channels == 4
    shared = upstream.pretrain_rhemo(run.replace(profile="smoke", model="quaternion"),
                                     progress=False)  # fmt: skip
    for a, b in zip(predictor.rhemo.state_dict().values(), shared.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)  # the smoke profile's RH-emo of the same split, reused


def test_the_quaternion_width_is_the_trained_and_saved_width():
    run = RunConfig(profile="diag-smoke-width", model="quaternion", setup="unconfounded")
    record = experiments.train_ser(run, progress=False)
    net = load_model(record["model"]).net
    first = net.features.conv1_1.conv
    base = load_model(experiments.train_ser(run.replace(profile="smoke"), progress=False)["model"])
    assert first.out_channels == 2 * base.net.features.conv1_1.conv.out_channels


def _lrs(recipe, epochs=(3, 3)):
    data = rundata.run_data(RunConfig(profile="smoke"), progress=False)
    net = RHEmo(len(data.label_space.emotions), pools=SMOKE["rhemo_pools"])
    history = fit_rhemo(net, data.train, data.val, epochs=epochs, seed=0, progress=False,
                        recipe=recipe)["history"]  # fmt: skip
    return [h["lr"] for h in history]


def test_rhemo_recipe_runs_one_cycle_per_stage():
    peak = 4e-3
    lrs = _lrs(TrainConfig(lr=peak, batch_size=8, optimizer="adamw", schedule="onecycle",
                           warmup=0.3))  # fmt: skip
    # Each stage warms up to near the peak and decays to a small share of it; the second
    # stage restarts the same cycle.
    assert lrs[3:] == lrs[:3] and peak / 2 < lrs[0] <= peak and lrs[2] < peak / 20
    assert _lrs(None) == [1e-3] * 6  # the default: Adam at a constant lr


def _ceiling(profile, model, seed, fold, ua, step):
    config = RunConfig(profile=profile, model=model, setup="unconfounded", seed=seed, fold=fold)
    last = {"epoch": 1, "train_loss": 0.5, "train_acc": 0.9, "val_loss": 0.6, "val_ua": ua + 0.1}
    return {"kind": "ser", "config": config.key_dict(), "metrics": {"ua": ua},
            "history": [last], "resources": {"step_time_s": step, "params": 100}}  # fmt: skip


def test_the_diagnosis_table_pairs_runs_as_scipy_does(tmp_path):
    from qat import diagnosis, instrument

    rng = np.random.default_rng(1)
    real = rng.uniform(0.55, 0.62, 5)
    quat = real - rng.uniform(0.05, 0.12, 5)
    wide = quat + rng.uniform(0.0, 0.06, 5)
    records = []
    for (seed, fold), r, q, w in zip(instrument.PAIRS, real, quat, wide, strict=True):
        records += [
            _ceiling("cpu", "real", seed, fold, r, 0.4),
            _ceiling("cpu", "quaternion", seed, fold, q, 0.04),
            _ceiling("diag-quaternion-width", "quaternion", seed, fold, w, 0.1),
        ]
    rows = {r["network"]: r for r in diagnosis.rows(records, "cpu", instrument.PAIRS)}
    low, high = sps.ttest_rel(wide, real).confidence_interval(0.95)
    d = rows["quaternion-width"]["_vs_real"]
    assert (d.mean, d.t_low, d.t_high) == pytest.approx(((wide - real).mean(), low, high))
    assert rows["quaternion-width"]["ceiling UA"] == pytest.approx(wide.mean())
    # The records' own step times (0.1 s against 0.4 s) were timed one run at a time: no ratio.
    assert rows["quaternion-width"]["step time vs real"] is None
    steps = diagnosis.cost_configs("cpu")
    load = rng.uniform(0.5, 2.0, 10)  # the machine's load drifts between rounds
    width = 0.25 * load * np.exp(rng.normal(0, 0.1, 10))
    timed = {"kind": "costs", "config": {"rounds": 10}, "entries": {
        c.key(): {"step_times_s": list(width if name == "quaternion-width" else load)}
        for name, c in steps.items()}}  # fmt: skip
    rows = {r["network"]: r for r in diagnosis.rows([*records, timed], "cpu", instrument.PAIRS)}
    logs = np.log(width / load)
    half = sps.t.ppf(0.975, 9) * logs.std(ddof=1) / np.sqrt(10)
    ratio, low_t, high_t = np.exp([logs.mean(), logs.mean() - half, logs.mean() + half])
    assert rows["quaternion-width"]["step time vs real"] == pytest.approx(ratio)
    said = diagnosis.section([*records, timed], "cpu", instrument.PAIRS, tmp_path)
    assert any(f"step time {ratio:.2f}x [{low_t:.2f}, {high_t:.2f}] the real network's" in line
               for line in said)  # fmt: skip
    m = diagnosis.WITHIN
    expected = "met" if low >= -m else "not met" if high < -m else "interval too wide"
    assert rows["quaternion-width"]["within 0.05 of real"] == expected
    assert rows["real-on-rhemo"]["runs"] == 0  # no runs: an empty row, never a number
    lines = diagnosis.section(records, "cpu", instrument.PAIRS, tmp_path)
    assert any(line.startswith("- `quaternion-width`") and f"{low:+.3f}" in line for line in lines)
    shift = {r["model"]: r for r in diagnosis.speaker_shift(records, "cpu", instrument.PAIRS)}
    assert shift["real"]["validation UA, training speakers (last epoch)"] == pytest.approx(
        real.mean() + 0.1
    )


def test_rhemo_starts_from_the_runs_seed_whatever_the_process_drew_before(tmp_path, monkeypatch):
    from qat import paths

    monkeypatch.setattr(paths, "CACHE", tmp_path)  # nothing cached: both train from scratch
    run = RunConfig(profile="smoke", model="quaternion", seed=5)
    weights = []
    for history in (1, 2):
        torch.manual_seed(history)  # another sweep job ran something else first
        torch.rand(history * 7)
        net = upstream.pretrain_rhemo(run, progress=False)
        weights.append([t.clone() for t in net.state_dict().values()])
        for f in (tmp_path / "networks").iterdir():
            f.unlink()
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_confirmation_uses_fresh_pairs_and_calls_a_gain_confirmed_only_by_its_interval():
    from qat import demonstration, diagnosis, instrument

    fresh = set(diagnosis.CONFIRM_PAIRS)
    used = {*instrument.PAIRS, *demonstration.SELECTION_PAIRS, *demonstration.FINAL_PAIRS}
    assert not fresh & used and len(diagnosis.confirm_configs()) == 3 * len(fresh)
    rng = np.random.default_rng(3)
    base = rng.uniform(0.45, 0.5, len(fresh))
    records = []
    for (seed, fold), b in zip(diagnosis.CONFIRM_PAIRS, base, strict=True):
        records.append(_ceiling("cpu", "quaternion", seed, fold, b, 0.04))
        records.append(_ceiling("diag-rhemo-pools", "quaternion", seed, fold, b + 0.05, 0.07))
        wide = RunConfig(profile="cpu", model="quaternion", setup="unconfounded", seed=seed,
                         fold=fold, rhemo_encoder="wide")  # fmt: skip
        records.append({**records[-2], "config": wide.key_dict(),
                        "metrics": {"ua": b + rng.normal(0, 0.03)}})  # fmt: skip
    rows = {r["candidate"]: r for r in diagnosis.confirmation(records, "cpu")}
    assert rows["rhemo-pools"]["gain confirmed (95% low > 0)"] == "confirmed"
    assert rows["rhemo-pools"]["vs frozen quaternion"].startswith("+0.050 [+0.050")
    low, _ = sps.ttest_rel([r["metrics"]["ua"] for r in records[2::3]], base).confidence_interval()
    expected = "confirmed" if low > 0 else "not confirmed"
    assert rows["rhemo-encoder"]["gain confirmed (95% low > 0)"] == expected
    said = diagnosis.confirmation_reading(list(rows.values()))
    assert said.startswith("Confirmed: rhemo-pools")
    neither = [{**r, "gain confirmed (95% low > 0)": "not confirmed"} for r in rows.values()]
    assert diagnosis.confirmation_reading(neither).startswith("No candidate is confirmed")
    partial = diagnosis.confirmation(records[3:], "cpu")  # the first fresh pair is missing
    assert diagnosis.confirmation_reading(partial).startswith("Pending: rhemo-pools, rhemo-enc")
