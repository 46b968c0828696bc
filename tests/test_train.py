"""The training loop: resume equals an uninterrupted run, NaN stops cleanly, one forward per
step, the frozen network is untouched, the AT cache changes nothing."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qat.antitransfer import AntiTransfer
from qat.models import vgg16
from qat.train import NonFiniteLossError, Step, TrainConfig, evaluate, fit, make_optimizer


def toy_data(n, seed, num_classes=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, 1, 32, 32, generator=g) + y.view(-1, 1, 1, 1).float()  # learnable
    word = torch.randint(0, 4, (n,), generator=g)
    return SimpleNamespace(x=x, labels={"emotion": y, "word": word}, indices=torch.arange(n))


def small_net(seed=0):
    torch.manual_seed(seed)
    return vgg16(3, width=1 / 16, hidden=16)


@pytest.fixture(scope="module")
def data():
    return toy_data(48, 1), toy_data(16, 2)


def weights_equal(a, b):
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=False)
    )


def test_resumed_run_matches_uninterrupted(data, tmp_path):
    train, val = data
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-3, patience=10, seed=3)
    full = small_net()
    ref = fit(full, train, val, cfg, checkpoint=tmp_path / "full.ckpt", progress=False)

    # Stop after one epoch (as if killed), then resume from its checkpoint in a new process.
    first = small_net()
    fit(
        first,
        train,
        val,
        TrainConfig(**{**vars(cfg), "epochs": 1}),
        checkpoint=tmp_path / "r.ckpt",
        progress=False,
    )
    resumed = small_net(seed=99)  # different init: everything must come from the checkpoint
    out = fit(resumed, train, val, cfg, checkpoint=tmp_path / "r.ckpt", progress=False)
    assert out["history"] == ref["history"]
    assert out["best_epoch"] == ref["best_epoch"]
    assert (ref["resumed_from_epoch"], out["resumed_from_epoch"]) == (0, 1)  # the record says so
    assert weights_equal(full, resumed)
    assert evaluate(full, val) == evaluate(resumed, val)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(data, tmp_path):
    train, val = data
    ckpt = tmp_path / "run.ckpt"
    net = small_net()
    fit(net, train, val, TrainConfig(epochs=1, batch_size=16), checkpoint=ckpt, progress=False)
    before = ckpt.read_bytes()
    bad = SimpleNamespace(x=train.x.clone(), labels=train.labels, indices=train.indices)
    bad.x[5] = math.nan
    with pytest.raises(NonFiniteLossError, match=r"epoch 2.*last good checkpoint.*epoch 1"):
        fit(net, bad, val, TrainConfig(epochs=2, batch_size=48), checkpoint=ckpt, progress=False)
    assert ckpt.read_bytes() == before


def test_best_epoch_restored_and_selection_ignores_at(data):
    train, val = data
    net = small_net()
    at = AntiTransfer(small_net(seed=5).eval(), ["conv2_1"], gram="sample")
    out = fit(
        net,
        train,
        val,
        TrainConfig(epochs=3, batch_size=16, beta=50.0),
        anti_transfer=at,
        progress=False,
    )
    val_losses = [h["val_loss"] for h in out["history"]]
    assert out["best_epoch"] == 1 + val_losses.index(min(val_losses))
    assert all("at" in h for h in out["history"])


def count_forwards(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("method", ["at", "dann"])
def test_one_forward_of_the_trained_network_per_step(data, method):
    from qat.adversarial import Adversary

    train, _ = data
    net, orth = small_net(), small_net(seed=7).eval()
    cfg = TrainConfig(batch_size=8, beta=1.0)
    at = AntiTransfer(orth, ["conv3_1"]) if method == "at" else None
    adv = Adversary(16, 4) if method == "dann" else None
    calls = count_forwards(net)
    frozen = at.orthogonal if at else orth  # AntiTransfer runs its own frozen copy
    orth_calls = count_forwards(frozen.tap_module("conv1_1"))
    step = Step(net, make_optimizer(net, cfg, adv), cfg, at, adv)
    for i in range(3):
        idx = torch.arange(8 * i, 8 * i + 8)
        step(train.x[idx], {k: v[idx] for k, v in train.labels.items()}, idx, lam=0.5)
    assert len(calls) == 3
    assert len(orth_calls) == (3 if method == "at" else 0)


def test_frozen_network_untouched_by_training(data):
    train, val = data
    orth = small_net(seed=11)
    orth.train()  # even if handed over in train mode, AT must run it in eval mode
    before = {k: v.clone() for k, v in orth.state_dict().items()}
    at = AntiTransfer(orth, ["conv2_2"])
    fit(
        small_net(),
        train,
        val,
        TrainConfig(epochs=1, batch_size=16),
        anti_transfer=at,
        progress=False,
    )
    assert all(torch.equal(before[k], v) for k, v in orth.state_dict().items())  # incl. BN stats
    assert all(p.grad is None for p in orth.parameters())


def test_cached_and_uncached_training_give_the_same_losses(data):
    train, val = data
    results = []
    for budget in (0, 64):
        at = AntiTransfer(small_net(seed=5).eval(), ["conv2_1"], cache_budget_mb=budget)
        out = fit(
            small_net(),
            train,
            val,
            TrainConfig(epochs=2, batch_size=16, beta=5.0),
            anti_transfer=at,
            progress=False,
        )
        results.append((out["history"], at.cache_stats))
    (h0, _), (h1, stats) = results
    assert stats["hits"] > 0
    for a, b in zip(h0, h1, strict=False):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="beta"):
        TrainConfig(beta=-1)
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


def test_balanced_threshold_splits_coarse_ratings_near_half_where_the_median_fails():
    from qat.train import balanced_threshold

    # SynthEmo's valence, one value per emotion, five balanced emotions: the median (0.2) puts
    # 4 of 5 emotions "high"; the balanced cut between 0.2 and 0.5 puts 2 of 5 (hand-computed).
    valence = torch.tensor([0.5, 0.9, 0.2, 0.2, 0.1] * 7)
    assert float((valence >= torch.median(valence)).double().mean()) == pytest.approx(0.8)
    assert balanced_threshold(valence) == pytest.approx(0.35)
    # Unknown ratings are ignored; one level cannot be split.
    with_nan = torch.cat([valence, torch.full((9,), float("nan"))])
    assert balanced_threshold(with_nan) == pytest.approx(0.35)
    assert math.isnan(balanced_threshold(torch.full((5,), 0.3)))
    # Against brute force over every midpoint, on random coarse ratings.
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = torch.tensor(rng.integers(1, 6, size=40) / 5.0)
        levels = np.unique(values.numpy())
        cuts = (levels[1:] + levels[:-1]) / 2
        best = min(cuts, key=lambda c: (abs((values.numpy() >= c).mean() - 0.5), c))
        got = balanced_threshold(values)
        assert abs((values.numpy() >= got).mean() - 0.5) == pytest.approx(
            abs((values.numpy() >= best).mean() - 0.5)
        )


def test_a_killed_rhemo_resumes_where_it_stopped_and_ends_as_if_never_stopped(tmp_path):
    """Killed after epoch 2 of 2 + 2 (a stage boundary), then again after epoch 3 (inside the
    second stage's one-cycle schedule), the reruns load the checkpoint and end with the
    uninterrupted run's weights and history."""
    from unittest import mock

    from qat import io, rundata
    from qat.config import PROFILES, RunConfig
    from qat.models import RHEmo
    from qat.train import fit_rhemo

    data = rundata.run_data(RunConfig(profile="smoke"), progress=False)
    recipe = TrainConfig(lr=4e-3, batch_size=8, optimizer="adamw", schedule="onecycle", warmup=0.3)

    def rhemo(seed=5):
        torch.manual_seed(seed)
        return RHEmo(len(data.label_space.emotions), pools=PROFILES["smoke"]["rhemo_pools"])

    def train(net, checkpoint=None):
        return fit_rhemo(net, data.train, data.val, epochs=(2, 2), seed=3, progress=False,
                         recipe=recipe, checkpoint=checkpoint)  # fmt: skip

    full = rhemo()
    reference = train(full)
    ckpt, write = tmp_path / "rhemo.ckpt", io.write_atomic

    def killed_at(epoch):
        def write_then_kill(path, fn):
            write(path, fn)
            if len(torch.load(path, weights_only=True)["history"]) == epoch:
                raise KeyboardInterrupt

        return mock.patch.object(io, "write_atomic", write_then_kill)

    with killed_at(2), pytest.raises(KeyboardInterrupt):
        train(rhemo(), ckpt)
    with killed_at(3), pytest.raises(KeyboardInterrupt):  # from here on the checkpoint's
        train(rhemo(seed=3), ckpt)  # weights take over: another start changes nothing
    resumed = rhemo(seed=99)
    out = train(resumed, ckpt)
    assert out["history"] == reference["history"]
    assert weights_equal(full, resumed)


# A validation curve whose answer is known: falls to its minimum at epoch 3, then rises.
SCRIPTED = [5.0, 4.0, 3.0, 3.5, 3.2, 3.9, 4.0, 4.1]


def test_fit_stops_after_patience_epochs_without_a_better_validation_loss_and_keeps_the_best(
    data, monkeypatch
):
    """With val losses SCRIPTED and patience 2, training stops after epoch 5 (two epochs
    without a loss below 3.0), reports why, and ends on the weights of epoch 3 exactly."""
    import copy

    from qat import train as train_module

    train, val = data
    snapshots = []

    def scripted(model, dataset, target, *precision):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return {"loss": SCRIPTED[len(snapshots) - 1], "ua": 0.5}

    monkeypatch.setattr(train_module, "_scores", scripted)
    net = small_net()
    out = fit(net, train, val, TrainConfig(epochs=8, batch_size=16, patience=2), progress=False)
    assert [h["epoch"] for h in out["history"]] == [1, 2, 3, 4, 5]
    assert out["best_epoch"] == 3
    assert out["stopped"].startswith("early stopping: no better validation score in 2 epochs")
    assert all(torch.equal(v, snapshots[2][k]) for k, v in net.state_dict().items())
    assert not all(torch.equal(v, snapshots[4][k]) for k, v in net.state_dict().items())
    # Without early stopping every epoch runs, and the record says so.
    snapshots.clear()
    out = fit(small_net(), train, val, TrainConfig(epochs=3, batch_size=16, selection="final"),
              progress=False)  # fmt: skip
    assert out["stopped"] == "epoch budget (3 epochs)" and len(out["history"]) == 3


def _rhemo_and_data():
    from qat.models import RHEmo

    g = torch.Generator().manual_seed(0)
    n = 24
    labels = {"emotion": torch.randint(0, 3, (n,), generator=g)}
    for k in ("valence", "arousal", "dominance"):
        labels[k] = torch.rand(n, generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g)
    part = SimpleNamespace(x=x, labels=labels)
    torch.manual_seed(0)
    return RHEmo(3, pools=((2, 1), (1, 1), (1, 1))), part


def test_rhemo_stops_each_stage_on_its_patience_and_keeps_each_stage_s_best_weights(monkeypatch):
    """Scripted validation objectives: the reconstruction stage (budget 4) is best at its 2nd
    epoch and stops after 2 worse ones; its best weights start the heads stage, whose scripted
    curve (budget 8, SCRIPTED) is best at its 3rd epoch and stops after its 5th. The kept
    network is exactly the one scored at that epoch; the record says why each stage ended."""
    import copy

    from qat import train as train_module
    from qat.train import fit_rhemo

    curve = [2.0, 1.0, 1.5, 1.6, *SCRIPTED]
    snapshots = []
    real_scores = train_module._rhemo_scores

    def scripted(rhemo, val, *args):
        row = real_scores(rhemo, val, *args)
        snapshots.append(copy.deepcopy(rhemo.state_dict()))
        return {**row, "val_objective": curve[len(snapshots) - 1]}

    monkeypatch.setattr(train_module, "_rhemo_scores", scripted)
    rhemo, part = _rhemo_and_data()
    loads = []
    load = rhemo.load_state_dict
    rhemo.load_state_dict = lambda state: (loads.append(copy.deepcopy(state)), load(state))[1]
    recipe = TrainConfig(lr=1e-2, batch_size=8, optimizer="adamw", schedule="onecycle",
                         selection="best_val_loss", patience=2)  # fmt: skip
    out = fit_rhemo(rhemo, part, part, epochs=(4, 8), recipe=recipe, progress=False)
    stages = [h["stage"] for h in out["history"]]
    assert stages == ["reconstruction"] * 4 + ["heads"] * 5
    assert out["kept_epoch"] == 4 + 3
    assert out["stopped"] == (
        "reconstruction: early stopping: no better validation score in 2 epochs (epoch 4); "
        "heads: early stopping: no better validation score in 2 epochs (epoch 5)"
    )
    kept = rhemo.state_dict()
    assert all(torch.equal(v, snapshots[6][k]) for k, v in kept.items())
    # The heads stage started from the reconstruction stage's best weights (epoch 2).
    first_load = loads[0]
    assert all(torch.equal(v, snapshots[1][k]) for k, v in first_load.items())
    assert not all(torch.equal(v, snapshots[3][k]) for k, v in first_load.items())


def test_rhemo_v1_runs_every_epoch_keeps_the_last_and_reports_heads_against_chance():
    """Without a recipe (v1: Adam, constant lr) every epoch runs and the last is kept; each
    rating's balanced accuracy and majority rate are those of its binarised validation labels
    (checked against sklearn)."""
    from sklearn.metrics import balanced_accuracy_score

    from qat.train import _binarised, balanced_threshold, fit_rhemo

    rhemo, part = _rhemo_and_data()
    out = fit_rhemo(rhemo, part, part, epochs=(1, 2), progress=False)
    assert len(out["history"]) == 3 and out["kept_epoch"] == 3
    assert out["stopped"] == (
        "reconstruction: epoch budget (1 epochs); heads: epoch budget (2 epochs)"
    )
    last = out["history"][-1]
    with torch.no_grad():
        logits = rhemo(part.x)
    for k in ("valence", "arousal", "dominance"):
        target = _binarised(part.labels[k], balanced_threshold(part.labels[k])).numpy()
        pred = logits[k].argmax(1).numpy()
        assert last[f"val_{k}_balanced"] == pytest.approx(balanced_accuracy_score(target, pred))
        share = target.mean()
        assert last[f"val_{k}_majority"] == pytest.approx(max(share, 1 - share))


class _Payload:
    """A pickle that, if unpickled with code allowed, writes a marker file (harmless)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_carries_code_is_refused_never_run(data, tmp_path):
    """A crafted pickle at a run's checkpoint path (a shared or copied cache): resuming reads
    it as data, so its code never runs; training starts afresh with a warning naming it."""
    import pickle

    train, val = data
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "ser-planted.ckpt"
    ckpt.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    with pytest.warns(UserWarning, match="ser-planted.ckpt: unreadable checkpoint"):
        out = fit(small_net(), train, val, TrainConfig(epochs=1, batch_size=16),
                  checkpoint=ckpt, progress=False)  # fmt: skip
    assert not marker.exists()
    assert out["resumed_from_epoch"] == 0


def test_grad_clip_scales_the_global_gradient_norm_down_to_the_limit_and_keeps_its_direction(data):
    """The step's gradients against an explicit computation: unclipped gradients g with global
    L2 norm n > c become g * c / n (computed here in float64); c = 0 leaves them alone."""
    train, _ = data
    x, labels = train.x[:8], {k: v[:8] for k, v in train.labels.items()}
    seen = {}

    def grads_at_step(clip):
        net = small_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        opt.step = lambda: seen.__setitem__(clip, [p.grad.double().clone()
                                                   for p in net.parameters()])  # fmt: skip
        Step(net, opt, TrainConfig(batch_size=8, grad_clip=clip))(x, labels)
        return seen[clip]

    raw = grads_at_step(0.0)
    norm = torch.sqrt(sum((g**2).sum() for g in raw))
    limit = float(norm) / 3
    clipped = grads_at_step(limit)
    for g, c in zip(raw, clipped, strict=True):
        assert torch.allclose(c, g * limit / norm, rtol=1e-5, atol=1e-9)
    assert float(torch.sqrt(sum((c**2).sum() for c in clipped))) == pytest.approx(limit, rel=1e-5)


def test_the_epoch_line_names_the_invariance_term_by_its_method(data, capsys):
    """A CKA run's epoch line says "cka", a cos² run's "at" (the history keeps both under
    "at", as the records always have)."""
    train, val = data
    for distance, word in (("cka", "cka"), ("cos2", "at")):
        at = AntiTransfer(small_net(seed=5).eval(), ["conv2_1"], distance=distance)
        fit(small_net(), train, val, TrainConfig(epochs=1, batch_size=16), anti_transfer=at,
            progress=True)  # fmt: skip
        line = [x for x in capsys.readouterr().out.splitlines() if "epoch 1:" in x][-1]
        assert f"  {word} " in line and ("  at " in line) == (word == "at")


def test_fit_says_where_its_time_went_steps_and_evaluation_within_its_wall_time(data):
    """The split a record keeps (timings_s train_steps / train_evaluation): both measured, and
    together no more than fit's own wall time."""
    import time

    train, val = data
    t0 = time.perf_counter()
    out = fit(small_net(), train, val, TrainConfig(epochs=2, batch_size=16), monitor=val,
              progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    split = out["timings_s"]
    assert split["steps"] > 0 and split["evaluation"] > 0
    assert split["steps"] + split["evaluation"] <= wall


def test_bf16_runs_the_forward_under_autocast_and_keeps_the_loss_near_fp32(data):
    """precision="bf16": the network's convolutions compute in bfloat16 (seen by a hook), the
    loss is float32 and within bfloat16's rounding of the fp32 step's from the same weights."""
    train, _ = data
    x, labels = train.x[:16], {k: v[:16] for k, v in train.labels.items()}
    losses, dtypes = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = vgg16(3, width=1 / 16, hidden=16, dropout=0.0)
        net.features.conv1_1.register_forward_hook(
            lambda m, i, out, p=precision: dtypes.__setitem__(p, out.dtype)
        )
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        losses[precision] = Step(net, opt, TrainConfig(batch_size=16, precision=precision))(
            x, labels)["task"]  # fmt: skip
    assert dtypes == {"fp32": torch.float32, "bf16": torch.bfloat16}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)
