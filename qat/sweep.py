"""Run many independent train_ser configurations in parallel processes.

Each configuration's record name is the hash of its configuration, so a sweep skips what
already exists (a killed sweep resumes where it stopped) and parallel sweeps never overwrite
each other's records.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import traceback

from tqdm.auto import tqdm

# What the prerequisites (split, RH-emo, orthogonal network) of a configuration depend on.
GROUP_KEYS = ("model", "setup", "orthogonal", "seed", "corpus", "rho", "factor")


def _run_one(kwargs: dict, threads: int) -> tuple[dict, dict | None, str | None]:
    import torch

    from qat.experiments import train_ser

    torch.set_num_threads(threads)  # N jobs share the cores instead of oversubscribing them
    try:
        return kwargs, train_ser(progress=False, **kwargs), None
    except Exception:  # a failed configuration is reported, the others go on
        return kwargs, None, traceback.format_exc()


def run_grid(configs: list[dict], jobs: int = 1, threads: int | None = None) -> list[dict]:
    """Run every configuration (kwargs of qat.experiments.train_ser); return the records.

    Shared prerequisites (corpus, features, orthogonal networks, RH-emo) are built in this
    process first, by one configuration of each (model, setup, orthogonal task, seed) group,
    so the workers only read them."""
    import os

    from qat.experiments import train_ser

    if not configs:
        return []
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    records, failures, first, rest = [], [], {}, []
    for kw in configs:
        group = tuple(kw.get(k) for k in GROUP_KEYS)
        if group in first:
            rest.append(kw)
        else:
            first[group] = kw
    records += [train_ser(progress=True, **kw) for kw in first.values()]
    bar = tqdm(total=len(rest), desc=f"sweep ({jobs} jobs)")
    with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_one, kw, threads) for kw in rest]
        for future in cf.as_completed(futures):
            kwargs, record, error = future.result()
            bar.update()
            if error:
                failures.append((kwargs, error))
                tqdm.write(f"FAILED {kwargs}:\n{error}")
            else:
                records.append(record)
    bar.close()
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(configs)} runs failed; first: {failures[0][1]}"
        )
    return records
