"""Killing a child Python with SIGKILL and checking that nothing it started outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def spawn(script: str, *args, log: Path, env: dict | None = None) -> subprocess.Popen:
    """A child Python running `script` (source text), its output in `log`."""
    path = log.with_suffix(".py")
    path.write_text(script)
    with open(log, "w") as fh:
        return subprocess.Popen(
            [sys.executable, str(path), *map(str, args)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout=120.0):
    """Poll `condition` while the child runs; fail with its log if it ends or times out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"child ended ({proc.returncode}) too early:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for the child:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_and_list_survivors(proc: subprocess.Popen, grace: float = 20.0) -> list[str]:
    """SIGKILL `proc` (only it, as a user's `kill -9` would), then wait up to `grace` seconds
    for every process it had started to end; returns the survivors (and kills them, so a
    failing test leaves nothing behind)."""
    descendants = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in descendants) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [p for p in descendants if alive(p)]
    described = [f"{p.pid} {' '.join(p.cmdline()[:4])}" for p in survivors]
    for p in survivors:
        p.kill()  # the test started them; end them whatever the verdict
    return described


def threads_of_a_run(config) -> tuple:
    """A sweep's run that reports the intra-op threads it was given (importable by name)."""
    import torch

    return config, torch.get_num_threads()


def a_long_run(marker) -> None:
    """A sweep's run that says it started (by creating `marker`), then works until killed."""
    from pathlib import Path

    Path(marker).touch()
    try:
        while True:
            time.sleep(0.1)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("a long run interrupted") from None


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def a_grouped_run(config) -> tuple:
    """A sweep's run that checks the order within its group: a group's first waits until
    every group's first has started (they must run side by side); a group's others need
    their first to have finished."""
    folder, group, index, groups = config
    folder = Path(folder)
    if index == 0:
        (folder / f"started-{group}").touch()
        started = lambda: all((folder / f"started-{g}").exists() for g in groups)  # noqa: E731
        _wait_for(started, f"group {group}'s first ran alone")
        time.sleep(0.3)  # a follower submitted too early would start meanwhile
        (folder / f"done-{group}").touch()
    elif not (folder / f"done-{group}").exists():
        raise RuntimeError(f"group {group}'s run {index} started before its first finished")
    return group, index


def train_a_shared_network(folder) -> str:
    """A sweep's run that asks qat.upstream's cache for the network a parallel run asks for
    too; every training it does is counted in folder/trainings. Returns the weights' digest."""
    import torch

    from qat import upstream

    folder = Path(folder)
    (folder / f"ready-{os.getpid()}").touch()

    def train_fn(net, checkpoint):
        _wait_for(lambda: len(list(folder.glob("ready-*"))) == 2, "the other run never started")
        time.sleep(1.0)  # the other run looks in the cache meanwhile
        with open(folder / "trainings", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        with torch.no_grad():
            net.weight.normal_()
        return {}

    build = lambda: torch.nn.Linear(4, 2)  # noqa: E731
    net, _ = upstream._cached_network("rhemo", {"case": "shared"}, build, train_fn)
    return upstream.weights_digest(net)
