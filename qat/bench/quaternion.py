"""What the quaternion pipeline saves: quaternion VGG16 on RH-emo embeddings over real VGG16
on spectrograms, at the same width and segment length.

Both run qat's real training step (qat.train.Step). The quaternion network reads a 4-channel
embedding much smaller than the spectrogram (4x32x32 vs 1x128x64 in the "cpu" profile), and a
quaternion layer holds 1/4 of the parameters of a real layer of the same real width. Unless
embeddings are cached, the frozen RH-emo encoder runs on every batch, so the quaternion step is
reported twice: on cached embeddings, and with the encoder's forward (eval, no_grad) included.

Target: quaternion / real <= 0.25 in time and in memory.
"""

from __future__ import annotations

import torch
from torch import nn

from qat.bench.antitransfer import (
    NUM_EMOTIONS,
    load_note,
    paired_ratios,
    random_batch,
    training_step,
    workload,
)
from qat.bench.common import markdown_table, publish
from qat.bench.efficiency import profile_step
from qat.models import RHEmo, vgg16
from qat.resources import count_parameters, peak_step_memory, step_flops

TARGET = 0.25
VARIANTS = ("real", "quaternion, cached embeddings", "quaternion + RH-emo encoder")


def _frozen_encoder(pools) -> nn.Module:
    """The RH-emo encoder as the downstream step sees it: frozen, eval mode."""
    torch.manual_seed(0)
    rhemo = RHEmo(NUM_EMOTIONS, pools=pools)
    rhemo.requires_grad_(False)
    rhemo.eval()
    return rhemo.encoder


def _steps(load) -> tuple[dict, dict[str, nn.Module], int]:
    """The three training steps, the network each trains, and the encoder's parameter count."""
    torch.manual_seed(0)
    real = vgg16(NUM_EMOTIONS, 1, quaternion=False, width=load.width)
    quat = vgg16(NUM_EMOTIONS, 4, quaternion=True, width=load.width)
    quat_fresh = vgg16(NUM_EMOTIONS, 4, quaternion=True, width=load.width)
    spectrogram = random_batch(load.spectrogram_shape)
    encoder = _frozen_encoder(load.rhemo_pools)
    with torch.no_grad():
        embedding = encoder(spectrogram)
    if tuple(embedding.shape) != load.embedding_shape:
        raise RuntimeError(
            f"RH-emo encoder gave {tuple(embedding.shape)}, expected {load.embedding_shape}"
        )
    steps = {
        VARIANTS[0]: training_step(real, spectrogram),
        VARIANTS[1]: training_step(quat, embedding),
        VARIANTS[2]: training_step(quat_fresh, spectrogram, encoder=encoder),
    }
    models = {VARIANTS[0]: real, VARIANTS[1]: quat, VARIANTS[2]: quat_fresh}
    return steps, models, count_parameters(encoder, trainable_only=False)


def measure(load) -> tuple[dict[str, dict], int]:
    """Parameters, FLOPs, median step time, peak step memory and profiler shares per op
    category of each variant."""
    steps, models, encoder_params = _steps(load)
    seconds, ratios = paired_ratios(steps, VARIANTS[0], load.repeats)
    out = {}
    for name, step in steps.items():
        out[name] = {
            "params": count_parameters(models[name]),
            "flops": step_flops(step),
            "seconds": seconds[name],
            "time ratio": ratios[name],
            "bytes": peak_step_memory(step),
            "categories": profile_step(step, load.repeats)[1],
        }
    return out, encoder_params


def category_rows(results: dict[str, dict]) -> list[list]:
    """Milliseconds per step in each op category (profiler share x median step time), real vs
    quaternion on cached embeddings: which work shrinks with the smaller input and which
    does not."""
    real, quat = results[VARIANTS[0]], results[VARIANTS[1]]
    names = sorted(set(real["categories"]) | set(quat["categories"]),
                   key=lambda k: -real["categories"].get(k, 0.0))  # fmt: skip
    rows = []
    for name in names:
        r = real["categories"].get(name, 0.0) * real["seconds"] * 1e3
        q = quat["categories"].get(name, 0.0) * quat["seconds"] * 1e3
        rows.append([name, r, q, q / r if r > 0 else "-"])
    return rows


def verdict_lines(results: dict[str, dict]) -> list[str]:
    real = results[VARIANTS[0]]
    lines = []
    for name in VARIANTS[1:]:
        for what, ratio in (
            ("time", results[name]["time ratio"]),
            ("memory", results[name]["bytes"] / real["bytes"]),
        ):
            met = "met" if ratio <= TARGET else "NOT met"
            lines.append(f"- {name}, {what}: {ratio:.3f}x real (target <= {TARGET}: {met})")
    return lines


def run(quick: bool = False) -> str:
    load = workload(quick)
    before = load_note()
    results, encoder_params = measure(load)
    real = results[VARIANTS[0]]
    rows = []
    for name in VARIANTS:
        r = results[name]
        rows.append(
            [
                name,
                r["params"],
                r["flops"] / 1e9,
                r["seconds"] * 1e3,
                r["bytes"] / 2**20,
                r["params"] / real["params"],
                r["flops"] / real["flops"],
                r["time ratio"],
                r["bytes"] / real["bytes"],
            ]
        )
    header = [
        "step",
        "trainable params",
        "GFLOP/step",
        "time (ms)",
        "peak (MiB)",
        "params / real",
        "FLOPs / real",
        "time / real",
        "memory / real",
    ]
    body = (
        "One training step (forward, loss, backward, Adam) of VGG16: real on the log-mel "
        f"spectrogram vs quaternion on the RH-emo embedding of the same segment; "
        f"{load.describe()}. FLOPs = qat.resources.step_flops (convolutions and matmuls, "
        "forward + backward); peak = qat.resources.peak_step_memory. The last row runs the "
        f"frozen RH-emo encoder ({encoder_params} parameters, eval, no_grad) on every batch, "
        f"as training does unless embeddings are cached. {before} before, {load_note()} after "
        "(other jobs share the CPUs: ratios, not times).\n\n"
        + markdown_table(header, rows)
        + "\n\nTarget (quaternion <= 0.25x real in time and memory), from the ratios above:\n\n"
        + "\n".join(verdict_lines(results))
        + "\n\nWhere the time goes (torch.profiler self CPU time, "
        f"{load.repeats} steps; ms = share x median step time). Quaternion batch norm is "
        "built from elementwise ops (sum, mul, div, ...), so it lands in 'other':\n\n"
        + markdown_table(
            ["op category", "real (ms)", "quaternion (ms)", "quaternion / real"],
            category_rows(results),
        )
    )
    return publish("quaternion", body, quick)
