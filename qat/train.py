"""The training loop, in one place and in plain code.

One step: ONE forward of the trained network, with forward hooks capturing its activations at
the taps the losses need; the task loss (cross-entropy); optionally the anti-transfer term
(frozen orthogonal network, no_grad, eval, beta applied once here) and an adversary on the
penultimate features; one backward; one Adam update. Model selection and early stopping use
the validation TASK loss alone; the AT term is logged, never selected on.

Every epoch ends with an atomic checkpoint; `fit` resumes from it. Shuffling and dropout are
seeded per epoch from (seed, epoch), so a resumed run follows the same path as an
uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qat import io, metrics
from qat.adversarial import ganin_lambda
from qat.antitransfer import capture
from qat.progress import tqdm

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "onecycle")
# The weights kept: best validation loss (early stopping), the last epoch's, an EMA of the
# weights, or the best worst-group validation accuracy (needs "group" labels on val).
SELECTIONS = ("best_val_loss", "final", "ema", "worst_group")
PRECISIONS = ("fp32", "bf16")  # bf16: forward passes under bfloat16 autocast


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3  # the peak learning rate under "onecycle"
    patience: int = 5  # epochs without a better validation loss (selection "best_val_loss")
    seed: int = 0
    target: str = "emotion"  # which label the network is trained on
    beta: float = 1.0  # weight of the anti-transfer term, applied once
    adversary_lambda: float = 1.0  # peak gradient-reversal weight (ramped as in Ganin & Lempitsky)
    adversary_target: str = "word"
    device: str = "cpu"
    optimizer: str = "adam"  # "adamw": decoupled weight decay
    weight_decay: float = 0.0
    schedule: str = "constant"  # "onecycle": linear warm-up then cosine decay, per step
    warmup: float = 0.1  # share of the steps spent warming up ("onecycle")
    selection: str = "best_val_loss"  # or the final weights, or an EMA of the weights
    ema_decay: float = 0.99  # per step ("ema")
    grad_clip: float = 0.0  # the gradients' global L2 norm is clipped to this (0: no clipping)
    precision: str = "fp32"  # "bf16": forwards under autocast (AT's Gram and CKA in float32)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected an integer >= 1")
        for name, low, high in (("lr", 0.0, math.inf), ("beta", 0.0, math.inf),
                                ("adversary_lambda", 0.0, math.inf),
                                ("weight_decay", 0.0, math.inf), ("warmup", 0.0, 1.0),
                                ("ema_decay", 0.0, 1.0), ("grad_clip", 0.0, math.inf)):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and low <= value):
                raise ValueError(f"{name}={value!r}: expected a finite number >= {low:g}")
            if value > high or (name == "lr" and value == 0):
                raise ValueError(f"{name}={value!r}: expected a number in ({low:g}, {high:g}]")
        for name, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                            ("selection", SELECTIONS), ("precision", PRECISIONS)):  # fmt: skip
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {valid}")


class NonFiniteLossError(FloatingPointError):
    pass


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


EVAL_BATCH = 512  # no activations are kept for a backward pass, so evaluation batches large


def autocast(precision: str, device) -> torch.autocast:
    """The context forward passes run in: bfloat16 autocast on `device` for "bf16"."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")  # fmt: skip


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH,
            precision: str = "fp32") -> torch.Tensor:  # fmt: skip
    """float32 logits in eval mode, batched (forwards under `precision`)."""
    model.eval()
    device = next(model.parameters()).device
    with autocast(precision, device):
        return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(x), batch_size)])  # fmt: skip


def _load_checkpoint(path: Path) -> dict | None:
    """The saved training state, or None (with a warning) if the file is unreadable: a
    checkpoint is the kit's own resume point, so a truncated one means starting afresh. It is
    read as data (weights_only): a file that needs pickled code, e.g. one planted in a shared
    cache, is refused, never run."""
    try:
        return torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        warnings.warn(
            f"{path}: unreadable checkpoint ({err}); training from the start", stacklevel=3
        )
        return None


def _non_finite_items(data, logits: torch.Tensor) -> str:
    bad = (~torch.isfinite(data.x.reshape(len(data.x), -1)).all(1)).nonzero().flatten()
    if len(bad) == 0:
        bad = (~torch.isfinite(logits).all(1)).nonzero().flatten()
        return f"the network's outputs are not finite for {len(bad)} item(s)"
    indices = getattr(data, "indices", range(len(data.x)))
    return (
        f"{len(bad)} item(s) have NaN/inf inputs (positions {[int(indices[i]) for i in bad[:5]]})"
    )


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**31)


AUGMENT_STREAM = 0x5EED_A06  # xor-ed into the epoch seed: the augmentation's own generator


class Step:
    """One training step on a batch. `fit` calls it for every batch; qat.resources times and
    measures it on a fixed batch, so the figures in a run record are those of this code.

    Its pieces are swapped by configuration, not by copying the loop: the task loss is the
    mean per-item cross-entropy unless `objective(per_item_loss, labels, keys)` says otherwise
    (group weighting, GroupDRO, JTT's upweighting); the invariance term and the adversary are
    optional."""

    def __init__(
        self, model, optimizer, config: TrainConfig, anti_transfer=None, adversary=None,
        objective=None,
    ):  # fmt: skip
        self.model, self.optimizer, self.config = model, optimizer, config
        self.anti_transfer, self.adversary, self.objective = anti_transfer, adversary, objective
        self.taps = list(anti_transfer.taps) if anti_transfer is not None else []
        if adversary is not None:
            self.taps.append("penultimate")
        # Under torchrun, forwards go through DistributedDataParallel wrappers (which average
        # the gradients across ranks); the hooks stay on the wrapped modules.
        self.forward, self.adversary_forward = model, adversary
        if distributed():
            ddp = torch.nn.parallel.DistributedDataParallel
            self.forward = ddp(model)
            self.adversary_forward = ddp(adversary) if adversary is not None else None

    def __call__(self, x, labels: dict, keys: torch.Tensor | None = None, lam: float = 0.0) -> dict:
        config, device = self.config, x.device
        y = labels[config.target].to(device)
        at = self.anti_transfer
        with autocast(config.precision, device):
            targets = at.targets(x, keys) if at is not None else None  # frozen side first
            with capture(self.model, self.taps) as acts:
                logits = self.forward(x)  # the one forward of the trained network
        per_item = F.cross_entropy(logits.float(), y, reduction="none")
        task = per_item.mean()
        loss = task if self.objective is None else self.objective(per_item, labels, keys)
        out = {"task": task, "train_acc": (logits.argmax(1) == y).float().mean()}
        if self.anti_transfer is not None:
            out["at"] = at.term(acts, targets=targets)
            loss = loss + config.beta * out["at"]
        if self.adversary is not None:
            emotion = y if self.adversary.conditional else None
            with autocast(config.precision, device):
                adv_logits = self.adversary_forward(acts["penultimate"], lam, emotion=emotion)
            out["adversary"] = F.cross_entropy(
                adv_logits.float(), labels[config.adversary_target].to(device)
            )
            loss = loss + out["adversary"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss.item()} (task {task.item():.4g})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in out.items()}


def make_optimizer(model, config: TrainConfig, adversary=None) -> torch.optim.Optimizer:
    params = list(model.parameters()) + (list(adversary.parameters()) if adversary else [])
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def make_schedule(optimizer, config: TrainConfig, total_steps: int):
    """None (constant lr) or torch's OneCycleLR: linear warm-up to lr, then cosine decay."""
    if config.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(total_steps, 2),
        pct_start=max(config.warmup, 1e-6), anneal_strategy="cos",
        three_phase=False, cycle_momentum=False, div_factor=25.0, final_div_factor=1e3,
    )  # fmt: skip


def _ema(model, config: TrainConfig):
    if config.selection != "ema":
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay),
                         use_buffers=True)  # fmt: skip


def _scores(model, data, target: str, precision: str = "fp32") -> dict[str, float]:
    """Mean cross-entropy ("loss"), UA and, where the items have group labels, worst-group
    accuracy of `model` on a dataset, from one batched eval-mode pass."""
    logits = predict(model, data.x, precision=precision)
    y = data.labels[target]
    loss = float(F.cross_entropy(logits, y))
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"loss is {loss}: {_non_finite_items(data, logits)}")
    pred = logits.argmax(1).numpy()
    out = {"loss": loss, "ua": metrics.unweighted_accuracy(y.numpy(), pred)}
    if "group" in data.labels:
        out["worst_group"] = metrics.worst_group_accuracy(y.numpy(), pred,
                                                          data.labels["group"].numpy())  # fmt: skip
    return out


def fit(
    model: torch.nn.Module,
    train,
    val,
    config: TrainConfig,
    *,
    anti_transfer=None,
    adversary=None,
    objective=None,
    monitor=None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    name: str = "",
    augment=None,
) -> dict:
    """Train `model` on `train` (anything with `.x`, a `.labels` dict and `.indices`) and leave
    it with the selected weights: the best validation task loss (early stopping with
    `patience`), the final weights, or an exponential moving average of the weights
    (`config.selection`). Returns the per-epoch history and the selected epoch.

    anti_transfer: a qat.antitransfer.AntiTransfer (frozen orthogonal network and taps);
    adversary: a qat.adversarial.Adversary trained on the penultimate features; objective: the
    task loss from per-item losses (see Step); monitor: a dataset scored every epoch for the
    history only (e.g. the test set, for analysis: it never selects anything). `name` (the
    run's label) heads the progress bars and epoch lines. `augment(x, generator)`: a transform
    of each TRAINING batch's inputs (e.g. qat.data.augment.Augmenter), drawing from a generator
    seeded per epoch from (seed, epoch), so a resumed run draws what an uninterrupted one
    does; validation, the monitor and the returned model never see it.
    """
    device = torch.device(config.device)
    model.to(device)
    if adversary is not None:
        adversary.to(device)
    if anti_transfer is not None:
        anti_transfer.check_compatible(model)
    n, n_val = len(train.x), len(val.x)
    if n < 2 or n_val < 1:
        raise ValueError(f"empty split: {n} training and {n_val} validation items")
    rank, world = rank_and_world()
    batches_per_epoch = len([i for i in range(0, n, config.batch_size)
                             if min(config.batch_size, n - i) >= 2 * world])  # fmt: skip
    total_steps = config.epochs * max(batches_per_epoch, 1)
    optimizer = make_optimizer(model, config, adversary)
    schedule = make_schedule(optimizer, config, total_steps)
    ema = _ema(model, config)
    step_fn = Step(model, optimizer, config, anti_transfer, adversary, objective)
    stateful = objective if isinstance(objective, torch.nn.Module) else None  # e.g. GroupDRO
    parts = (
        (adversary, "adversary"),
        (schedule, "schedule"),
        (ema, "ema"),
        (stateful, "objective"),
    )
    keys = torch.as_tensor(np.asarray(train.indices), dtype=torch.long)

    state = {"epoch": 0, "history": [], "best_val": math.inf, "best_epoch": -1, "bad_epochs": 0}
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    best_weights = None
    saved = _load_checkpoint(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for part, key in parts:
            if part is not None:
                part.load_state_dict(saved[key])
        state = saved["state"]
        best_weights = state.pop("best_weights")
    best_weights = best_weights or copy.deepcopy(model.state_dict())
    resumed_from = state["epoch"]  # 0 unless a checkpoint had finished epochs
    timings = {"steps": 0.0, "evaluation": 0.0}  # this process's epochs only

    prefix = f"{name}: " if name else ""
    early_stopping = config.selection in ("best_val_loss", "worst_group")
    if config.selection == "worst_group" and "group" not in val.labels:
        raise ValueError("selection='worst_group': the validation set has no group labels")
    for epoch in range(state["epoch"], config.epochs):
        if early_stopping and state["bad_epochs"] >= config.patience:
            break
        seed = _epoch_seed(config.seed, epoch)
        torch.manual_seed(seed)  # dropout and anything else random in the step
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        batches = [order[i : i + config.batch_size] for i in range(0, n, config.batch_size)]
        # Under torchrun each rank takes its share of every batch (same effective batch).
        batches = [b[rank::world] for b in batches if len(b) >= 2 * world]  # BN needs two
        # Its own stream, so that augmenting leaves the order and dropout draws as they were.
        drawn = augment and torch.Generator().manual_seed(
            _epoch_seed(config.seed, epoch) ^ AUGMENT_STREAM)  # fmt: skip
        model.train()
        t_steps = time.perf_counter()
        sums: dict[str, float] = {}
        bar = tqdm(batches, desc=f"{prefix}epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not progress)  # fmt: skip
        for step, idx in enumerate(bar):
            lam = ganin_lambda(
                (epoch * batches_per_epoch + step) / total_steps, config.adversary_lambda
            )
            labels = {k: v[idx] for k, v in train.labels.items()}
            x = train.x[idx] if augment is None else augment(train.x[idx], drawn)
            try:
                losses = step_fn(x.to(device), labels, keys[idx], lam)
            except NonFiniteLossError as err:
                kept = f"{ckpt_path} (epoch {state['epoch']})" if ckpt_path else "no checkpoint"
                raise NonFiniteLossError(
                    f"{err} at epoch {epoch + 1}, step {step + 1}; training stopped, last good "
                    f"checkpoint: {kept}. Lower lr or beta, or check the inputs for NaN/inf."
                ) from None
            if schedule is not None:
                schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{losses['task']:.3f}")

        if distributed():  # log the mean over ranks
            names = sorted(sums)
            total = torch.tensor([sums[k] for k in names], dtype=torch.float64)
            torch.distributed.all_reduce(total)
            sums = {k: float(v) / world for k, v in zip(names, total, strict=True)}
        selected = ema.module if ema is not None else model
        t_eval = time.perf_counter()
        try:
            scores = _scores(selected, val, config.target, config.precision)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"validation at epoch {epoch + 1}: {err}") from None
        val_loss = scores["loss"]
        record = {"epoch": epoch + 1, "train_loss": sums.pop("task") / len(batches)}
        record.update({k: v / len(batches) for k, v in sums.items()})
        record.update(val_loss=val_loss, val_ua=scores["ua"])
        if "worst_group" in scores:
            record["val_worst_group"] = scores["worst_group"]
        if schedule is not None:
            record["lr"] = schedule.get_last_lr()[0]
        if monitor is not None:  # for analysis only: never used to select anything
            tested = _scores(selected, monitor, config.target, config.precision)
            record["test_loss"], record["test_ua"] = tested["loss"], tested["ua"]
        # Where the time went (kept beside the history: timings differ between identical runs).
        timings["steps"] += t_eval - t_steps
        timings["evaluation"] += time.perf_counter() - t_eval
        state["history"].append(record)
        score = -record["val_worst_group"] if config.selection == "worst_group" else val_loss
        if not early_stopping:
            state.update(best_val=val_loss, best_epoch=epoch + 1)
        elif score < state["best_val"]:
            state.update(best_val=score, best_epoch=epoch + 1, bad_epochs=0)
            best_weights = copy.deepcopy(model.state_dict())
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if ckpt_path is not None and rank == 0:
            saved = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": {**state, "best_weights": best_weights if early_stopping else None},
                "config": asdict(config),
            }
            for part, key in parts:
                if part is not None:
                    saved[key] = part.state_dict()
            io.write_atomic(ckpt_path, lambda tmp, saved=saved: torch.save(saved, tmp))
        if progress and rank == 0:
            # The history keeps the invariance term under "at"; the line names it by method.
            term = "cka" if getattr(anti_transfer, "distance", "cos2") == "cka" else "at"
            extras = "".join(f"  {term if k == 'at' else k} {record[k]:.4f}" for k in sums)
            tqdm.write(
                f"{prefix}epoch {epoch + 1}: train {record['train_loss']:.4f}  val {val_loss:.4f}  "
                f"val UA {scores['ua']:.3f}{extras}"
            )

    if early_stopping:
        model.load_state_dict(best_weights)
    elif ema is not None:
        model.load_state_dict(ema.module.state_dict())
    stopped_early = early_stopping and state["epoch"] < config.epochs
    return {
        "history": state["history"],
        "best_epoch": state["best_epoch"],
        "best_val_loss": state["best_val"],
        "resumed_from_epoch": resumed_from,
        "stopped": stop_reason(stopped_early, config.patience, state["epoch"], config.epochs),
        "timings_s": timings,
    }


def stop_reason(early: bool, patience: int, epoch: int, budget: int) -> str:
    """Why training ended, in the words a record keeps."""
    if early:
        return f"early stopping: no better validation score in {patience} epochs (epoch {epoch})"
    return f"epoch budget ({budget} epochs)"


def evaluate(
    model: torch.nn.Module, data, target: str = "emotion", num_classes: int | None = None,
    precision: str = "fp32",
) -> dict:  # fmt: skip
    """Metrics of the (restored best) model on a dataset, with predictions for later analysis."""
    logits = predict(model, data.x, precision=precision)
    y = data.labels[target].numpy()
    pred = logits.argmax(1).numpy()
    k = num_classes or logits.shape[1]
    out = metrics.summary(y, pred, k)
    out["predictions"] = pred.astype(np.int64).tolist()
    return out


def balanced_threshold(values: torch.Tensor) -> float:
    """The cut between two adjacent distinct values that splits the known items closest to half
    and half. The median fails on coarse ratings: with one value per emotion (SynthEmo) or a
    1-5 scale, "at or above the median" can hold for 4 of 5 emotions, and the head learns to
    answer "high" always. NaN (unknown) values are ignored; with fewer than two distinct
    values the rating cannot be binarised (NaN)."""
    known = values[~torch.isnan(values)].double()
    levels = torch.unique(known)
    if len(levels) < 2:
        return math.nan
    cuts = (levels[1:] + levels[:-1]) / 2
    above = torch.stack([(known >= c).double().mean() for c in cuts])
    return float(cuts[torch.argmin((above - 0.5).abs())])


def _binarised(values: torch.Tensor, threshold: float) -> torch.Tensor:
    return (values >= threshold).long()


RHEMO_WEIGHTS = dict(reconstruction=1.0, emotion=1.0, ratings=1.0)


def fit_rhemo(
    rhemo, train, val, epochs: tuple[int, int] = (4, 4), lr: float = 1e-3, batch_size: int = 32,
    seed: int = 0, progress: bool = True, recipe: TrainConfig | None = None,
    checkpoint: str | os.PathLike | None = None, weights: dict | None = None,
) -> dict:  # fmt: skip
    """Two-stage RH-emo training as in the paper: up to `epochs[0]` epochs of reconstruction
    alone, then up to `epochs[1]` epochs of reconstruction plus the four heads (emotion on
    channel 0, binarised valence/arousal/dominance on channels 1-3 at `balanced_threshold` of
    the training items; a rating the corpus lacks is left out of the loss), each term times its
    `weights` ("reconstruction", "emotion", "ratings"). Adam at a constant `lr`, or `recipe`'s
    optimizer and schedule (a one-cycle schedule restarts at each stage). Under
    `recipe.selection == "best_val_loss"` each stage stops after `recipe.patience` epochs
    without a lower validation objective (the stage's weighted loss) and ends on its best
    weights; otherwise every epoch runs and the last is kept.

    Leaves the network frozen in eval mode and returns the per-epoch validation curve
    (reconstruction error, objective, head accuracies; each rating's balanced accuracy beside
    its validation majority rate), the kept epoch, why each stage stopped, and each rating's
    threshold and share of "high" training items. Every epoch ends with an atomic
    `checkpoint`; a rerun resumes from it and follows the same path as an uninterrupted run."""
    recipe = recipe or TrainConfig(lr=lr, batch_size=batch_size, selection="final")
    weights = {**RHEMO_WEIGHTS, **(weights or {})}
    early = recipe.selection == "best_val_loss"
    batch_size = recipe.batch_size
    optimizer = make_optimizer(rhemo, recipe)
    steps_per_epoch = -(-len(train.x) // batch_size)
    ratings = ("valence", "arousal", "dominance")
    thresholds = {k: balanced_threshold(train.labels[k]) for k in ratings}
    ratings = tuple(k for k in ratings if not math.isnan(thresholds[k]))

    def losses(out, x, labels, with_heads):
        recon = F.mse_loss(out["reconstruction"], rhemo.reconstruction_target(x))
        total = weights["reconstruction"] * recon
        if with_heads:
            total = total + weights["emotion"] * F.cross_entropy(out["emotion"], labels["emotion"])
            for k in ratings:
                known = ~torch.isnan(labels[k])
                if known.any():
                    target = _binarised(labels[k][known], thresholds[k])
                    total = total + weights["ratings"] * F.cross_entropy(out[k][known], target)
        return total, recon

    stages = (("reconstruction", 0, epochs[0]), ("heads", epochs[0], sum(epochs)))
    state = {"history": [], "epoch": 0, "stage": 0, "best": math.inf, "best_epoch": 0,
             "bad_epochs": 0, "stopped": []}  # fmt: skip
    best_weights, schedule = None, None
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    saved = _load_checkpoint(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else None
    if saved is not None and "state" not in saved:
        warnings.warn(f"{ckpt_path}: a checkpoint of older code; training from the start",
                      stacklevel=2)  # fmt: skip
        saved = None
    if saved is not None:
        rhemo.load_state_dict(saved["model"])
        state, best_weights = saved["state"], saved["best_weights"]
        # The schedule first: creating it sets the lr, which the optimizer's state then restores.
        if state["stage"] < len(stages):
            _, begin, end = stages[state["stage"]]
            schedule = make_schedule(optimizer, recipe, (end - begin) * steps_per_epoch)
        optimizer.load_state_dict(saved["optimizer"])
        if schedule is not None and saved["schedule"] is not None:
            schedule.load_state_dict(saved["schedule"])
    n = len(train.x)
    while state["stage"] < len(stages):
        name, begin, end = stages[state["stage"]]
        with_heads = name == "heads"
        if state["epoch"] == begin and schedule is None:  # each stage starts its own cycle
            schedule = make_schedule(optimizer, recipe, (end - begin) * steps_per_epoch)
        out_of_patience = early and state["bad_epochs"] >= recipe.patience
        if state["epoch"] >= end or out_of_patience:
            state["stopped"].append(
                f"{name}: " + stop_reason(out_of_patience, recipe.patience, state["epoch"] - begin,
                                          end - begin))  # fmt: skip
            if early and best_weights is not None:
                rhemo.load_state_dict(best_weights)
            state.update(stage=state["stage"] + 1, epoch=end, best=math.inf, bad_epochs=0)
            best_weights, schedule = None, None
            continue
        epoch = state["epoch"]
        seed_e = _epoch_seed(seed, epoch)
        torch.manual_seed(seed_e)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_e))
        rhemo.train()
        bar = tqdm(range(0, n, batch_size), desc=f"RH-emo epoch {epoch + 1}", leave=False,
                   disable=not progress)  # fmt: skip
        for i in bar:
            idx = order[i : i + batch_size]
            if len(idx) < 2:
                continue
            x = train.x[idx]
            labels = {k: v[idx] for k, v in train.labels.items()}
            loss, _ = losses(rhemo(x), x, labels, with_heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        row = _rhemo_scores(rhemo, val, ratings, thresholds, losses, with_heads)
        row = {"epoch": epoch + 1, "stage": name, "lr": optimizer.param_groups[0]["lr"], **row}
        state["history"].append(row)
        state["epoch"] = epoch + 1
        if row["val_objective"] < state["best"]:
            state.update(best=row["val_objective"], best_epoch=epoch + 1, bad_epochs=0)
            if early:
                best_weights = copy.deepcopy(rhemo.state_dict())
        else:
            state["bad_epochs"] += 1
        if not early:
            state["best_epoch"] = epoch + 1  # the last epoch is kept
        if ckpt_path is not None:
            saved = {
                "model": rhemo.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule and schedule.state_dict(),
                "history": state["history"],
                "state": state,
                "best_weights": best_weights,
            }
            io.write_atomic(ckpt_path, lambda tmp, saved=saved: torch.save(saved, tmp))
    rhemo.eval()
    for p in rhemo.parameters():
        p.requires_grad_(False)
    binarised = {
        k: {"threshold": thresholds[k],
            "share_high": float((train.labels[k][~torch.isnan(train.labels[k])]
                                 >= thresholds[k]).double().mean())}
        for k in ratings
    }  # fmt: skip
    return {"history": state["history"], "ratings": binarised, "kept_epoch": state["best_epoch"],
            "stopped": "; ".join(state["stopped"]), "weights": weights}  # fmt: skip


@torch.no_grad()
def _rhemo_scores(rhemo, val, ratings, thresholds, losses, with_heads) -> dict:
    """RH-emo's validation row: reconstruction error, the stage's objective, the emotion head's
    UA and, per rating, accuracy, balanced accuracy and the majority class's share (a head at
    that share has learned nothing)."""
    rhemo.eval()
    out = rhemo(val.x)
    objective, recon = losses(out, val.x, val.labels, with_heads)
    row = {
        "val_reconstruction_mse": float(recon),
        "val_objective": float(objective),
        "val_emotion_ua": metrics.unweighted_accuracy(
            val.labels["emotion"].numpy(), out["emotion"].argmax(1).numpy()
        ),
    }
    for k in ratings:
        known = ~torch.isnan(val.labels[k])
        if known.any():
            target = _binarised(val.labels[k][known], thresholds[k])
            pred = out[k][known].argmax(1)
            row[f"val_{k}_acc"] = float((pred == target).float().mean())
            row[f"val_{k}_balanced"] = metrics.unweighted_accuracy(target.numpy(), pred.numpy())
            row[f"val_{k}_majority"] = float(max(target.float().mean(), 1 - target.float().mean()))
    return row
