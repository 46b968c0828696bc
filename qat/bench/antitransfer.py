"""Anti-transfer overhead: what the AT term adds to a training step, per tap, the published way
and qat's way.

Three AT steps are compared with the step without AT (ratios WITH / WITHOUT):

- reference: what the published code does. The trained network runs a SECOND forward up to the
  tap (``model.truncated(tap)``), the frozen network runs up to the tap in train mode with
  autograd on (its parameters require grad and accumulate gradients nobody uses), and the AT
  term uses the batch-folded Gram (``at_loss(..., gram="batch")``).
- qat uncached: ``qat.train.Step`` with an ``AntiTransfer`` (one forward with a hook at the
  tap, frozen network truncated at the tap, eval, no_grad, per-sample Gram).
- qat cached: the same with ``cache_budget_mb > 0`` and the same keys every step, so the frozen
  side is a cache lookup after the first step.

Targets: qat uncached <= reference at every tap (time and memory); qat cached <= 1.10x the
no-AT step at every tap (time and memory).

This module also holds the workload every train-step benchmark shares (`workload`,
`training_step`), so that antitransfer, quaternion, efficiency and scaling
measure the same step on the same sizes.
"""

from __future__ import annotations

import copy
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from qat.antitransfer import AntiTransfer, at_loss
from qat.bench.common import interleaved_medians, markdown_table, publish
from qat.config import PROFILES
from qat.data.features import FeatureConfig
from qat.models import vgg16
from qat.resources import peak_step_memory
from qat.train import Step, TrainConfig, make_optimizer

TAPS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_3")
QUICK_TAPS = ("conv1_1", "conv5_3")  # the shallowest and the deepest: smoke tests stay short
NUM_EMOTIONS = 5  # SynthEmo's emotions: the trained network's classes
NUM_WORDS = 40  # SynthEmo's vocabulary: the orthogonal (word) network's classes
CACHE_BUDGET_MB = 64.0  # holds every key of the batch at every tap with room to spare
CACHED_LIMIT = 1.10  # target: a warm-cache AT step costs at most 10% more than no AT


# ----------------------------------------------------------------- shared workload


@dataclass(frozen=True)
class Workload:
    """Sizes of a benchmarked training step: the "cpu" profile, or tiny ones for smoke tests.

    The real VGG16 reads (batch, 1, frames, bins) log-mel spectrograms; the quaternion VGG16
    reads the RH-emo embedding of the same spectrogram, (batch, 4, frames / pool_t,
    bins / pool_f) with the pools' products along time and frequency.
    """

    width: float
    batch: int
    frames: int
    bins: int
    rhemo_pools: tuple[tuple[int, int], ...]
    repeats: int
    quick: bool

    @property
    def spectrogram_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 1, self.frames, self.bins)

    @property
    def embedding_shape(self) -> tuple[int, int, int, int]:
        pool_t = pool_f = 1
        for pt, pf in self.rhemo_pools:
            pool_t, pool_f = pool_t * pt, pool_f * pf
        return (self.batch, 4, self.frames // pool_t, self.bins // pool_f)

    def describe(self) -> str:
        return (
            f"width {self.width:g}, batch {self.batch}, spectrogram 1x{self.frames}x{self.bins}, "
            f"RH-emo embedding {'x'.join(map(str, self.embedding_shape[1:]))}, "
            f"{torch.get_num_threads()} torch threads, {self.repeats} rounds after a warm-up "
            "round, each running every variant once in a fresh random order; times are "
            "medians over rounds, ratios medians of the per-round ratios"
        )


def workload(quick: bool = False) -> Workload:
    """The "cpu" profile's sizes (its width, batch 32, 1 s of 64-bin log-mel = 128 x 64,
    embedding 4x32x32) or, with quick, width 1/16, batch 4, 32x32 inputs, 1 repetition."""
    if quick:
        # Pools of 1 keep the embedding at 32x32, the smallest input VGG16's five pools accept.
        return Workload(1 / 16, 4, 32, 32, ((1, 1), (1, 1), (1, 1)), repeats=1, quick=True)
    profile = PROFILES["cpu"]
    frames, bins = FeatureConfig(**profile["features"]).shape
    pools = tuple(tuple(pair) for pair in profile["rhemo_pools"])
    return Workload(profile["width"], profile["batch_size"], frames, bins, pools, 9, False)


def random_batch(shape: tuple[int, ...], seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def training_step(
    model: nn.Module,
    x: Tensor,
    anti_transfer: AntiTransfer | None = None,
    keys: Tensor | None = None,
    encoder: nn.Module | None = None,
    compile_backend: str | None = None,
) -> Callable[[], dict]:
    """One call = qat's real training step (qat.train.Step: forward, losses, backward, Adam) on
    the fixed batch `x`, so the benchmarks time the code `fit` runs.

    encoder: a frozen front end run on `x` at every step (no_grad) before the model, e.g. the
    RH-emo encoder when embeddings are not cached. compile_backend: the step's forward goes
    through torch.compile(model, backend=...) (qat.bench.compile).
    """
    config = TrainConfig(batch_size=len(x))
    step = Step(model, make_optimizer(model, config), config, anti_transfer)
    if compile_backend is not None:
        step.forward = torch.compile(model, backend=compile_backend)
    labels = {"emotion": torch.randint(0, NUM_EMOTIONS, (len(x),), generator=_generator(1))}
    model.train()

    def run() -> dict:
        inputs = x
        if encoder is not None:
            with torch.no_grad():
                inputs = encoder(x)
        return step(inputs, labels, keys)

    return run


def paired_ratios(
    fns: dict[str, Callable[[], object]], baseline: str, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of each callable and the median over rounds of its time divided by the
    baseline's time IN THE SAME ROUND.

    One warm-up round, then `rounds` rounds of interleaved_medians(repeats=1), each in its own
    random order. On a shared machine the load drifts between rounds; a ratio taken within
    one round cancels that drift, a ratio of two medians does not.
    """
    interleaved_medians(fns, repeats=1, warmup=0, seed=-1)  # warm-up, discarded
    per_round = [interleaved_medians(fns, repeats=1, warmup=0, seed=i) for i in range(rounds)]
    medians = {name: statistics.median(r[name] for r in per_round) for name in fns}
    ratios = {name: statistics.median(r[name] / r[baseline] for r in per_round) for name in fns}
    return medians, ratios


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def load_note() -> str:
    return f"1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


# ----------------------------------------------------------------- the published reference


def reference_step(
    model: nn.Module, frozen: nn.Module, tap: str, x: Tensor, beta: float = 1.0
) -> Callable[[], dict]:
    """A training step with anti-transfer as the published code computes it (see the module
    docstring); `frozen` is used as given: train mode, parameters requiring grad."""
    optimizer = torch.optim.Adam(model.parameters(), lr=TrainConfig.lr)
    labels = torch.randint(0, NUM_EMOTIONS, (len(x),), generator=_generator(1))
    current_front, frozen_front = model.truncated(tap), frozen.truncated(tap)
    model.train()
    frozen.train()

    def run() -> dict:
        logits = model(x)
        current = current_front(x)  # the second forward of the trained network
        pretrained = frozen_front(x)  # autograd on: backward also runs through the frozen net
        at = at_loss(current, pretrained, gram="batch")
        task = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        (task + beta * at).backward()
        optimizer.step()
        return {"task": float(task.detach()), "at": float(at.detach())}

    return run


# ----------------------------------------------------------------- the benchmark


def _networks(quaternion: bool, load: Workload) -> tuple[nn.Module, nn.Module, Tensor]:
    """A trained network, an orthogonal (word) network of the same architecture, and a batch."""
    torch.manual_seed(0)
    in_channels = 4 if quaternion else 1
    model = vgg16(NUM_EMOTIONS, in_channels, quaternion=quaternion, width=load.width)
    orthogonal = vgg16(NUM_WORDS, in_channels, quaternion=quaternion, width=load.width)
    shape = load.embedding_shape if quaternion else load.spectrogram_shape
    return model, orthogonal, random_batch(shape)


def measure_tap(model: nn.Module, orthogonal: nn.Module, x: Tensor, tap: str, repeats: int):
    """Median step time, per-round time ratio to "no AT" and peak step memory of the four
    variants at one tap.

    Every variant trains its own copy of the model, so their Adam updates do not interact.
    """
    keys = torch.arange(len(x))
    steps = {
        "no AT": training_step(copy.deepcopy(model), x),
        "reference": reference_step(copy.deepcopy(model), copy.deepcopy(orthogonal), tap, x),
        "qat": training_step(copy.deepcopy(model), x, AntiTransfer(orthogonal, tap)),
        "qat cached": training_step(
            copy.deepcopy(model),
            x,
            AntiTransfer(orthogonal, tap, cache_budget_mb=CACHE_BUDGET_MB),
            keys=keys,
        ),
    }
    seconds, ratios = paired_ratios(steps, "no AT", repeats)
    # Every step has run (warm-up round): optimizer state exists and the cache is warm.
    memory = {name: peak_step_memory(step) for name, step in steps.items()}
    return seconds, ratios, memory


def _model_rows(label: str, quaternion: bool, load: Workload, taps) -> list[dict]:
    model, orthogonal, x = _networks(quaternion, load)
    rows = []
    for tap in tqdm(taps, desc=f"AT overhead, {label}", leave=False, disable=load.quick):
        seconds, ratios, memory = measure_tap(model, orthogonal, x, tap, load.repeats)
        row = {"model": label, "tap": tap, "no AT ms": seconds["no AT"] * 1e3}
        for variant in ("reference", "qat", "qat cached"):
            row[f"{variant} time"] = ratios[variant]
            row[f"{variant} memory"] = memory[variant] / memory["no AT"]
        row["no AT MiB"] = memory["no AT"] / 2**20
        row["tap MiB"] = _activation_bytes(model, tap, x) / 2**20
        rows.append(row)
    return rows


def _activation_bytes(model: nn.Module, tap: str, x: Tensor) -> int:
    with torch.no_grad():
        act = copy.deepcopy(model).truncated(tap)(x)
    return act.numel() * act.element_size()


def memory_notes(rows: list[dict]) -> list[str]:
    """Where the extra memory of qat's AT step comes from, in units the reader can check: at
    each model's largest tap activation, the cached step's extra bytes per byte of that
    activation; and the frozen forward's share (uncached minus cached)."""
    shallow = []
    for model in dict.fromkeys(r["model"] for r in rows):
        r = max((r for r in rows if r["model"] == model), key=lambda r: r["tap MiB"])
        extra = (r["qat cached memory"] - 1) * r["no AT MiB"]
        shallow.append(f"{model} {r['tap']}: {extra / r['tap MiB']:.1f}x")

    def frozen_mib(r: dict) -> float:
        return (r["qat memory"] - r["qat cached memory"]) * r["no AT MiB"]

    frozen = max(rows, key=frozen_mib)
    return [
        "- qat cached, extra peak over no AT, in units of the tap activation's size (column "
        f"tap MiB) at the largest tap: {'; '.join(shallow)}. The Gram term's gradient on the "
        "tap is computed first in the backward and held until the backward reaches the tap's "
        "layer, so this overhead shrinks with the depth of the tap.",
        f"- Running the frozen network (qat uncached minus cached) adds up to "
        f"{frozen_mib(frozen):.1f} MiB ({frozen['model']} {frozen['tap']}): its no_grad "
        "forward runs after the trained network's forward, while all the activations saved "
        "for backward are alive, so its largest transient activations stack on the step's "
        "peak.",
    ]


def verdicts(rows: list[dict]) -> list[str]:
    """The two targets, decided from the measured ratios, with the worst case named."""
    lines = []
    for what in ("time", "memory"):
        # qat uncached <= reference at every tap.
        worst = max(rows, key=lambda r: r[f"qat {what}"] / r[f"reference {what}"])
        ratio = worst[f"qat {what}"] / worst[f"reference {what}"]
        met = all(r[f"qat {what}"] <= r[f"reference {what}"] for r in rows)
        lines.append(
            f"- qat uncached <= reference ({what}) at every tap: {'met' if met else 'NOT met'} "
            f"(worst: {worst['model']} {worst['tap']}, qat / reference = {ratio:.2f})"
        )
    for what in ("time", "memory"):
        worst = max(rows, key=lambda r: r[f"qat cached {what}"])
        met = all(r[f"qat cached {what}"] <= CACHED_LIMIT for r in rows)
        lines.append(
            f"- qat cached <= {CACHED_LIMIT:.2f}x no AT ({what}) at every tap: "
            f"{'met' if met else 'NOT met'} (worst: {worst['model']} {worst['tap']}, "
            f"{worst[f'qat cached {what}']:.2f}x)"
        )
    return lines


def run(quick: bool = False) -> str:
    load = workload(quick)
    before = load_note()
    taps = QUICK_TAPS if quick else TAPS
    rows = _model_rows("real VGG16, spectrogram", False, load, taps)
    rows += _model_rows("quaternion VGG16, RH-emo embedding", True, load, taps)
    header = [
        "model",
        "tap",
        "no AT (ms)",
        "no AT peak (MiB)",
        "tap MiB",
        "reference time",
        "qat time",
        "qat cached time",
        "reference memory",
        "qat memory",
        "qat cached memory",
    ]
    table = [
        [r["model"], r["tap"], r["no AT ms"], r["no AT MiB"], r["tap MiB"]]
        + [r[f"{v} time"] for v in ("reference", "qat", "qat cached")]
        + [r[f"{v} memory"] for v in ("reference", "qat", "qat cached")]
        for r in rows
    ]
    body = (
        f"Train step (forward, loss, backward, Adam) WITH anti-transfer at one tap divided by "
        f"the same step WITHOUT it; {load.describe()}; peak memory = qat.resources."
        f"peak_step_memory (live tensor bytes allocated by one step, deterministic). "
        "Reference = the published computation (second forward of the trained network to the "
        "tap, frozen network to the tap in train mode with autograd on, batch-folded Gram); "
        "qat = qat.train.Step with AntiTransfer (one forward + hook, frozen network truncated, "
        "eval, no_grad, per-sample Gram); qat cached = the same with the frozen-side Gram cache "
        f"warm (cache_budget_mb={CACHE_BUDGET_MB:g}, same keys every step). {before} before, "
        f"{load_note()} after (other jobs share the CPUs: ratios, not times).\n\n"
        + markdown_table(header, table)
        + "\n\nTargets, from the ratios above:\n\n"
        + "\n".join(verdicts(rows))
        + "\n\nMemory, from the same numbers:\n\n"
        + "\n".join(memory_notes(rows))
    )
    return publish("antitransfer", body, quick)
