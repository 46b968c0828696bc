"""Run many independent configurations in parallel processes, or as tasks on a Ray cluster.

The sweep knows nothing of what a run is: it takes the configurations and the function that
runs one. Each run's record name is the hash of its configuration, so a sweep skips what
already exists (a killed sweep resumes where it stopped) and parallel sweeps never overwrite
each other's records.

Two engines (Engine.kind): "local", a pool of processes on this machine (the default), and
"ray", one Ray task per run with its resource request, for a cluster. On Ray a group's other
runs are tasks that take the group's first as an argument, so Ray starts them once it is
done, with no file lock (NFS does not honour them reliably); a task whose worker dies is
started again (max_retries) and the run resumes from its checkpoint.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
import traceback
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

from qat import io
from qat.progress import tqdm

_STOP = None  # in a worker: the sweep's stop event (set on Ctrl-C)
UNGUARDED = (
    "Each worker imports the script that started the sweep, so a script must start it under "
    '`if __name__ == "__main__":` (notebooks and `qat` commands need nothing).'
)


ENGINES = ("local", "ray")
# Read by ray when it is imported: "0" makes a cluster started here use the loopback address
# (127.0.0.1) for every service instead of the machine's network address.
_RAY_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class Engine:
    """Where a grid's runs execute.

    kind "local": `jobs` processes on this machine; with `gpus`, worker i sees only GPU
    gpus[i % len(gpus)] (CUDA_VISIBLE_DEVICES), so that N jobs on N GPUs run one run per GPU.
    kind "ray": one task per run on the cluster at `address` (e.g. "ray://head:10001" or
    "auto"), or on a local cluster started for the grid (on 127.0.0.1, stopped after it) when
    address is None; each task asks for `cpus_per_run` CPUs (default: this machine's share,
    cores // jobs) and `gpus_per_run` GPUs (a share of one below 1), and is started again up
    to `max_retries` times if its worker dies.
    """

    kind: str = "local"
    address: str | None = None
    cpus_per_run: int | None = None
    gpus_per_run: float = 0.0
    gpus: tuple[int, ...] = ()
    max_retries: int = 3

    def __post_init__(self):
        if self.kind not in ENGINES:
            raise ValueError(f"engine={self.kind!r}: expected one of {', '.join(ENGINES)}")
        if self.address is not None and (self.kind != "ray" or not str(self.address).strip()):
            raise ValueError(f"address={self.address!r}: expected a Ray cluster's address, "
                             "with engine='ray'")  # fmt: skip
        cpus = self.cpus_per_run
        if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
            raise ValueError(f"cpus_per_run={cpus!r}: expected an integer >= 1")
        gpus = self.gpus_per_run
        if isinstance(gpus, bool) or not isinstance(gpus, int | float) or not 0 <= gpus < 1e6:
            raise ValueError(f"gpus_per_run={gpus!r}: expected a number >= 0")
        if gpus and self.kind != "ray":
            raise ValueError("gpus_per_run: a Ray resource request; the local pool spreads its "
                             "workers over the GPUs itself")  # fmt: skip
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(f"gpus_per_run={gpus!r}: a share of one GPU (below 1) or whole GPUs")
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_retries={retries!r}: expected an integer >= 0")


def _start_worker(stop, gpus=(), counter=None) -> None:
    global _STOP
    _STOP = stop
    io.exit_with_parent()  # a sweep killed with SIGTERM or SIGKILL leaves no worker training on
    if gpus:  # before anything touches CUDA: "cuda" in this worker is then its own GPU
        with counter.get_lock():
            index, counter.value = counter.value, counter.value + 1
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])


def _run_one(run: Callable, config, threads: int):
    if _STOP is not None and _STOP.is_set():  # queued before Ctrl-C: never started
        return config, None, "not started: the sweep was interrupted"
    import torch

    torch.set_num_threads(threads)  # N jobs share the cores instead of oversubscribing them
    try:
        return config, run(config), None
    except Exception:  # a failed configuration is reported, the others go on
        return config, None, traceback.format_exc()


def _finished(config, result, error, results: list, failures: list, bar, name) -> None:
    """A run came back (from either engine): count it, keep its result or its failure."""
    bar.update()
    if error:
        failures.append((config, error))
        tqdm.write(f"FAILED {name(config)}:\n{error}")
    else:
        results.append(result)
        bar.set_postfix_str(f"done: {name(config)}")


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
    engine: Engine | None = None,
) -> list:
    """Run `run(config)` for every configuration in `jobs` spawned processes (or as Ray tasks:
    `engine`); return the results. `run` must be importable by name (a module-level function).

    With `group`, the first configuration of each group runs before the group's others, so
    that what a group shares (data, pretrained networks) is built once and the others only
    read it. With one job the first ones run in this process (through `first`, default `run`,
    e.g. to show their progress); with more, the workers run every group's first side by side
    and then its others (what two groups share is locked where it is built, e.g. SynthEmo's
    folder and qat.upstream's network cache). On Ray, a group's others wait for its first's
    task, `first` is not used and `jobs` only sets the default CPUs per run."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: expected an integer >= 1")
    engine = engine or Engine()
    if not configs:
        return []
    threads = threads or engine.cpus_per_run or max(1, _cores() // jobs)
    members: dict = {}
    for i, config in enumerate(configs):
        members.setdefault(group(config) if group else i, []).append(config)
    groups = list(members.values())
    if engine.kind == "ray":
        return _run_on_ray(groups, run, engine, threads, name, desc)
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
    initargs = (stop, tuple(engine.gpus), context.Value("i", 0))
    with cf.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_start_worker, initargs=initargs
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
                    _finished(config, result, error, results, failures, bar, name)
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
    _raise_failures(failures, len(configs), name)
    return results


def _raise_failures(failures: list, total: int, name: Callable) -> None:
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {total} runs failed; first ({name(failures[0][0])}): "
            f"{failures[0][1]}"
        )


# ---------------------------------------------------------------------------------- Ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None) -> Iterator:
    """The `ray` module, connected for the block: to the cluster at `address`, or to a local
    cluster started here on 127.0.0.1 with `num_cpus` CPUs (default: this machine's budget,
    _cores()) and stopped after the block. A process already connected (a notebook, a test
    that started its own cluster) keeps its connection, as it is."""
    if address is None:
        os.environ.setdefault(_RAY_LOOPBACK, "0")  # read when ray is first imported
    import ray

    if ray.is_initialized():
        yield ray
        return
    if address is None:
        ray.init(address="local", num_cpus=num_cpus or _cores(), include_dashboard=False)
    else:
        ray.init(address=address)
    try:
        yield ray
    finally:
        ray.shutdown()  # a cluster started here stops; one at an address is only left


def _forwarded_environment() -> dict[str, str]:
    """The kit's settings ($QAT_*: profile, folders, device, memory budget) as this process
    has them, for the runs' workers, which the cluster started with its own environment;
    folders as absolute paths (a worker starts in another folder)."""
    out = {}
    for key, value in os.environ.items():
        if key.startswith("QAT_"):
            is_folder = key in ("QAT_REPORTS", "QAT_DATA", "QAT_CACHE") and value.strip()
            out[key] = os.path.abspath(os.path.expanduser(value)) if is_folder else value
    return out


def _ray_task(run: Callable, config, threads: int, *after):
    """One run in a Ray worker. `after`: the results of the runs it waits for; Ray starts the
    task only once they exist, which is all they are for."""
    return _run_one(run, config, threads)


def _run_on_ray(groups: list, run: Callable, engine: Engine, threads: int, name, desc) -> list:
    total = sum(len(m) for m in groups)
    bar = tqdm(total=total, desc=f"{desc} (ray)")
    results, failures = [], []
    with ray_cluster(engine.address) as ray:
        # A run that raises fails as on the local pool; only a lost worker is retried.
        task = ray.remote(_ray_task).options(
            num_cpus=threads, num_gpus=engine.gpus_per_run, max_retries=engine.max_retries,
            retry_exceptions=False,
            runtime_env={"env_vars": _forwarded_environment()},
        )  # fmt: skip
        shared = ray.put(run)
        pending = {}
        for members in groups:
            head = task.remote(shared, members[0], threads)
            pending[head] = members[0]
            for config in members[1:]:  # started by Ray once the group's first is done
                pending[task.remote(shared, config, threads, head)] = config
        try:
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                config = pending.pop(ready)
                try:
                    _, result, error = ray.get(ready)
                except ray.exceptions.RayError as err:  # its worker died max_retries + 1 times
                    result, error = None, f"{type(err).__name__}: {err}"
                _finished(config, result, error, results, failures, bar, name)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)  # a running task gets KeyboardInterrupt; a queued one never starts
            raise KeyboardInterrupt(
                f"interrupted: {desc}, {bar.n} of {bar.total} runs done; their records are "
                "kept, a run cut short resumes from its checkpoint, the same command goes on"
            ) from None
    bar.close()
    _raise_failures(failures, total, name)
    return results
