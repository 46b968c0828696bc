"""Run records: atomic, never overwritten, keyed by configuration."""

import json
import os

import pytest

from qat import io, runs


def test_record_written_once_and_never_overwritten(tmp_path):
    path = runs.record_path("ser", {"beta": 1.0, "tap": "conv2_1"}, reports=tmp_path)
    io.write_json_once(path, {"ua": 0.5})
    with pytest.raises(FileExistsError, match="never overwritten"):
        io.write_json_once(path, {"ua": 0.9})
    assert json.loads(path.read_text()) == {"ua": 0.5}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_key_depends_on_every_value_not_order():
    a = runs.config_key({"tap": "conv2_1", "beta": 1.0})
    assert a == runs.config_key({"beta": 1.0, "tap": "conv2_1"})
    assert a != runs.config_key({"beta": 10.0, "tap": "conv2_1"})


def test_unserialisable_payload_leaves_nothing(tmp_path):
    path = tmp_path / "runs" / "x.json"
    with pytest.raises(TypeError, match="not JSON serialisable"):
        io.write_json_once(path, {"bad": object()})
    assert not path.parent.exists() or os.listdir(path.parent) == []


def test_unwritable_folder_names_the_folder(tmp_path):
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the reports folder should be")
    with pytest.raises(OSError, match=r"reports is a file; expected a folder"):
        io.write_json_once(blocker / "runs" / "x.json", {})


def test_unreadable_records_are_skipped_with_one_warning_naming_them(tmp_path):
    good = runs.record_path("ser", {"seed": 0}, reports=tmp_path)
    io.write_json_once(good, {"config": {"seed": 0}, "metrics": {"ua": 0.5}})
    (tmp_path / "runs" / "ser-truncated.json").write_text('{"config": {"se')
    (tmp_path / "runs" / "ser-list.json").write_text("[1, 2]")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable.*ser-list.json.*ser-truncated"):
        records = runs.load_records(tmp_path, kind="ser")
    assert [r["metrics"]["ua"] for r in records] == [0.5]
    with pytest.raises(runs.RecordError, match=r"ser-truncated\.json"):
        runs.load_record(tmp_path / "runs" / "ser-truncated.json")


def test_code_version_is_read_once_per_process(monkeypatch):
    # A sweep's worker imports qat once; commits made while it trains must not relabel the
    # code its later records were computed with.
    import subprocess

    import qat

    calls = []
    real_run = subprocess.run

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real_run(*args, **kwargs)

    runs.code_version.cache_clear()
    monkeypatch.setattr(subprocess, "run", counted)
    first = runs.code_version()
    assert first.startswith(f"qat {qat.__version__}")
    asked = len(calls)
    assert runs.code_version() == first and len(calls) == asked  # no second look at git
