"""Grids on Ray: each run a task on a 2-CPU cluster that this module starts on 127.0.0.1 and
stops; a group's others wait for its first's task; the records equal the local pool's; a run
whose worker is killed is retried and resumes from its checkpoint, its record written once."""

import json
import os
import signal
from pathlib import Path

import pytest

from qat import sweep
from qat.config import RunConfig

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault(sweep._RAY_LOOPBACK, "0")  # before ray is imported: 127.0.0.1 only
    import ray

    # The workers import this module's and process_tools' runs by name.
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": TESTS}})  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()


RAY = sweep.Engine("ray")


def test_the_test_cluster_serves_on_the_loopback_address_only(cluster):
    assert [node["NodeManagerAddress"] for node in cluster.nodes()] == ["127.0.0.1"]


def test_on_ray_a_group_s_others_start_only_after_its_first_finished(cluster, tmp_path):
    from process_tools import a_grouped_run

    groups = ("a", "b")
    configs = [(str(tmp_path), g, i, groups) for g in groups for i in range(3)]
    results = sweep.run_grid(configs, a_grouped_run, jobs=2, group=lambda c: c[1], engine=RAY)
    assert sorted(results) == [(g, i) for g in groups for i in range(3)]


def test_on_ray_a_run_that_raises_fails_the_grid_after_the_others_ran(cluster):
    with pytest.raises(RuntimeError, match=r"(?s)1 of 3 runs failed; first \(x\).*TypeError"):
        sweep.run_grid([-1, "x", 2], abs, jobs=2, engine=RAY)


SMOKE_GRID = [
    RunConfig(profile="smoke", seed=seed, method=method, tap=tap)
    for seed in (0, 1)
    for method, tap in (("baseline", "conv2_1"), ("at", "conv1_1"))
]  # fmt: skip


def _records(reports: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((reports / "runs").glob("ser-*"))}


def _use_folders(monkeypatch, root: Path) -> Path:
    """The runs' records and caches under `root` (the workers read the $QAT_* variables)."""
    for name in ("reports", "cache"):
        monkeypatch.setenv(f"QAT_{name.upper()}", str(root / name))
    return root / "reports"


@pytest.mark.slow
def test_a_ray_grid_of_smoke_runs_gives_the_local_pool_s_records(cluster, tmp_path, monkeypatch):
    from qat.experiments import run_configs

    assert len({c.key() for c in SMOKE_GRID}) == len(SMOKE_GRID) == 4
    local = _use_folders(monkeypatch, tmp_path / "local")
    run_configs(SMOKE_GRID, jobs=2)
    on_ray = _use_folders(monkeypatch, tmp_path / "ray")
    run_configs(SMOKE_GRID, jobs=2, engine=RAY)
    ours, theirs = _records(local), _records(on_ray)
    assert sorted(ours) == sorted(theirs) == sorted(f"ser-{c.key()}" for c in SMOKE_GRID)
    for key, record in ours.items():
        assert theirs[key]["metrics"]["ua"] == record["metrics"]["ua"], key
        assert theirs[key]["history"] == record["history"], key  # the same training, bitwise
    # The word network the AT runs of both seeds share was trained once per engine.
    for reports in (local, on_ray):
        assert len(list((reports / "runs").glob("orthogonal-word-real-*"))) == 1


def killed_after_its_first_checkpoint(config: RunConfig) -> dict:
    """A sweep's run whose worker, the first time it runs seed 0, is killed (SIGKILL) right
    after its first checkpoint is written; a marker in the cache says it happened."""
    from qat import io
    from qat.experiments import train_ser

    marker = Path(os.environ["QAT_CACHE"]) / f"killed-{config.key()}"
    if config.seed == 0 and not marker.exists():
        write_atomic = io.write_atomic

        def write_then_die(path, write, **options):
            out = write_atomic(path, write, **options)
            if Path(path).name.startswith("ser-") and Path(path).suffix == ".ckpt":
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        io.write_atomic = write_then_die
    return train_ser(config, progress=False)


@pytest.mark.slow
def test_a_run_whose_worker_is_killed_is_retried_from_its_checkpoint_and_recorded_once(
    cluster, tmp_path, monkeypatch
):
    reports = _use_folders(monkeypatch, tmp_path)
    grid = [RunConfig(profile="smoke", seed=seed) for seed in (0, 1)]
    results = sweep.run_grid(grid, killed_after_its_first_checkpoint, jobs=2, engine=RAY)
    killed = f"ser-{grid[0].key()}"
    assert (tmp_path / "cache" / f"killed-{grid[0].key()}").exists()  # it did die
    records = _records(reports)
    assert sorted(records) == sorted(f"ser-{c.key()}" for c in grid)  # none lost, none beside
    assert len(results) == 2
    assert records[killed]["resources"]["resumed_from_epoch"] == 1  # from its checkpoint
    others = [r for k, r in records.items() if k != killed]
    assert [r["resources"]["resumed_from_epoch"] for r in others] == [0]


def test_a_grid_is_refused_an_impossible_engine_before_anything_runs():
    with pytest.raises(ValueError, match="engine='dask'"):
        sweep.Engine("dask")
    with pytest.raises(ValueError, match="address='head:6379': expected a Ray cluster's address"):
        sweep.Engine("local", address="head:6379")
    with pytest.raises(ValueError, match="gpus_per_run=-1"):
        sweep.Engine("ray", gpus_per_run=-1)
    with pytest.raises(ValueError, match=r"gpus_per_run=1\.5"):
        sweep.Engine("ray", gpus_per_run=1.5)
    assert sweep.Engine("ray", gpus_per_run=0.25).gpus_per_run == 0.25
