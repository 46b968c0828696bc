"""`qat models`: the saved models the run records name, with their label, setting, test UA
and path; records name models relative to the cache root, and older absolute names still
count."""

from __future__ import annotations

import shutil

import test_saved

from qat import cli, io, paths, runs


def _record(seed: int, ua: float, model: str) -> dict:
    config = {"corpus": "synthemo", "setup": "confounded", "model": "real", "method": "baseline",
              "taps": [], "seed": seed, "profile": "smoke", "split": {"rho": 0.9,
                                                                    "factor": "word"}}  # fmt: skip
    return {"kind": "ser", "config": config, "metrics": {"ua": ua}, "model": model}


def test_qat_models_lists_label_setting_test_ua_and_path(tmp_path, monkeypatch, capsys):
    model = test_saved.build_model(tmp_path.parent / "cli-models-model")
    monkeypatch.setattr(paths, "REPORTS", tmp_path / "reports")
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")
    (tmp_path / "cache" / "models").mkdir(parents=True)
    shutil.copy(model.path, tmp_path / "cache" / "models" / "ser-a.pt")
    old_style = tmp_path / "elsewhere" / "ser-b.pt"  # a record from before relative names
    old_style.parent.mkdir()
    shutil.copy(model.path, old_style)
    records = [_record(1, 0.61, "models/ser-a.pt"), _record(2, 0.75, str(old_style)),
               _record(3, 0.5, "models/gone.pt")]  # fmt: skip
    for record in records:
        io.write_json(runs.record_path("ser", record["config"]), record)
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["label", "setting", "test", "UA", "path"]
    assert lines[1].startswith("real baseline seed 2 ") and lines[1].endswith(str(old_style))
    assert "synthemo confounded rho 0.9 profile smoke" in lines[1] and " 0.7500 " in lines[1]
    assert lines[2].endswith(str(tmp_path / "cache" / "models" / "ser-a.pt"))
    assert " 0.6100 " in lines[2]
    assert lines[3] == (f"2 saved model(s) under {tmp_path / 'cache'}; 1 more named by records "
                        "are not in this cache")  # fmt: skip
