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
