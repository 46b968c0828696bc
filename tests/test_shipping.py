"""Shipped models (qat.shipping): the race's main-setting finalists of the first fresh pair,
copied into models/ in float16 under content-keyed names; a record whose model file this cache
lacks resolves to its shipped copy, which predicts as the trained file within float16's
precision; nothing is written when a file is missing or the budget is exceeded."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import test_saved
import torch

from qat import cli, demonstration, paths, runs, saved, shipping


@pytest.fixture
def setting(tmp_path, monkeypatch):
    """A cache with two finalists' model files (copies of one tiny trained model) and their
    records; `shipping.chosen` picks them as the real baseline and ceiling."""
    model = test_saved.build_model(tmp_path.parent / "shipping-model")
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(saved, "SHIPPED", tmp_path / "models")
    (tmp_path / "cache" / "models").mkdir(parents=True)
    base = demonstration.base("real", method="baseline")
    chosen = {"baseline": base, "ceiling": base.replace(setup="unconfounded"),
              "at placebo": base.replace(method="at", orthogonal="random")}  # fmt: skip
    monkeypatch.setattr(demonstration, "finalists",
                        lambda records, m: chosen if m == "real" else {})  # fmt: skip
    seed, fold = demonstration.FINAL_PAIRS[0]
    records = []
    for i, config in enumerate(chosen.values()):
        name = f"ser-{i}.pt"
        shutil.copy(model.path, tmp_path / "cache" / "models" / name)
        run = config.replace(seed=seed, fold=fold)
        records.append({"kind": "ser", "config": run.key_dict(), "model": f"models/{name}"})
    records.append({"kind": "ser", "config": base.replace(seed=seed + 1, fold=fold).key_dict(),
                    "model": "models/other.pt"})  # another pair: never shipped  # fmt: skip
    return model, records, tmp_path


def test_the_first_pairs_finalists_ship_as_float16_copies_the_records_then_find(
    setting, monkeypatch, capsys
):
    model, records, tmp_path = setting
    monkeypatch.setattr(runs, "load_records", lambda *a, **k: records)
    assert cli.main(["models", "--ship"]) == 0  # into qat.saved.SHIPPED, here tmp_path/models
    out = capsys.readouterr().out
    assert "2 shipped model(s) under models/" in out and "a float16 copy of ser-0.pt" in out
    rows = shipping.ship(records)  # again: the same copies, the same index
    assert [r["finalist"] for r in rows] == ["real baseline", "real ceiling"]  # no placebo
    (copy,) = {r["shipped"] for r in rows}  # the same weights: one content-keyed file
    data = (tmp_path / "models" / copy).read_bytes()
    assert copy == f"ser-{hashlib.sha256(data).hexdigest()[:16]}.pt"
    index = json.loads((tmp_path / "models" / "index.json").read_text())
    assert index == {"ser-0.pt": copy, "ser-1.pt": copy}
    stored = torch.load(tmp_path / "models" / copy, weights_only=True)
    trained = torch.load(model.path, weights_only=True)
    for k, v in trained["model"]["state_dict"].items():
        kept = stored["model"]["state_dict"][k]
        assert kept.dtype == (torch.float16 if v.dtype == torch.float32 else v.dtype)
        torch.testing.assert_close(kept.to(v.dtype), v, rtol=1e-3, atol=1e-4)
    assert stored["normalizer"] == trained["normalizer"]
    # The cache loses its files: the records resolve to the shipped copy, which predicts as
    # the trained network within float16's precision.
    shutil.rmtree(tmp_path / "cache" / "models")
    assert saved.resolve_stored("models/ser-0.pt") == tmp_path / "models" / copy
    assert not saved.resolve_stored("models/other.pt").exists()  # not shipped: as named
    shipped = saved.load_model("models/ser-1.pt")
    probabilities = shipped.predict_features(model.test_x)
    np.testing.assert_allclose(probabilities, model.probabilities.numpy(), atol=2e-3)


def test_nothing_is_written_when_a_file_is_missing_or_the_budget_is_exceeded(setting):
    _, records, tmp_path = setting
    with pytest.raises(ValueError, match=r"the copies need .* MiB, more than the budget"):
        shipping.ship(records, budget=1000)
    (tmp_path / "cache" / "models" / "ser-1.pt").unlink()
    with pytest.raises(ValueError, match=r"1 model file\(s\) are not in this cache: real "
                       r"ceiling"):  # fmt: skip
        shipping.ship(records)
    assert not (tmp_path / "models").exists()
    with pytest.raises(ValueError, match=r"no finalist of the fair race has run on pair 400/0"):
        shipping.ship(records[-1:])


def test_a_damaged_index_is_named(setting):
    _, _, tmp_path = setting
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"index.json is damaged"):
        saved.resolve_stored("models/ser-9.pt")


def test_shipped_finalists_are_the_baseline_the_ceiling_and_every_method():
    assert set(shipping.SHIPPED_NAMES) == {"baseline", "ceiling", *demonstration.METHODS}
