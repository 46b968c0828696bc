"""The sweep shares the cores: N jobs get their share each, and OMP_NUM_THREADS sets the budget
so that two sweeps side by side do not oversubscribe the machine."""

import pytest

from qat import sweep


@pytest.mark.parametrize(("budget", "expected"), [("1", 1), ("3", 3), ("", None), ("x", None)])
def test_the_budget_is_omp_num_threads_when_set(monkeypatch, budget, expected):
    import os

    monkeypatch.setenv("OMP_NUM_THREADS", budget)
    assert sweep._cores() == (expected or len(os.sched_getaffinity(0)))


@pytest.mark.parametrize(("budget", "jobs", "expected"), [("4", 2, 2), ("1", 1, 1), ("2", 3, 1)])
def test_each_job_gets_its_share_of_the_budget(monkeypatch, capsys, budget, jobs, expected):
    from process_tools import threads_of_a_run

    monkeypatch.setenv("OMP_NUM_THREADS", budget)
    results = sweep.run_grid(list(range(jobs)), threads_of_a_run, jobs=jobs, desc="grid x")
    assert sorted(results) == [(i, expected) for i in range(jobs)]
    assert f"grid x ({jobs} jobs)" in capsys.readouterr().err  # the bar names its grid


KILLED_SWEEP = """
import sys
sys.path.insert(0, {tests!r})
from process_tools import a_long_run
from qat import sweep
if __name__ == "__main__":
    sweep.run_grid([sys.argv[1]], a_long_run, jobs=1)
"""


def test_a_killed_sweep_leaves_no_worker_training_on(tmp_path):
    from pathlib import Path

    from process_tools import kill_and_list_survivors, spawn, wait_until

    marker, log = tmp_path / "started", tmp_path / "child.log"
    tests = str(Path(__file__).parent)
    child = spawn(KILLED_SWEEP.format(tests=tests), marker, log=log)
    wait_until(marker.exists, child, log)
    assert kill_and_list_survivors(child) == []  # the worker ended with its parent
