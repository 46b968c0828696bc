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
