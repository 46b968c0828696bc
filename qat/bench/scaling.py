"""How the real VGG16 training step scales with batch size and with segment length.

Batch sizes 8, 16, 32, 64 at the "cpu" profile's 1 s segment, and segment lengths 0.5, 1, 2,
4 s (64, 128, 256, 512 log-mel frames) at its batch of 32; every configuration is timed in the
same interleaved rounds. Time per item should fall with the batch until the cores are busy,
and time per second of audio should stay flat with the segment length (convolutions are linear
in the number of frames); departures show fixed per-step costs or memory effects.
"""

from __future__ import annotations

import copy

import torch

from qat.bench.antitransfer import NUM_EMOTIONS, load_note, random_batch, training_step, workload
from qat.bench.common import interleaved_medians, markdown_table, publish
from qat.config import PROFILES
from qat.data.features import FeatureConfig
from qat.models import vgg16

BATCHES, QUICK_BATCHES = (8, 16, 32, 64), (2, 4)
SECONDS, QUICK_SECONDS = (0.5, 1.0, 2.0, 4.0), (0.25, 0.5)


def frames_for(seconds: float, quick: bool) -> tuple[int, int]:
    """(frames, bins) of a segment: the "cpu" profile's log-mel features (128 frames per
    second); quick mode keeps that frame rate with 32 bins, so 0.25 s is a 32x32 input."""
    if quick:
        return round(128 * seconds), 32
    features = dict(PROFILES["cpu"]["features"], segment_seconds=seconds)
    return FeatureConfig(**features).shape


def base_seconds(quick: bool) -> float:
    """The segment length of the batch sweep (and the reference of the length sweep)."""
    return QUICK_SECONDS[0] if quick else PROFILES["cpu"]["features"]["segment_seconds"]


def configurations(quick: bool) -> dict[tuple[int, float], tuple[int, int, int, int]]:
    """(batch, segment seconds) -> input shape, for both sweeps (sharing the default point)."""
    load = workload(quick)
    base = base_seconds(quick)
    configs = {}
    for batch in QUICK_BATCHES if quick else BATCHES:
        configs[(batch, base)] = (batch, 1, *frames_for(base, quick))
    for seconds in QUICK_SECONDS if quick else SECONDS:
        configs[(load.batch, seconds)] = (load.batch, 1, *frames_for(seconds, quick))
    return configs


def measure(quick: bool) -> tuple[dict, dict]:
    """Median step time of every configuration, each with its own copy of the same model."""
    load = workload(quick)
    torch.manual_seed(0)
    model = vgg16(NUM_EMOTIONS, 1, width=load.width)
    configs = configurations(quick)
    steps = {
        key: training_step(copy.deepcopy(model), random_batch(shape))
        for key, shape in configs.items()
    }
    seconds = interleaved_medians(steps, load.repeats, warmup=1)
    return configs, seconds


def run(quick: bool = False) -> str:
    load = workload(quick)
    before = load_note()
    configs, seconds = measure(quick)
    base_s = base_seconds(quick)
    base = (load.batch, base_s)
    batch_rows = [
        [batch, seconds[(batch, s)] * 1e3, seconds[(batch, s)] / batch * 1e3,
         (seconds[(batch, s)] / batch) / (seconds[base] / load.batch)]
        for batch, s in configs if s == base_s
    ]  # fmt: skip
    length_rows = [
        [s, configs[(batch, s)][2], seconds[(batch, s)] * 1e3,
         seconds[(batch, s)] / batch * 1e3, seconds[(batch, s)] / (batch * s) * 1e3,
         (seconds[(batch, s)] / s) / (seconds[base] / base_s)]
        for batch, s in configs if batch == load.batch
    ]  # fmt: skip
    body = (
        f"Real VGG16 training step (forward, loss, backward, Adam), width {load.width:g}, "
        f"{configs[base][3]} log-mel bins, {torch.get_num_threads()} torch threads, median of "
        f"{load.repeats} interleaved rounds (random order) after a warm-up round, every "
        f"configuration in the same rounds. {before} before, {load_note()} after.\n\n"
        f"Batch size ({base_s:g} s segments, {configs[base][2]} frames):\n\n"
        + markdown_table(
            ["batch", "step (ms)", "ms per item", f"per item vs batch {load.batch}"], batch_rows
        )
        + f"\n\nSegment length (batch {load.batch}):\n\n"
        + markdown_table(
            [
                "seconds",
                "frames",
                "step (ms)",
                "ms per item",
                "ms per item-second",
                f"per second of audio vs {base_s:g} s",
            ],
            length_rows,
        )
    )
    return publish("scaling", body, quick)
