"""Memory layout of the VGG16 training step: the default (contiguous, NCHW) layout against
channels-last (NHWC), side by side on qat's training step at the "cpu" profile's sizes, for
the real network on log-mel input and the quaternion one on the RH-emo embedding. qat keeps
the faster layout per network (qat.models.REAL_LAYOUT); the ratio column is what decides it.
"""

from __future__ import annotations

import torch

from qat.bench.antitransfer import NUM_EMOTIONS, load_note, random_batch, training_step, workload
from qat.bench.common import interleaved_medians, markdown_table, publish
from qat.models import vgg16

LAYOUTS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}


def _step(quaternion: bool, layout, shape, width):
    torch.manual_seed(0)
    model = vgg16(NUM_EMOTIONS, in_channels=shape[1], quaternion=quaternion, width=width)
    return training_step(model.set_layout(layout), random_batch(shape))


def run(quick: bool = False) -> str:
    load = workload(quick)
    rows = []
    for label, quaternion, shape in (
        ("real", False, load.spectrogram_shape),
        ("quaternion", True, load.embedding_shape),
    ):
        steps = {name: _step(quaternion, layout, shape, load.width)
                 for name, layout in LAYOUTS.items()}  # fmt: skip
        times = interleaved_medians(steps, repeats=load.repeats, warmup=1)
        base, cl = times["contiguous"], times["channels-last"]
        rows.append([label, "x".join(map(str, shape)), 1e3 * base, 1e3 * cl, cl / base])
    header = ["network", "input (B x C x H x W)", "contiguous (ms)", "channels-last (ms)",
              "channels-last / contiguous (medians)"]  # fmt: skip
    body = (
        f"One training step (forward, loss, backward, optimizer; qat.train.Step) at width "
        f"{load.width:g}, {torch.get_num_threads()} torch threads; times are medians of "
        f"{load.repeats} rounds after a warm-up round, each round running both layouts once in "
        f"a fresh random order. {load_note()}\n\n" + markdown_table(header, rows)
    )
    return publish("layout", body, quick)
