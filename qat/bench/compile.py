"""torch.compile (inductor) on qat's training step, against the eager step, side by side.

For the real VGG16 on log-mel input and the quaternion one on the RH-emo embedding, at the
"cpu" profile's sizes: the compile time with an empty inductor cache (each run of a grid is a
fresh process; a machine's first run finds the cache empty) and with the cache warm (a later
process on the same machine), the step time of both paths in interleaved rounds, one step's
loss and gradients against the eager step from the same weights, and the number of training
steps that repays the compile. A cpu-profile run's step count comes from the newest record of
one (epochs x batches per epoch); a run also evaluates in eval mode, a second graph that
compiles again, which this does not time. compile is adopted only if the cold compile is
repaid within one run's training steps.

Quick (a smoke test): tiny sizes and dynamo's "eager" backend, which traces the step but
generates no C++, so the code path runs in seconds; its times say nothing about inductor.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from qat.bench.antitransfer import (
    NUM_EMOTIONS,
    load_note,
    paired_ratios,
    random_batch,
    training_step,
    workload,
)
from qat.bench.common import markdown_table, publish
from qat.config import PROFILES
from qat.models import vgg16

NETWORKS = {"real": False, "quaternion": True}  # label: quaternion
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-3, 1e-5  # float32: a reordered sum, not a change


@contextmanager
def inductor_cache(folder: str) -> Iterator[None]:
    """Inductor's on-disk cache in `folder` for the block (the variable it reads is restored),
    with dynamo's in-memory state cleared on the way in and out."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    torch._dynamo.reset()
    try:
        yield
    finally:
        torch._dynamo.reset()
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def _model(quaternion: bool, load):
    torch.manual_seed(0)
    return vgg16(NUM_EMOTIONS, 4 if quaternion else 1, quaternion=quaternion, width=load.width)


def _compiled_step(quaternion: bool, load, x, backend: str):
    """The training step of a fresh model whose forward is torch.compile'd, and the model."""
    model = _model(quaternion, load)
    return training_step(model, x, compile_backend=backend), model


def _first_call_s(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _agreement(quaternion: bool, load, x, backend: str) -> dict:
    """One step of each path from the same weights on the same batch, dropout off (inductor
    draws its masks with its own generator): the loss's relative difference and whether every
    gradient agrees within float32 tolerance."""
    eager_model = _model(quaternion, load)
    eager = training_step(eager_model, x)
    compiled, compiled_model = _compiled_step(quaternion, load, x, backend)
    for module in (*eager_model.modules(), *compiled_model.modules()):
        if isinstance(module, torch.nn.Dropout):  # inductor draws its own masks
            module.p = 0.0
    a, b = eager()["task"], compiled()["task"]
    pairs = [(p.grad, q.grad) for p, q in zip(eager_model.parameters(),
             compiled_model.parameters(), strict=True) if p.grad is not None]  # fmt: skip
    worst = max(float((q - p).abs().max() / p.abs().max().clamp_min(GRAD_ATOL)) for p, q in pairs)
    agree = all(torch.allclose(p, q, rtol=GRAD_RTOL, atol=GRAD_ATOL) for p, q in pairs)
    return {"loss_rel": abs(a - b) / abs(a), "grad_rel": worst, "grads_agree": agree}


def run_steps() -> int | None:
    """A cpu-profile run's training steps from the newest record of one: epochs x batches."""
    from qat import runs

    for record in reversed(runs.load_records(kind="ser")):
        if record["config"].get("profile") == "cpu" and "split" in record:
            profile = PROFILES["cpu"]
            train = record["split"]["sizes"]["train"]
            return profile["epochs"] * math.ceil(train / profile["batch_size"])
    return None


def measure(quick: bool) -> list[dict]:
    load = workload(quick)
    backend = "eager" if quick else "inductor"
    out = []
    for label, quaternion in NETWORKS.items():
        x = random_batch(load.embedding_shape if quaternion else load.spectrogram_shape)
        eager = training_step(_model(quaternion, load), x)
        eager()  # warm
        with tempfile.TemporaryDirectory() as folder:
            with inductor_cache(folder):
                compiled, _ = _compiled_step(quaternion, load, x, backend)
                cold = _first_call_s(compiled)
            with inductor_cache(folder):  # the same cache, warm, in a fresh dynamo state
                warm_step, _ = _compiled_step(quaternion, load, x, backend)
                warm = _first_call_s(warm_step)
                seconds, ratios = paired_ratios(
                    {"eager": eager, "compiled": warm_step}, "eager", load.repeats
                )
                agreement = _agreement(quaternion, load, x, backend)
        saved = seconds["eager"] - seconds["compiled"]
        out.append({"network": label, "cold": cold, "warm": warm, **seconds,
                    "ratio": ratios["compiled"], "saved": saved, **agreement,
                    "break_even": cold / saved if saved > 0 else None})  # fmt: skip
    return out


def verdict(row: dict, steps: int | None) -> str:
    """Adopted only if the cold compile is repaid within one run's training steps."""
    if row["break_even"] is None:
        return "not adopted: the compiled step is not faster"
    if steps is None:
        return f"repaid after {row['break_even']:.0f} steps (no cpu-profile record to compare)"
    kept = row["break_even"] <= steps and row["grads_agree"]
    return (f"{'adopted' if kept else 'not adopted'}: the cold compile is repaid after "
            f"{row['break_even']:.0f} steps; a cpu-profile run trains {steps}")  # fmt: skip


def run(quick: bool = False) -> str:
    rows = measure(quick)
    steps = run_steps()
    header = ["network", "compile, cold cache (s)", "compile, warm cache (s)", "eager step (ms)",
              "compiled step (ms)", "compiled / eager", "loss, relative difference",
              "largest gradient difference over its tensor's largest gradient",
              f"gradients within rtol {GRAD_RTOL:g}, atol {GRAD_ATOL:g}",
              "steps to repay the cold compile"]  # fmt: skip
    table = [[r["network"], r["cold"], r["warm"], 1e3 * r["eager"], 1e3 * r["compiled"],
              r["ratio"], r["loss_rel"], r["grad_rel"], "yes" if r["grads_agree"] else "NO",
              "never" if r["break_even"] is None else round(r["break_even"])]
             for r in rows]  # fmt: skip
    load = workload(quick)
    body = (
        f"The training step (qat.train.Step: forward, loss, backward, AdamW) at width "
        f"{load.width:g}, batch {load.batch}, {torch.get_num_threads()} torch threads, with its "
        f"forward torch.compile'd ({'eager backend: quick' if quick else 'inductor'}) against "
        f"eager. Compile times are a fresh model's first call (one step included); step times "
        f"are medians of {load.repeats} interleaved rounds after a warm-up round, the ratio the "
        f"median of per-round ratios. The loss and gradients are one step's from the same "
        f"weights, dropout off. {load_note()} (other jobs share the CPUs: ratios, not times)."
        "\n\n"
        + markdown_table(header, table)
        + "\n\n"
        + "\n".join(f"- {r['network']}: {verdict(r, steps)}." for r in rows)
    )
    return publish("compile", body, quick)
