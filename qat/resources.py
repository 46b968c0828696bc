"""What a model costs: parameters, FLOPs per training step, step time and peak memory.

Peak memory on CPU is measured by tracking every tensor storage that aten ops allocate during
one training step (a dispatch mode; the CPU counterpart of CUDA's max_memory_allocated): the
figure is the peak of live tensor bytes created by the step (activations saved for backward,
gradients, optimizer state on the first step), excluding the parameters and inputs that
existed before it. It ignores allocator caching and library scratch space, so it is
deterministic and unaffected by other processes on the machine. On CUDA,
torch.cuda.max_memory_allocated is used instead.
"""

from __future__ import annotations

import random
import statistics
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class PeakTensorMemory(TorchDispatchMode):
    """Context manager: `.peak` = the most bytes of tensor storage alive at once among those
    allocated inside the context (views of one storage count once)."""

    def __init__(self):
        super().__init__()
        self._live: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                continue
            entry = self._live.get(key)
            if entry is None:
                entry = self._live[key] = [storage.nbytes(), 0]
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out


def peak_step_memory(step: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes allocated by one call of `step` (run it once before to create optimizer
    state if that should be excluded)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    with PeakTensorMemory() as tracker:
        step()
    return int(tracker.peak)


def step_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of `step` (forward and backward), counted by torch's flop counter
    (matmuls and convolutions; elementwise ops are not counted)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    repeats: int = 7,
    warmup: int = 2,
    seed: int = 0,
    after_round: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Wall time in seconds of each callable in each of `repeats` rounds (round i at index i),
    after `warmup` rounds that are discarded. Every round runs every callable once, in a fresh
    (seeded) random order, so that machine noise hits all of them alike. A fixed order biases
    the comparison: timing real and quaternion convs strictly alternating, the same pair
    measured 0.57x to 1.21x depending only on which ran first (the later step pays for
    allocator work on the earlier one's buffers), while a random order gave 1.00-1.02x.
    `after_round` is called after each round, warm-up included (a progress bar's update)."""
    rng = random.Random(seed)
    names = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
        if after_round is not None:
            after_round()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
        if after_round is not None:
            after_round()
    return times


def median_step_time(
    step: Callable[[], object], warmup: int = 2, repeats: int = 5, device: str = "cpu"
) -> float:
    """Median wall time in seconds of `step` after warm-up."""

    def timed():
        t0 = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(warmup):
        timed()
    return statistics.median(timed() for _ in range(repeats))


def measure(
    model: torch.nn.Module,
    step: Callable[[], object],
    warmup: int = 2,
    repeats: int = 5,
    device: str = "cpu",
) -> dict:
    """Everything a run record stores about cost. `step` runs one full training step
    (forward, losses, backward, optimizer update) on a fixed batch."""
    step()  # creates optimizer state, so the memory figure is the steady-state step
    return {
        "params": count_parameters(model),
        "flops_per_step": step_flops(step),
        "peak_memory_bytes": peak_step_memory(step, device),
        "memory_method": "cuda_max_memory_allocated"
        if device.startswith("cuda")
        else "tensor_storage_tracking",
        "step_time_s": median_step_time(step, warmup, repeats, device),
    }
