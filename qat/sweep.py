"""Run many independent configurations in parallel processes.

The sweep knows nothing of what a run is: it takes the configurations and the function that
runs one. Each run's record name is the hash of its configuration, so a sweep skips what
already exists (a killed sweep resumes where it stopped) and parallel sweeps never overwrite
each other's records.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
import traceback
from collections.abc import Callable, Hashable, Sequence

from qat import io
from qat.progress import tqdm

_STOP = None  # in a worker: the sweep's stop event (set on Ctrl-C)
UNGUARDED = (
    "Each worker imports the script that started the sweep, so a script must start it under "
    '`if __name__ == "__main__":` (notebooks and `qat` commands need nothing).'
)


def _start_worker(stop) -> None:
    global _STOP
    _STOP = stop
    io.exit_with_parent()  # a sweep killed with SIGTERM or SIGKILL leaves no worker training on


def _run_one(run: Callable, config, threads: int):
    if _STOP is not None and _STOP.is_set():  # queued before Ctrl-C: never started
        return config, None, "not started: the sweep was interrupted"
    import torch

    torch.set_num_threads(threads)  # N jobs share the cores instead of oversubscribing them
    try:
        return config, run(config), None
    except Exception:  # a failed configuration is reported, the others go on
        return config, None, traceback.format_exc()


def _cores() -> int:
    """The cores this sweep may use: OMP_NUM_THREADS when set (two sweeps side by side each
    take their share), else the cores this process may run on."""
    budget = os.environ.get("OMP_NUM_THREADS", "")
    if budget.isdigit() and int(budget) > 0:
        return int(budget)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _stop(pool: cf.ProcessPoolExecutor, futures, stop) -> None:
    """Ctrl-C: start no further run (the pool hands a worker its next run in advance, hence
    the event) and interrupt the running ones (a terminal's Ctrl-C reaches the workers too,
    `kill -INT` only this process), then wait for them to stop."""
    stop.set()
    for future in futures:
        future.cancel()
    for worker in mp.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGINT)
    pool.shutdown(wait=True, cancel_futures=True)


def run_grid(
    configs: Sequence,
    run: Callable,
    jobs: int = 1,
    group: Callable[[object], Hashable] | None = None,
    first: Callable | None = None,
    name: Callable[[object], str] = str,
    threads: int | None = None,
    desc: str = "sweep",
) -> list:
    """Run `run(config)` for every configuration in `jobs` spawned processes; return the
    results. `run` must be importable by name (a module-level function).

    With `group`, the first configuration of each group runs before the group's others, so
    that what a group shares (data, pretrained networks) is built once and the others only
    read it. With one job the first ones run in this process (through `first`, default `run`,
    e.g. to show their progress); with more, the workers run every group's first side by side
    and then its others (what two groups share is locked where it is built, e.g. SynthEmo's
    folder and qat.upstream's network cache)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: expected an integer >= 1")
    if not configs:
        return []
    threads = threads or max(1, _cores() // jobs)
    members: dict = {}
    for i, config in enumerate(configs):
        members.setdefault(group(config) if group else i, []).append(config)
    groups = list(members.values())
    if jobs == 1:
        # A group of one shares nothing: it goes to the pool like the followers.
        results = [(first or run)(m[0]) for m in groups if len(m) > 1]
        start = [(c, []) for m in groups for c in (m[1:] if len(m) > 1 else m)]
    else:
        results, start = [], [(m[0], m[1:]) for m in groups]
    failures = []
    bar = tqdm(total=len(configs) - len(results), desc=f"{desc} ({jobs} jobs)")
    context = mp.get_context("spawn")
    stop = context.Event()
    with cf.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_start_worker, initargs=(stop,)
    ) as pool:
        futures = []

        def submit(config):
            futures.append(pool.submit(_run_one, run, config, threads))
            return futures[-1]

        waiting = {submit(c): followers for c, followers in start}  # run -> who waits for it
        try:
            while waiting:
                done, _ = cf.wait(waiting, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    waiting.update((submit(c), []) for c in waiting.pop(future))
                    config, result, error = future.result()
                    bar.update()
                    if error:
                        failures.append((config, error))
                        tqdm.write(f"FAILED {name(config)}:\n{error}")
                    else:
                        results.append(result)
                        bar.set_postfix_str(f"done: {name(config)}")
        except cf.process.BrokenProcessPool:
            raise RuntimeError(
                f"{desc}: a worker process ended abruptly (killed, out of memory, or a script "
                f"without a main guard; {bar.n} of {bar.total} runs done, their records are "
                f"kept). {UNGUARDED}"
            ) from None
        except KeyboardInterrupt:
            _stop(pool, futures, stop)
            stopped = [f.exception() for f in futures if not f.cancelled()]
            cut = [f"\n  {e}" for e in stopped if isinstance(e, KeyboardInterrupt)]
            raise KeyboardInterrupt(
                f"interrupted: {desc}, {bar.n} of {bar.total} runs done; their records are "
                "kept, a run cut short resumes from its checkpoint, the same command goes on"
                + "".join(cut)
            ) from None
    bar.close()
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(configs)} runs failed; first ({name(failures[0][0])}): "
            f"{failures[0][1]}"
        )
    return results
