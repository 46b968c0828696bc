"""Trains a tiny network with anti-transfer (Gram cache on) and writes its history as JSON.
Run as one process, or under `torchrun --nproc_per_node 2` (gloo): tests/test_ddp.py compares."""

import json
import os
import sys
from types import SimpleNamespace

import torch

from qat.antitransfer import AntiTransfer
from qat.models import vgg16
from qat.train import TrainConfig, fit, rank_and_world


def toy(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 32, 32, generator=g) + y.view(-1, 1, 1, 1).float()
    return SimpleNamespace(x=x, labels={"emotion": y}, indices=torch.arange(n))


def net(seed):
    torch.manual_seed(seed)
    # No batch norm and no dropout: then each rank's half batch gives exactly half of the
    # full batch's gradient, so one process and two must agree to rounding.
    return vgg16(3, width=1 / 16, hidden=16, batch_norm=False, dropout=0.0)


if __name__ == "__main__":
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
    at = AntiTransfer(net(7).eval(), ["conv2_1"], cache_budget_mb=16)
    out = fit(net(0), toy(64, 1), toy(16, 2), TrainConfig(epochs=2, batch_size=16, beta=1.0),
              anti_transfer=at, progress=False)  # fmt: skip
    rank, world = rank_and_world()
    out["world"], out["cache_hits"] = world, at.cache_stats["hits"]
    if rank == 0:
        with open(sys.argv[1], "w") as fh:
            json.dump(out, fh)
    if world > 1:
        torch.distributed.destroy_process_group()
