"""CPU efficiency of a real VGG16 training step: achieved GFLOP/s against this machine's
matmul peak, measured side by side in the same rounds.

achieved = step_flops(step) / median step time; peak = 2 n^3 / median time of a large float32
torch.mm (n x n). Target: achieved / peak >= 0.6 at the "cpu" profile's batch and width.

Whatever the outcome, the section also shows where the step's time goes, because that is what
decides whether the target can be met:

- per conv block (conv + batch norm + ReLU, forward + backward on its real input): GFLOP/s and
  share of the step; early blocks with few channels do little arithmetic per byte moved;
- torch.profiler self CPU time by op category (convolutions, batch norm, pooling, elementwise,
  Adam, ...): the work step_flops does not count;
- the thread count: the step and the matmul at 1 thread and at the default count, because
  on a shared machine each OpenMP region waits for its slowest (descheduled) thread;
- the OpenMP wait policy: the step and matmul again in a fresh process with the other
  OMP_WAIT_POLICY (PASSIVE if this process spins, the default otherwise). The OpenMP runtime
  reads it once, when torch loads, so it can only be switched in a new process. Spinning
  workers burn the CPU time that the other threads and processes on a shared machine need.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from qat.bench.antitransfer import NUM_EMOTIONS, load_note, random_batch, training_step, workload
from qat.bench.common import interleaved_medians, markdown_table, publish
from qat.models import vgg16
from qat.resources import step_flops

TARGET = 0.6
MATMUL_N, QUICK_MATMUL_N = 1536, 256
TOP_OPS = 8
WAIT_POLICY = "OMP_WAIT_POLICY"

# Profiler op names -> category; the first matching keyword wins.
_CATEGORIES = (
    ("convolution", ("conv",)),
    ("batch norm", ("batch_norm",)),
    ("pooling", ("pool",)),
    ("matmul / linear", ("addmm", "aten::mm", "linear", "matmul")),
    ("ReLU + its backward", ("relu", "threshold")),
)


def matmul_flops(n: int) -> int:
    """FLOPs of an n x n by n x n matmul: n^2 outputs, n multiply-adds each."""
    return 2 * n**3


def gflops_per_second(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with n intra-op threads, restoring the caller's count afterwards (a
    measurement knob for this benchmark only; qat never pins the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _with_threads(n: int, fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with torch_threads(n):
            fn()

    return run


def _matmul(n: int) -> Callable[[], Tensor]:
    a, b = random_batch((n, n), seed=1), random_batch((n, n), seed=2)
    return lambda: torch.mm(a, b)


# ------------------------------------------------------------------ per-block breakdown


def _block_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The input each conv block sees in a train-mode forward of the model on x."""
    inputs: dict[str, Tensor] = {}
    handles = [
        model.tap_module(tap).register_forward_pre_hook(
            lambda _m, args, tap=tap: inputs.__setitem__(tap, args[0].detach())
        )
        for tap in model.taps
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def _block_pass(block: nn.Module, x: Tensor, input_grad: bool) -> Callable[[], None]:
    """Forward + backward of one block as in a training step: weight gradients always, the
    input gradient except for the first block (the spectrogram needs none)."""
    with torch.no_grad():
        grad_out = torch.randn_like(block(x))

    def run() -> None:
        for p in block.parameters():
            p.grad = None
        block(x.detach().requires_grad_(input_grad)).backward(grad_out)

    return run


def _blocks(model: nn.Module, x: Tensor) -> dict[str, tuple[nn.Module, Tensor]]:
    """Each conv block of the model with the input it sees."""
    inputs = _block_inputs(model, x)
    return {tap: (model.tap_module(tap), inputs[tap]) for tap in model.taps}


# ------------------------------------------------------------------ profiler breakdown


def _category(event) -> str:
    """An op's category; everything run inside the optimizer's step counts as Adam (its
    single-tensor ops, lerp_, mul_, sqrt, ..., would otherwise look like elementwise work)."""
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "Adam (optimizer step)"
        parent = parent.cpu_parent
    lowered = event.name.lower()
    for category, keywords in _CATEGORIES:
        if any(k in lowered for k in keywords):
            return category
    return "other (copies, adds, fills, ...)"


def profile_step(
    step: Callable[[], object], steps: int = 1
) -> tuple[list[tuple[str, int, float]], dict]:
    """Self CPU time per op over `steps` steps (several, so that one descheduled op does not
    dominate): the top ops (name, calls, share) and the shares per category."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    shares: dict[str, float] = {}
    for event in prof.events():
        name = _category(event)
        shares[name] = shares.get(name, 0.0) + event.self_cpu_time_total
    total = sum(shares.values())
    shares = {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    top = [(e.key, e.count, e.self_cpu_time_total / total) for e in ops[:TOP_OPS]]
    return top, shares


# ------------------------------------------------------------------ the benchmark


def measure(load, matmul_n: int) -> dict:
    """Every timing in one interleaved call: the step and the matmul at the default thread
    count and at 1 thread, and each conv block on its own."""
    torch.manual_seed(0)
    model = vgg16(NUM_EMOTIONS, 1, width=load.width)
    x = random_batch(load.spectrogram_shape)
    step = training_step(model, x)
    step()  # Adam state exists before FLOPs are counted and blocks are cut out
    block_model = vgg16(NUM_EMOTIONS, 1, width=load.width)
    block_model.train()
    parts = _blocks(block_model, x)
    blocks = {
        tap: _block_pass(block, inp, input_grad=i > 0)
        for i, (tap, (block, inp)) in enumerate(parts.items())
    }
    matmul = _matmul(matmul_n)
    threads = torch.get_num_threads()
    fns: dict[str, Callable[[], object]] = {"step": step, "matmul": matmul}
    if threads > 1:
        fns["step, 1 thread"] = _with_threads(1, step)
        fns["matmul, 1 thread"] = _with_threads(1, matmul)
    fns.update({f"block {tap}": fn for tap, fn in blocks.items()})
    seconds = interleaved_medians(fns, load.repeats, warmup=1)
    top, categories = profile_step(step, load.repeats)
    policy = other_wait_policy()
    return {
        "other_policy": policy,
        "other_policy_probe": probe_in_subprocess(policy, load.quick),
        "threads": threads,
        "seconds": seconds,
        "step_flops": step_flops(step),
        "matmul_flops": matmul_flops(matmul_n),
        "block_flops": {tap: step_flops(fn) for tap, fn in blocks.items()},
        "block_shapes": {
            tap: (block.conv.in_channels, block.conv.out_channels, *inp.shape[2:])
            for tap, (block, inp) in parts.items()
        },
        "top_ops": top,
        "categories": categories,
    }


# ------------------------------------------------------------------ OpenMP wait policy


def fraction_probe(quick: bool) -> dict[str, float]:
    """Median step and matmul seconds and the fraction of peak, in this process; what the
    wait-policy comparison runs in a fresh process."""
    load = workload(quick)
    matmul_n = QUICK_MATMUL_N if quick else MATMUL_N
    torch.manual_seed(0)
    step = training_step(
        vgg16(NUM_EMOTIONS, 1, width=load.width), random_batch(load.spectrogram_shape)
    )
    step()
    seconds = interleaved_medians({"step": step, "matmul": _matmul(matmul_n)}, load.repeats, 1)
    achieved = gflops_per_second(step_flops(step), seconds["step"])
    peak = gflops_per_second(matmul_flops(matmul_n), seconds["matmul"])
    return {**seconds, "fraction": achieved / peak}


def current_wait_policy() -> str | None:
    return os.environ.get(WAIT_POLICY)


def other_wait_policy() -> str | None:
    """PASSIVE unless this process already uses it; then the runtime default (unset)."""
    return None if (current_wait_policy() or "").upper() == "PASSIVE" else "PASSIVE"


def probe_in_subprocess(policy: str | None, quick: bool, timeout: float = 300) -> dict:
    """fraction_probe in a fresh Python with OMP_WAIT_POLICY=policy (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != WAIT_POLICY}
    if policy is not None:
        env[WAIT_POLICY] = policy
    code = (
        "import json; from qat.bench.efficiency import fraction_probe; "
        f"print(json.dumps(fraction_probe({quick!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"wait-policy probe ({WAIT_POLICY}={policy}) failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _policy_name(policy: str | None) -> str:
    return f"{WAIT_POLICY}={policy}" if policy else f"{WAIT_POLICY} unset (runtime default)"


def _fraction_rows(m: dict) -> tuple[list[list], dict[str, float]]:
    """Achieved GFLOP/s, peak and fraction at each thread count measured."""
    s = m["seconds"]
    rows, fractions = [], {}
    suffixes = {m["threads"]: ""}
    if m["threads"] > 1:
        suffixes[1] = ", 1 thread"
    for threads, suffix in suffixes.items():
        achieved = gflops_per_second(m["step_flops"], s["step" + suffix])
        peak = gflops_per_second(m["matmul_flops"], s["matmul" + suffix])
        fractions[threads] = achieved / peak
        rows.append([threads, s["step" + suffix] * 1e3, achieved, peak, achieved / peak])
    return rows, fractions


def _block_rows(m: dict) -> tuple[list[list], float]:
    s = m["seconds"]
    total = sum(s[f"block {tap}"] for tap in m["block_flops"])
    rows = []
    for tap, flops in m["block_flops"].items():
        c_in, c_out, h, w = m["block_shapes"][tap]
        t = s[f"block {tap}"]
        rows.append(
            [tap, f"{c_in}->{c_out}, {h}x{w}", flops / 1e9, t * 1e3,
             gflops_per_second(flops, t), t / s["step"]]
        )  # fmt: skip
    return rows, total


def _findings(m: dict, fractions: dict[int, float], block_total: float) -> list[str]:
    """What limits the step, stated from the numbers measured."""
    s = m["seconds"]
    flops, threads = m["block_flops"], m["threads"]
    early = [tap for tap in flops if tap.startswith(("conv1_", "conv2_"))]
    early_time = sum(s[f"block {tap}"] for tap in early)
    early_rate = gflops_per_second(sum(flops[t] for t in early), early_time)
    late = [tap for tap in flops if tap not in early]
    late_rate = gflops_per_second(sum(flops[t] for t in late), sum(s[f"block {t}"] for t in late))
    peak = gflops_per_second(m["matmul_flops"], s["matmul"])
    cats = m["categories"]
    non_conv = 1 - cats.get("convolution", 0.0) - cats.get("matmul / linear", 0.0)
    lines = [
        f"- Conv blocks (conv + BN + ReLU, forward + backward, timed alone) sum to "
        f"{block_total / s['step']:.0%} of the step; the rest is pools, the head, the loss and "
        "Adam.",
        f"- Early blocks (conv1_x, conv2_x: few channels, large maps) take "
        f"{early_time / s['step']:.0%} of the step at {early_rate:.1f} GFLOP/s "
        f"({early_rate / peak:.2f} of peak); conv3_x-conv5_x run at {late_rate:.1f} GFLOP/s "
        f"({late_rate / peak:.2f} of peak).",
        f"- Profiler: {non_conv:.0%} of the step's self CPU time is in ops that are not "
        "convolutions or matmuls (batch norm, ReLU, pooling, Adam, copies), work that "
        "step_flops does not count.",
    ]
    if threads > 1:
        lines.append(
            f"- Threads: fraction of peak {fractions[threads]:.2f} at {threads} threads vs "
            f"{fractions[1]:.2f} at 1 thread; step {s['step'] / s['step, 1 thread']:.2f}x the "
            f"1-thread time, matmul {s['matmul'] / s['matmul, 1 thread']:.2f}x (with the "
            "CPUs shared, a parallel region waits for its slowest thread)."
        )
    probe, other = m["other_policy_probe"], _policy_name(m["other_policy"])
    lines.append(
        f"- OpenMP wait policy: here ({_policy_name(current_wait_policy())}) the fraction is "
        f"{fractions[threads]:.2f} with a {s['step'] * 1e3:.0f} ms step; a fresh process with "
        f"{other} measured {probe['fraction']:.2f} with a {probe['step'] * 1e3:.0f} ms step "
        f"(matmul {probe['matmul'] * 1e3:.0f} ms vs {s['matmul'] * 1e3:.0f} ms here; measured "
        "one after the other, so compare the fractions, each taken within one process)."
    )
    return lines


def run(quick: bool = False) -> str:
    load = workload(quick)
    before = load_note()
    matmul_n = QUICK_MATMUL_N if quick else MATMUL_N
    m = measure(load, matmul_n)
    fraction_rows, fractions = _fraction_rows(m)
    block_rows, block_total = _block_rows(m)
    fraction = fractions[m["threads"]]
    verdict = "met" if fraction >= TARGET else "NOT met"
    body = (
        f"Real VGG16 training step on the spectrogram ({load.describe()}) against a float32 "
        f"torch.mm of {matmul_n}x{matmul_n} ({matmul_flops(matmul_n) / 1e9:.2f} GFLOP) timed "
        f"in the same rounds. Step FLOPs (qat.resources.step_flops, convolutions and "
        f"matmuls, forward + backward): {m['step_flops'] / 1e9:.2f} GFLOP. {before} before, "
        f"{load_note()} after.\n\n"
        + markdown_table(
            ["threads", "step (ms)", "achieved GFLOP/s", "matmul peak GFLOP/s", "fraction"],
            fraction_rows,
        )
        + f"\n\nFraction of the matmul peak ({m['threads']} torch threads): {fraction:.2f} "
        f"(target >= {TARGET}: {verdict}).\n\nPer conv block, timed alone in the same "
        "rounds:\n\n"
        + markdown_table(
            ["block", "channels, input HxW", "GFLOP", "ms", "GFLOP/s", "share of step"],
            block_rows,
        )
        + f"\n\nProfiler ({load.repeats} steps, self CPU time), by category:\n\n"
        + markdown_table(["category", "share"], [[k, v] for k, v in m["categories"].items()])
        + "\n\nTop ops:\n\n"
        + markdown_table(["op", "calls", "share"], [list(t) for t in m["top_ops"]])
        + "\n\nWhat limits it:\n\n"
        + "\n".join(_findings(m, fractions, block_total))
    )
    return publish("efficiency", body, quick)
