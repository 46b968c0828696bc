"""Layer benchmark: QuaternionConv2d vs nn.Conv2d at the same real widths, and vs a naive
quaternion conv that makes 16 per-component convolutions (what a direct reading of the
Hamilton product gives). Forward + backward (input and weight gradients), batch 8, 3x3
kernels, at sizes a width-scaled VGG16 sees on spectrograms on a CPU.

Also times the block-weight assembly alone (forward + backward), two ways: the torch.cat
build qat uses and an index/gather build, to show what the per-call assembly costs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qat.bench.common import interleaved_medians, markdown_table, publish
from qat.nn import QuaternionConv2d, quaternion_block_weight

# (C_in, C_out, H, W) per row; batch 8.
SIZES = ((8, 8, 128, 128), (16, 32, 64, 64), (64, 64, 32, 32), (128, 128, 16, 16))
QUICK_SIZES = ((8, 8, 16, 16), (16, 16, 8, 8))
BATCH, QUICK_BATCH = 8, 2

# Hamilton-product table: _TABLE[a][b] = (sign, component) of the block mapping input
# component b to output component a (components 0..3 = r, i, j, k).
_TABLE = (
    ((1, 0), (-1, 1), (-1, 2), (-1, 3)),
    ((1, 1), (1, 0), (-1, 3), (1, 2)),
    ((1, 2), (1, 3), (1, 0), (-1, 1)),
    ((1, 3), (-1, 2), (1, 1), (1, 0)),
)


def naive_quaternion_conv2d(
    x: Tensor, components: tuple[Tensor, ...], bias: Tensor | None, padding: int
) -> Tensor:
    """Reference quaternion conv: 16 component convolutions, summed with Hamilton signs."""
    # Contiguous components once, so the 16 convs do not each copy a strided view.
    xs = [part.contiguous() for part in torch.chunk(x, 4, dim=1)]
    outs = []
    for row in _TABLE:
        acc = None
        for b, (sign, comp) in enumerate(row):
            term = F.conv2d(xs[b], components[comp], padding=padding)
            acc = term if acc is None else (acc + term if sign > 0 else acc - term)
        outs.append(acc)
    y = torch.cat(outs, dim=1)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _gather_block_weight(r: Tensor, i: Tensor, j: Tensor, k: Tensor) -> Tensor:
    """Alternative assembly: stack the components, pick blocks by index, multiply by signs."""
    stacked = torch.stack((r, i, j, k))  # (4, O, I, *k)
    index = torch.tensor([comp for row in _TABLE for _, comp in row])
    signs = torch.tensor([float(sign) for row in _TABLE for sign, _ in row], dtype=r.dtype)
    blocks = stacked[index] * signs.view(-1, *([1] * r.dim()))  # (16, O, I, *k)
    o, i_, *kernel = r.shape
    blocks = blocks.view(4, 4, o, i_, *kernel).transpose(1, 2)  # (4, O, 4, I, *k)
    return blocks.reshape(4 * o, 4 * i_, *kernel)


def _step(forward, x: Tensor, params: list[Tensor]):
    """One forward + backward, gradients cleared so nothing accumulates between repeats."""

    def run():
        for p in (x, *params):
            p.grad = None
        forward(x).sum().backward()

    return run


def _time_size(batch: int, c_in: int, c_out: int, h: int, w: int, repeats: int) -> dict:
    torch.manual_seed(0)
    real = nn.Conv2d(c_in, c_out, 3, padding=1)
    quat = QuaternionConv2d(c_in, c_out, 3, padding=1)
    comps = quat.components()
    x = torch.randn(batch, c_in, h, w, requires_grad=True)
    fns = {
        "real": _step(real, x, list(real.parameters())),
        "quaternion": _step(quat, x, list(quat.parameters())),
        "naive": _step(
            lambda v: naive_quaternion_conv2d(v, comps, quat.bias, 1), x, list(quat.parameters())
        ),
        "assembly_cat": _step(lambda _v: quaternion_block_weight(*comps), x, list(comps)),
        "assembly_gather": _step(lambda _v: _gather_block_weight(*comps), x, list(comps)),
    }
    return interleaved_medians(fns, repeats=repeats, warmup=1)


def run(quick: bool = False) -> str:
    sizes, batch, repeats = (QUICK_SIZES, QUICK_BATCH, 3) if quick else (SIZES, BATCH, 15)
    header = [
        "C_in->C_out, HxW",
        "real (ms)",
        "quaternion (ms)",
        "naive 16-conv (ms)",
        "quaternion / real",
        "naive / quaternion",
        "assembly cat (ms)",
        "assembly gather (ms)",
    ]
    load_before = os.getloadavg()[0]
    rows = []
    for c_in, c_out, h, w in sizes:
        t = {k: v * 1e3 for k, v in _time_size(batch, c_in, c_out, h, w, repeats).items()}
        rows.append(
            [
                f"{c_in}->{c_out}, {h}x{w}",
                t["real"],
                t["quaternion"],
                t["naive"],
                t["quaternion"] / t["real"],
                t["naive"] / t["quaternion"],
                t["assembly_cat"],
                t["assembly_gather"],
            ]
        )
    body = (
        f"Forward + backward of one 3x3 conv layer (padding 1), batch {batch}, "
        f"{torch.get_num_threads()} torch threads, median of {repeats} interleaved rounds, "
        "each in a random order (a fixed order biases the comparison); 1-min load average "
        f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after (other processes on the "
        "machine make the ratios noisy). "
        "Quaternion = QuaternionConv2d (block weight assembled every call, one conv); naive = "
        "16 per-component convs with Hamilton signs; assembly = building the block weight "
        "alone (forward + backward), torch.cat (used) vs stack+index.\n\n"
        + markdown_table(header, rows)
    )
    return publish("layers", body, quick)
