"""Run records: atomic, never overwritten, keyed by configuration."""

import json
import os
import re

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


def test_a_record_is_served_only_if_its_stored_config_is_the_runs(tmp_path):
    ours, other = {"seed": 2, "taps": ("conv2_1",)}, {"seed": 1, "taps": ["conv2_1"]}
    target = runs.record_path("ser", ours, reports=tmp_path)
    io.write_json(target, {"kind": "ser", "config": other, "metrics": {"ua": 0.4}})
    with pytest.warns(UserWarning, match=r"its stored config is another run's \(differs in seed"):
        assert runs.find_record("ser", ours, tmp_path) is None
    beside = io.write_json_beside(target, {"kind": "ser", "config": ours, "metrics": {"ua": 0.6}})
    path, record = runs.find_record("ser", ours, tmp_path)  # the one beside, tuples as lists
    assert path == beside and record["metrics"]["ua"] == 0.6
    assert runs.find_record("ser", {"seed": 9}, tmp_path) is None  # nothing there: no warning
    target.write_text('{"kind": "ser", "conf')  # an unreadable record at the path is an error
    with pytest.raises(runs.RecordError, match=r"not a readable run record"):
        runs.find_record("ser", ours, tmp_path)


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"kind": "ser", "config": {}}, "no 'metrics'"),
        ({"kind": "eval", "config": {}, "metrics": {"wa": 0.5}}, "no metrics.ua"),
        ({"kind": "ser", "config": {}, "metrics": {"ua": 1.7}}, "metrics.ua = 1.7 is outside"),
        ({"kind": "ser", "config": {}, "metrics": {"ua": "0.5"}}, "metrics.ua is '0.5', not a"),
        ({"kind": "ser", "config": {}, "metrics": {"ua": float("nan")}}, "metrics.ua = nan"),
        ({"kind": "ser", "config": {}, "metrics": {"ua": 0.5}, "groups": {"worst_group": -0.1}},
         "groups.worst_group = -0.1"),
        ({"kind": "orthogonal", "config": {}, "metrics": {"ua": 2}}, "metrics.ua = 2"),
    ],
)  # fmt: skip
def test_records_with_missing_fields_or_impossible_numbers_are_skipped(tmp_path, record, problem):
    good = {"kind": "ser", "config": {"seed": 0}, "metrics": {"ua": 0.5, "wa": 1.0}}
    io.write_json(tmp_path / "runs" / "ser-a.json", good)
    io.write_json(tmp_path / "runs" / "ser-b.json", record)
    with pytest.warns(UserWarning, match=re.escape(problem)):
        assert runs.load_records(tmp_path) == [good]
    with pytest.raises(runs.RecordError, match=re.escape(problem)):
        runs.load_record(tmp_path / "runs" / "ser-b.json")


def test_many_unreadable_records_are_summarised_in_one_short_warning(tmp_path):
    (tmp_path / "runs").mkdir()
    for i in range(50):
        (tmp_path / "runs" / f"ser-{i:02d}.json").write_text("[]")
    with pytest.warns(UserWarning) as caught:
        runs.load_records(tmp_path)
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("skipped 50 unreadable file(s)") and "and 47 more" in message
    assert len(message) < 600 and "\n" not in message
