"""Run records: atomic, never overwritten, keyed by configuration."""

import json
import os

import pytest

from qat import runs


def test_record_written_once_and_never_overwritten(tmp_path):
    path = runs.record_path("ser", {"beta": 1.0, "tap": "conv2_1"}, reports=tmp_path)
    runs.write_json_once(path, {"ua": 0.5})
    with pytest.raises(FileExistsError, match="never overwritten"):
        runs.write_json_once(path, {"ua": 0.9})
    assert json.loads(path.read_text()) == {"ua": 0.5}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_key_depends_on_every_value_not_order():
    a = runs.config_key({"tap": "conv2_1", "beta": 1.0})
    assert a == runs.config_key({"beta": 1.0, "tap": "conv2_1"})
    assert a != runs.config_key({"beta": 10.0, "tap": "conv2_1"})


def test_unserialisable_payload_leaves_nothing(tmp_path):
    path = tmp_path / "runs" / "x.json"
    with pytest.raises(TypeError, match="not JSON serialisable"):
        runs.write_json_once(path, {"bad": object()})
    assert not path.parent.exists() or os.listdir(path.parent) == []


def test_unwritable_folder_names_the_folder(tmp_path):
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the reports folder should be")
    with pytest.raises(OSError, match=r"cannot write run records to .*reports"):
        runs.write_json_once(blocker / "runs" / "x.json", {})
