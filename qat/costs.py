"""Training-step costs of run configurations, measured side by side in one process.

A run record's step time was timed alone (qat.experiments.step_cost), under whatever load the
shared machine had at that moment, so two records' times are not comparable. Here every
configuration's training step (on a fixed batch of its data) is timed in the same rounds, in
a fresh random order per round (qat.resources.interleaved_times), so the load hits them alike;
a ratio of two configurations is taken within each round and summarised over rounds. Peak
memory and FLOPs are counted, not timed. One record per measured set
(reports/runs/costs-<hash>.json), so the pages read the measurement and never re-time it.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence

import torch

from qat import io, resources, runs, stats
from qat.config import RunConfig
from qat.progress import tqdm

KIND = "costs"
ROUNDS = 61  # more rounds narrow the interval of a time ratio
WARMUP = 2


def record_key(configs: Sequence[RunConfig], rounds: int, warmup: int) -> dict:
    """What a measurement depends on: the configurations, the rounds and the threads."""
    return {
        "configs": sorted({c.key() for c in configs}),
        "rounds": rounds,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
    }


def measure(
    configs: Sequence[RunConfig], rounds: int = ROUNDS, warmup: int = WARMUP, progress=True
) -> dict:
    """Every configuration's step: parameters, FLOPs, peak memory (counted) and its time in each
    of `rounds` interleaved rounds (after `warmup` discarded rounds). Returns the record."""
    from qat.experiments import training_steps

    if rounds < 2:
        raise ValueError(f"rounds: expected at least 2 (an interval needs 2), got {rounds}")
    configs = list({c.key(): c for c in configs}.values())
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    steps = training_steps(configs, progress)
    entries = {}
    for config in tqdm(configs, desc="costs: memory and FLOPs", disable=not progress):
        net, step = steps[config.key()]
        step()  # creates optimizer state: the memory figure is the steady-state step's
        entries[config.key()] = {
            "config": config.key_dict(),
            "label": config.label(),
            "params": resources.count_parameters(net),
            "flops_per_step": resources.step_flops(step),
            "peak_memory_bytes": resources.peak_step_memory(step),
        }
    fns = {key: step for key, (_, step) in steps.items()}
    desc = f"costs: {len(fns)} steps, interleaved rounds"
    with tqdm(total=warmup + rounds, desc=desc, disable=not progress) as bar:
        times = resources.interleaved_times(fns, rounds, warmup, after_round=bar.update)
    for key, series in times.items():
        entries[key]["step_times_s"] = series
    return {
        "kind": KIND,
        "config": record_key(configs, rounds, warmup),
        "entries": entries,
        "load_average": [load_before, os.getloadavg()[0]],
        "cpus": os.cpu_count(),
        "code_version": runs.code_version(),
        "wall_time_s": time.perf_counter() - t0,
    }


def run(configs: Sequence[RunConfig], rounds: int = ROUNDS, warmup: int = WARMUP, progress=True):
    """The record of this set of configurations: read if it exists (a rerun never re-times),
    else measured and written."""
    target = runs.record_path(KIND, record_key(configs, rounds, warmup))
    if target.exists():
        return runs.load_record(target)
    record = measure(configs, rounds, warmup, progress)
    io.write_json_beside(target, record)
    return record


def find(records: Sequence[Mapping], configs: Sequence[RunConfig]) -> Mapping | None:
    """The costs record that measured every one of `configs` side by side (the one with the
    most rounds, then by name, so the same records give the same answer), or None."""
    wanted = {c.key() for c in configs}
    found = [r for r in records if r.get("kind") == KIND and wanted <= set(r.get("entries", {}))]
    if not wanted or not found:
        return None
    return max(found, key=lambda r: (r["config"]["rounds"], runs.config_key(r["config"])))


def median_ms(record: Mapping, config: RunConfig) -> float:
    """The median step time of `config` in the record, in milliseconds."""
    return 1e3 * statistics.median(record["entries"][config.key()]["step_times_s"])


def time_ratio(record: Mapping, a: RunConfig, b: RunConfig, level: float = 0.95):
    """(ratio, low, high): the step time of `a` over that of `b`, as the geometric mean over
    rounds of their ratio within each round, with the t-interval of the mean log ratio."""
    times = {c.key(): record["entries"][c.key()]["step_times_s"] for c in (a, b)}
    logs = [{i: math.log(t) for i, t in enumerate(times[c.key()])} for c in (a, b)]
    d = stats.paired(*logs, level=level)
    return math.exp(d.mean), math.exp(d.t_low), math.exp(d.t_high)
