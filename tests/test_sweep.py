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


def test_a_group_s_first_runs_before_its_others_and_beside_the_other_groups_firsts(tmp_path):
    from process_tools import a_grouped_run

    groups = ("a", "b")
    configs = [(str(tmp_path), g, i, groups) for g in groups for i in range(3)]
    results = sweep.run_grid(configs, a_grouped_run, jobs=2, group=lambda c: c[1])
    assert sorted(results) == [(g, i) for g in groups for i in range(3)]


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


INTERRUPTED_SWEEP = """
import signal
import sys
sys.path.insert(0, {tests!r})
from process_tools import a_long_run
from qat import sweep
if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's, even if ignored
    try:
        sweep.run_grid(sys.argv[1:], a_long_run, jobs=1, desc="grid y")
    except KeyboardInterrupt as err:
        print(err)
        sys.exit(130)
"""


def test_ctrl_c_stops_a_sweep_instead_of_running_the_queued_runs(tmp_path):
    import os
    import signal
    from pathlib import Path

    from process_tools import kill_and_list_survivors, spawn, wait_until

    markers, log = [tmp_path / f"started-{i}" for i in range(3)], tmp_path / "child.log"
    child = spawn(INTERRUPTED_SWEEP.format(tests=str(Path(__file__).parent)), *markers, log=log)
    wait_until(markers[0].exists, child, log)
    os.kill(child.pid, signal.SIGINT)  # as `kill -INT`: only the sweep's own process
    try:
        child.wait(timeout=60)
    finally:
        survivors = kill_and_list_survivors(child) if child.poll() is None else []
    assert child.returncode == 130 and survivors == [], log.read_text()
    assert not markers[1].exists() and not markers[2].exists()  # the queued runs never started
    assert "interrupted: grid y, 0 of 3 runs done" in log.read_text()
    assert "\n  a long run interrupted" in log.read_text()  # the run's own message, below


def test_a_script_that_starts_a_sweep_without_a_main_guard_is_told_so(tmp_path):
    # Spawned workers import the script again, which would start the sweep again in each.
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("from qat import sweep\nsweep.run_grid([1, 2], abs, jobs=2)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0
    (said,) = [line for line in done.stderr.splitlines() if "RuntimeError: sweep:" in line]
    assert said.endswith(
        "RuntimeError: sweep: a worker process ended abruptly (killed, out of memory, or a "
        f"script without a main guard; 0 of 2 runs done, their records are kept). "
        f"{sweep.UNGUARDED}"
    )
    assert 'if __name__ == "__main__":' in sweep.UNGUARDED


# ------------------------------------------------------------ devices (issue 35, item 2)


def visible_gpus_of_a_worker(config) -> tuple:
    """A sweep's run that waits until every run of the grid has started (so each job takes
    one), then reports its process and the GPUs it sees (importable by name)."""
    import os
    import time
    from pathlib import Path

    folder, runs = Path(config[0]), config[1]
    (folder / f"started-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while len(list(folder.glob("started-*"))) < runs and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_the_local_pool_gives_each_worker_its_own_gpu_in_turn(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    engine = sweep.Engine(gpus=(2, 5))  # the workers never touch CUDA: no GPU needed here
    results = sweep.run_grid([(str(tmp_path), 2)] * 2, visible_gpus_of_a_worker, jobs=2,
                             engine=engine)  # fmt: skip
    assert len({pid for pid, _ in results}) == 2
    assert sorted(gpus for _, gpus in results) == ["2", "5"]


def test_without_gpus_the_local_pool_leaves_the_visible_devices_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    results = sweep.run_grid([(str(tmp_path), 1)], visible_gpus_of_a_worker, jobs=1)
    assert [gpus for _, gpus in results] == ["7"]


def test_device_is_qat_device_or_cuda_when_available(monkeypatch):
    import torch

    from qat import rundata

    monkeypatch.delenv(rundata.DEVICE_VARIABLE, raising=False)
    assert rundata.device() == ("cuda:0" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(rundata.DEVICE_VARIABLE, "cpu")
    assert rundata.device() == "cpu" and rundata.worker_gpus() == ()


@pytest.mark.parametrize("text", ["", "gpu", "cuda:", "cuda:x", "CPU", "cuda:0,1"])
def test_a_device_that_is_not_cpu_cuda_or_cuda_n_is_refused(monkeypatch, text):
    from qat import rundata

    monkeypatch.setenv(rundata.DEVICE_VARIABLE, text)
    with pytest.raises(ValueError, match=rf"\$QAT_DEVICE={text!r}: expected cpu, cuda or cuda:N"):
        rundata.device()


def test_cuda_on_a_machine_without_it_is_refused_in_one_line(monkeypatch):
    import torch

    from qat import rundata

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for text in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"device='{text}': no CUDA device here"):
            rundata.check_device(text)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rundata.check_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\), cuda:0 to cuda:1"):
        rundata.check_device("cuda:2")


def test_the_local_pool_spreads_over_every_gpu_only_for_plain_cuda(monkeypatch):
    import torch

    from qat import rundata

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv(rundata.DEVICE_VARIABLE, "cuda")
    assert rundata.worker_gpus() == (0, 1, 2)
    monkeypatch.setenv(rundata.DEVICE_VARIABLE, "cuda:1")  # the user's choice: every run there
    assert rundata.worker_gpus() == ()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv(rundata.DEVICE_VARIABLE, "cuda")
    assert rundata.worker_gpus() == ()


def test_bf16_enters_the_record_key_and_fp32_keeps_the_keys_it_had(monkeypatch):
    from qat import rundata
    from qat.config import RunConfig

    fp32 = RunConfig(profile="smoke", method="at", tap="conv1_1")
    assert "precision" not in fp32.key_dict()  # records written before the setting keep keys
    bf16 = fp32.replace(precision="bf16")
    assert bf16.key_dict() == {**fp32.key_dict(), "precision": "bf16"}
    assert bf16.label().endswith(" bf16") and bf16.prerequisites() == fp32.prerequisites()
    assert rundata.train_config("smoke", 0, precision=bf16.precision).precision == "bf16"
