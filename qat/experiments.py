"""Recipes the notebooks, the CLI and the sweeps call: build the data, pretrain the
orthogonal networks and RH-emo, train SER with or without an invariance method, and write one
run record per run.

A run's settings are one qat.config.RunConfig; its profile sets the sizes. Trained networks
are cached under qat.paths.CACHE, keyed by the hash of everything that determines them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time

import numpy as np
import torch

from qat import io, paths, resources, robust, runs
from qat.adversarial import Adversary
from qat.antitransfer import AntiTransfer, init_from
from qat.config import MODELS, PROFILES, TAPS, RunConfig
from qat.data import splits
from qat.data.augment import Augmenter
from qat.data.dataset import SERDataset
from qat.data.records import content_digests, corpus_digest
from qat.models import VGG16_TAPS, vgg16
from qat.probe import pooled_at_taps, probe_accuracy
from qat.rundata import (
    Data,
    attach_groups,
    device,
    embed,
    feature_config,
    held_out_set,
    load_orthogonal_records,
    load_records,
    run_data,
    subset,
    take,
    train_config,
)
from qat.saved import load_model, load_rhemo, model_path, save_model, stored_path
from qat.sweep import Engine, run_grid
from qat.train import (
    Step,
    evaluate,
    fit,
    make_optimizer,
    predict,
    rank_and_world,
)
from qat.upstream import pretrain_orthogonal, pretrain_rhemo, source_of, untrained_rhemo

# The probe reads every tap: one forward pass pools them all, so 14 taps cost about what 5 did.
PROBE_TAPS = TAPS


@contextlib.contextmanager
def _rank_zero_first():
    """Under torchrun, rank 0 builds shared things (corpus, caches, networks) while the other
    ranks wait; they then find everything cached."""
    rank, world = rank_and_world()
    if world > 1 and rank > 0:
        torch.distributed.barrier()
    yield
    if world > 1 and rank == 0:
        torch.distributed.barrier()


def _save_split(split: splits.Split) -> str:
    digest = split.digest()
    target = paths.REPORTS / "splits" / f"{digest}.json"
    if not target.exists():
        try:
            io.write_json_once(target, split.to_dict())
        except FileExistsError:
            pass  # a parallel run saved the same split first
    return digest


def confound_metrics(data: Data, pred: np.ndarray, target: str = "word") -> dict:
    """On a confounded (or its unconfounded control) test set: UA on congruent and
    incongruent items, and the share of incongruent predictions that follow the word (or
    speaker), i.e. predict the emotion whose training subset holds the item's word."""
    from qat import metrics

    owner = data.split.meta.get("assignment")
    if not owner:
        return {}
    emotion_of = {v: e for e, vs in owner.items() for v in vs}
    test = [data.records[i] for i in data.test.indices]
    y = data.test.labels["emotion"].numpy()
    congruent = data.split.congruent(data.records, data.test.indices)
    attr = "text" if target == "word" else "speaker"
    follows = np.array(
        [
            data.label_space.emotions.index(emotion_of[getattr(r, attr)])
            if getattr(r, attr) in emotion_of
            else -1
            for r in test
        ]
    )
    inc = ~congruent
    return {
        "congruent_ua": metrics.unweighted_accuracy(y[congruent], pred[congruent])
        if congruent.any()
        else None,
        "incongruent_ua": metrics.unweighted_accuracy(y[inc], pred[inc]) if inc.any() else None,
        "follows_shortcut": float(np.mean(pred[inc] == follows[inc])) if inc.any() else None,
        "congruent_share_test": float(congruent.mean()),
    }


def invariance_probes(
    net, train: SERDataset, held_out: SERDataset, label: str, taps=PROBE_TAPS, items=None
) -> dict:
    """Linear-probe accuracy of the orthogonal label at several taps of the trained (frozen)
    network, fitted on `train` and scored on `held_out` (held-out speakers for words; for
    speakers, which the test set does not share with training, the validation items), each
    at most `items` items (a fixed subsample: the probe is a measurement, not the run)."""
    train, held_out = subset(train, items, 1), subset(held_out, items, 2)
    taps = list(taps)
    fitted, scored = pooled_at_taps(net, taps, train.x), pooled_at_taps(net, taps, held_out.x)
    y_fit, y_score = train.labels[label].numpy(), held_out.labels[label].numpy()
    return {tap: probe_accuracy(fitted[tap], y_fit, scored[tap], y_score) for tap in taps}


def _check_writable() -> None:
    """Fail before training, not after, if results could not be saved."""
    io.ensure_folder(paths.REPORTS / "runs", "run records (QAT_REPORTS)")
    io.ensure_folder(paths.CACHE, "cache (QAT_CACHE)")
    io.ensure_folder(paths.DATA, "data (QAT_DATA)")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message names the checkpoint a rerun resumes from."""


def group_metrics(data: Data, test: SERDataset, pred: np.ndarray) -> dict:
    """Per-group and worst-group test accuracy, and the accuracy averaged with the training
    group shares (the spurious-correlation literature's "average accuracy")."""
    from qat import metrics

    n = len(data.label_space.emotions) ** 2
    y, groups = test.labels["emotion"].numpy(), test.labels[robust.GROUP_LABEL].numpy()
    shares = np.bincount(data.train.labels[robust.GROUP_LABEL].numpy(), minlength=n)
    return {
        "n_groups": n,
        "per_group": {str(g): a for g, a in metrics.group_accuracies(y, pred, groups).items()},
        "worst_group": metrics.worst_group_accuracy(y, pred, groups),
        "average": metrics.average_accuracy(y, pred, groups, shares / shares.sum()),
        "train_counts": shares.tolist(),
    }


def batches_per_epoch(items: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over `items`, counted as train.fit counts them: batches of
    `batch_size`, a last batch kept when it holds at least 2 items per rank (batch norm)."""
    world = rank_and_world()[1]
    return sum(min(batch_size, items - i) >= 2 * world for i in range(0, items, batch_size))


def _step_matched(tcfg, baseline_items: int, items: int) -> tuple[object, dict]:
    """The recipe `tcfg` with the epochs that give a method training on `items` the optimizer
    steps of the baseline, which trains on `baseline_items` for tcfg.epochs (the one-cycle
    schedule and the EMA run per step, so they then run as long as the baseline's); and what
    the record says."""
    target = tcfg.epochs * batches_per_epoch(baseline_items, tcfg.batch_size)
    per_epoch = batches_per_epoch(items, tcfg.batch_size)
    epochs = robust.step_matched_epochs(target, per_epoch)
    info = {"epochs": epochs, "batches_per_epoch": per_epoch, "steps": epochs * per_epoch,
            "baseline_steps": target}  # fmt: skip
    return dataclasses.replace(tcfg, epochs=epochs), info


# A run that did not train (DESIGN.md section 6) is a finding, never a data point averaged in.
CHANCE_LOSS_MARGIN = 0.05  # final training loss this close to ln K: never left chance
ONE_CLASS_SHARE = 0.6  # this share of the test predictions in one class: collapsed
CHANCE_UA_FACTOR = 1.25  # test UA below this times chance (1/K): at chance


def training_failures(final_train_loss, predictions, ua, num_classes: int) -> list[str]:
    """Why a run did not train, one reason per rule it breaks ([] when it trained):

    - its last epoch's mean training cross-entropy is within CHANCE_LOSS_MARGIN of ln K, the
      loss of a uniform guess over K classes (the network never left chance);
    - at least ONE_CLASS_SHARE of its test predictions name one class (a collapse onto one
      emotion; SynthEmo's test sets hold every emotion equally);
    - its test UA is below CHANCE_UA_FACTOR / K (within a quarter of chance).

    A quantity that is None (a record without it) is not judged."""
    k = num_classes
    why = []
    if final_train_loss is not None and abs(final_train_loss - math.log(k)) < CHANCE_LOSS_MARGIN:
        why.append(f"final training loss {final_train_loss:.3f} is within "
                   f"{CHANCE_LOSS_MARGIN:g} of ln {k} = {math.log(k):.3f}")  # fmt: skip
    if predictions is not None and len(predictions):
        counts = np.bincount(np.asarray(predictions, dtype=np.int64), minlength=k)
        share = counts.max() / counts.sum()
        if share >= ONE_CLASS_SHARE:
            why.append(f"{share:.0%} of the test predictions are class {int(counts.argmax())}")
    if ua is not None and ua < CHANCE_UA_FACTOR / k:
        why.append(f"test UA {ua:.3f} is below {CHANCE_UA_FACTOR:g}/{k} = "
                   f"{CHANCE_UA_FACTOR / k:.3f}")  # fmt: skip
    return why


def training_verdict(record: dict) -> list[str]:
    """Why a run record's run did not train ([] when it did): what the record says, else
    training_failures on what it holds (its last training loss, test predictions and UA, and K
    from its emotions or confusion matrix; [] when K is unknown)."""
    if "trained" in record:
        return list(record.get("not_trained_because") or [])
    metrics = record.get("metrics") or {}
    k = len((record.get("labels") or {}).get("emotions") or metrics.get("confusion") or [])
    if k < 2:
        return []
    history = record.get("history") or []
    loss = history[-1].get("train_loss") if history else None
    return training_failures(loss, metrics.get("predictions"), metrics.get("ua"), k)


def labelled_data(config: RunConfig, data: Data, train, val, selection: dict, info: dict) -> dict:
    """The labelled items a run used, by label and where they come from: emotion labels (the
    items it trains on, validation, the decorrelated validation set its draw is selected on,
    DFR's refit set), group labels (wherever the method or the selection reads them), the
    confound's own labels (the adversaries) and the orthogonal corpus (anti-transfer; 0 for
    the untrained placebo; None where the kit does not count it: a user's word corpus)."""
    refit = (info.get("dfr") or {}).get("held_out_items")
    chosen_on = {"selection set": selection["items"]} if selection else {}
    emotion = {"training": len(train.x), "validation": len(val.x), **chosen_on}
    group = dict(chosen_on)
    if config.method in ("reweight", "groupdro"):
        group["training"] = len(train.x)
    if config.method == "subsample":  # every training item's group decides what is kept
        group["training (to subsample)"] = len(data.train.x)
    if config.selection == "worst_group":
        group["validation"] = len(val.x)
    if refit is not None:
        emotion["refit set"] = group["refit set"] = refit
    out = {"emotion": emotion, "group": group}
    if config.uses_adversary:
        out[f"{config.orthogonal} (confound) labels"] = {"training": len(train.x)}
    if config.uses_taps:
        own = config.corpus == "synthemo" and config.root is None and not config.orthogonal_root
        items = len(load_orthogonal_records(config.profile, progress=False)) if own else None
        labels = {"random": "none (untrained)", "shuffled": "word, shuffled"}
        out["orthogonal corpus"] = {
            "items": 0 if config.orthogonal == "random" else items,
            "labels": labels.get(config.orthogonal, config.orthogonal),
        }
    return out


def _group_objective(config: RunConfig, data: Data, train, val, tcfg, progress, name,
                     augment=None):  # fmt: skip
    """(training set, objective, what the record says, recipe) of the group methods and JTT:
    subsample and reweight take the baseline's number of optimizer steps, reweight's weights
    are capped at robust.REWEIGHT_CAP; JTT's first stage trains under `augment` too."""
    groups = train.labels[robust.GROUP_LABEL].numpy()
    n_groups = len(data.label_space.emotions) ** 2
    by_position = np.zeros(len(data.records))
    if config.method == "subsample":
        keep = robust.balanced_subsample(groups, config.seed)
        tcfg, steps = _step_matched(tcfg, len(train.x), len(keep))
        return take(train, keep), None, {"train_items": len(keep), **steps}, tcfg
    if config.method == "reweight":
        uncapped = robust.group_weights(groups, n_groups)
        by_position[train.indices] = robust.group_weights(groups, n_groups, robust.REWEIGHT_CAP)
        tcfg, steps = _step_matched(tcfg, len(train.x), len(train.x))
        info = {"cap": robust.REWEIGHT_CAP, "largest_weight_uncapped": float(uncapped.max()),
                "items_capped": int((uncapped > robust.REWEIGHT_CAP).sum()), **steps}  # fmt: skip
        return train, robust.ReweightObjective(by_position), info, tcfg
    if config.method == "groupdro":
        counts = np.bincount(groups, minlength=n_groups)
        if config.group_adjustment:
            dro = robust.GroupDRO(n_groups, config.eta, config.group_adjustment, counts)
        else:
            dro = robust.GroupDRO(n_groups, config.eta)
        return train, dro, {}, tcfg
    # JTT: ERM for T epochs, then train afresh with the items it got wrong upweighted.
    torch.manual_seed(config.seed)
    first = vgg16(**_vgg_args(config, len(data.label_space.emotions), train.x.shape[1]))
    stage1 = dataclasses.replace(tcfg, epochs=config.jtt_epochs, selection="final")
    fit(first, train, val, stage1, progress=progress, name=f"{name} (JTT stage 1)",
        augment=augment)  # fmt: skip
    wrong = (predict(first, train.x).argmax(1) != train.labels["emotion"]).numpy()
    by_position[train.indices] = robust.jtt_upweights(wrong, config.lambda_up)
    torch.manual_seed(config.seed)
    return train, robust.ReweightObjective(by_position), {"upweighted": int(wrong.sum())}, tcfg


def augmenter(config: RunConfig, data: Data) -> Augmenter | None:
    """The run's `augment` setting as fit's batch transform (None for "none"): on the run's
    features, in the space of its training normaliser."""
    if config.augment == "none":
        return None
    features = feature_config(config.profile, config.level)
    return Augmenter(config.augment, features, data.normalizer)


def _vgg_args(config: RunConfig, num_classes: int, in_channels: int) -> dict:
    """vgg16's arguments for a run's network (also what its saved model file stores)."""
    return dict(num_classes=num_classes, in_channels=in_channels,
                quaternion=config.model == "quaternion", width=config.width)  # fmt: skip


SELECTION_PER_GROUP = 40  # the decorrelated validation set: up to 40 items of each group


def _upstream_weights(rhemo, orth_net) -> dict:
    """{"rhemo"/"orthogonal": {"record", "weights"}} of each cached network the run stood on
    (a user's RH-emo file and the untrained random placebo have no record)."""
    out = {"rhemo": rhemo and source_of(rhemo), "orthogonal": orth_net and source_of(orth_net)}
    return {k: v for k, v in out.items() if v}


def selection_scores(data: Data, net, rhemo) -> dict:
    """UA and worst-group accuracy on the decorrelated validation set (a fixed draw per split,
    the same for every method): what knobs are chosen on, never the test set."""
    from qat import metrics

    held = held_out_set(data, SELECTION_PER_GROUP, 0, rhemo)
    pred = predict(net, held.x).argmax(1).numpy()
    y, groups = held.labels["emotion"].numpy(), held.labels[robust.GROUP_LABEL].numpy()
    return {
        "ua": metrics.unweighted_accuracy(y, pred),
        "worst_group": metrics.worst_group_accuracy(y, pred, groups),
        "items": len(y),
    }


DFR_PER_GROUP = 200  # held-out items per group fed to DFR (it balances them itself)


DFR_REFITS = 10


def _dfr(config: RunConfig, data: Data, net, rhemo, progress) -> tuple[dict, dict]:
    """DFR: the same-seed baseline's network with its last layer refitted on a group-balanced
    held-out set (training-speaker items the split did not use, and the validation items), as
    an L1 logistic regression folded back into the classifier. Returns (the baseline's
    history, what the record says)."""
    base_config = config.replace(method="baseline")
    base = train_ser(base_config, progress=progress)
    retrained, saved = {}, model_path(base["config"])
    if saved.exists():
        trained = load_model(saved).net
    else:  # the record came without its network: train it again, here, for this run only
        again, trained = _train(base_config, *_identity(base_config, progress), progress, None)
        retrained = {
            "baseline_network_retrained": {
                "why": "the baseline's record came without its network (not in this cache)",
                "test_ua": again["metrics"]["ua"],
                "record_test_ua": base["metrics"]["ua"],
            }
        }
        base = again
    net.load_state_dict(trained.state_dict())
    held, selection = _dfr_set(data, config.seed, rhemo)
    features = pooled_at_taps(net, ["penultimate"], held.x)["penultimate"]
    emotions = data.label_space.emotions
    refit = robust.dfr(
        features,
        held.labels["emotion"].numpy(),
        data.split.groups(data.records, held.indices, emotions),
        n_refits=DFR_REFITS,
        seed=config.seed,
        n_groups=len(emotions) ** 2,
    )
    _fold_into_classifier(net, refit, len(emotions))
    fits = len(refit.validation_scores) + DFR_REFITS
    if refit.unconverged:
        data.warnings.append(
            f"DFR: {refit.unconverged} of {fits} L1 logistic fits stopped at their iteration "
            "limit before reaching liblinear's tolerance"
        )
    info = {
        "baseline": base["config"],
        "held_out_items": len(held.x),
        "selection_set_items": len(selection),
        "shared_with_selection_set": int(np.isin(held.indices, selection).sum()),
        "C": refit.C,
        "validation_worst_group": {str(c): v for c, v in refit.validation_scores.items()},
        "fits_at_iteration_limit": f"{refit.unconverged} of {fits}",
        **retrained,
    }
    return {"history": base["history"], "best_epoch": base["best_epoch"]}, info


def _dfr_set(data: Data, seed: int, rhemo) -> tuple[SERDataset, np.ndarray]:
    """(DFR's refit set, the decorrelated validation set's corpus positions): up to
    DFR_PER_GROUP held-out items of each group, drawn with `seed`, none of them in the set the
    draws are selected on (selection_scores), so the refit never sees what selects it.
    The draw takes SELECTION_PER_GROUP more of each group than it keeps, so removing the
    selection set's items still leaves DFR_PER_GROUP where the pool has them."""
    selection = held_out_set(data, SELECTION_PER_GROUP, 0).indices
    wider = held_out_set(data, DFR_PER_GROUP + SELECTION_PER_GROUP, seed)
    free = np.flatnonzero(~np.isin(wider.indices, selection))
    groups = wider.labels[robust.GROUP_LABEL].numpy()[free]
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate(
        [rng.permutation(free[groups == g])[:DFR_PER_GROUP] for g in np.unique(groups)]
    ))  # fmt: skip
    held = take(wider, keep)
    return (embed(rhemo, held) if rhemo is not None else held), selection


def _fold_into_classifier(net, refit, num_classes: int) -> None:
    """Write a standardised linear model (coef, intercept over (x - mean) / scale) into the
    network's last linear layer, so the network itself predicts what the refit predicts."""
    coef = refit.coef / refit.scale
    bias = refit.intercept - coef @ refit.mean
    if len(coef) == 1 and num_classes == 2:  # scikit-learn's binary form: one row, class 1
        coef, bias = np.vstack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, bias[0]])
    weight = np.zeros((num_classes, coef.shape[1]))
    full_bias = np.full(num_classes, -1e9)  # a class absent from the held-out set: never
    weight[refit.classes], full_bias[refit.classes] = coef, bias
    with torch.no_grad():
        net.head.classifier.weight.copy_(torch.as_tensor(weight))
        net.head.classifier.bias.copy_(torch.as_tensor(full_bias))


@dataclasses.dataclass
class _Parts:
    """What a run trains and how: the network, the invariance method's pieces, the recipe."""

    net: torch.nn.Module
    model_config: dict
    tcfg: object
    anti_transfer: AntiTransfer | None
    adversary: Adversary | None
    method_info: dict


def _rhemo(config: RunConfig, data: Data, progress: bool, trained: bool = True):
    """The RH-emo a run reads (None when it reads none): the user's file it names, else the
    split's, from the cache or trained here (`trained`), or at its initial weights."""
    if not config.reads_rhemo:
        return None
    if config.rhemo:
        return load_rhemo(config.rhemo, feature_config(config.profile, config.level))[0]
    if trained:
        return pretrain_rhemo(config, data, progress)
    return untrained_rhemo(config, len(data.label_space.emotions))


def _upstream(config: RunConfig, data: Data, progress: bool):
    """(RH-emo, orthogonal network) a run stands on (None where it needs none), from the cache
    or trained here."""
    rhemo, orth_net = _rhemo(config, data, progress), None
    if config.uses_taps or config.init_from_orthogonal:
        orth_net = pretrain_orthogonal(config, data, rhemo, progress)
    return rhemo, orth_net


def _parts(config: RunConfig, data: Data, train: SERDataset, orth_net) -> _Parts:
    """The freshly initialised network (seeded), its anti-transfer or adversary, and the
    training recipe of a run; `train` holds the network's inputs (embeddings if it reads
    RH-emo)."""
    p = PROFILES[config.profile]
    num_classes = len(data.label_space.emotions)
    torch.manual_seed(config.seed)
    model_config = _vgg_args(config, num_classes, train.x.shape[1])
    net = vgg16(**model_config)
    anti_transfer = adversary = None
    method_info: dict = {"information": config.information}
    if config.init_from_orthogonal:
        init_from(net, orth_net)
    if config.uses_taps:
        anti_transfer = AntiTransfer(
            orth_net,
            config.taps,
            distance="cos2" if config.method == "at" else "cka",
            gram=config.gram,
            # An augmented item differs at every epoch: its frozen-side targets cannot be kept.
            cache_budget_mb=p.get("cache_budget_mb", 512)
            if config.gram == "sample" and config.augment == "none" else 0,
        )  # fmt: skip
    if config.uses_adversary:
        num_domains = len(getattr(data.label_space, f"{config.orthogonal}s"))
        hidden = net.embed(train.x[:2]).shape[1]
        adversary = Adversary(
            hidden, num_domains, num_classes=num_classes if config.method == "cdann" else None
        )
    # The run's own recipe settings, where it sets them; the profile's otherwise.
    overrides = {name: getattr(config, name) for name in ("weight_decay", "lr", "grad_clip",
                                                          "selection")
                 if getattr(config, name) is not None}  # fmt: skip
    method_info["selection"] = (
        "worst-group validation accuracy" if config.selection == "worst_group"
        else f"the instrument's rule ({p.get('selection', 'best_val_loss')})"
    )  # fmt: skip
    tcfg = train_config(
        config.profile, config.seed, beta=config.beta, adversary_lambda=config.lam,
        adversary_target=config.orthogonal, precision=config.precision, **overrides,
    )  # fmt: skip
    return _Parts(net, model_config, tcfg, anti_transfer, adversary, method_info)


def _fixed_batch_step(config: RunConfig, parts: _Parts, train: SERDataset):
    """(network, step): one training step of this configuration on the first batch of `train`,
    on copies of the network and adversary (which stay as they are)."""
    net, adversary = copy.deepcopy(parts.net), copy.deepcopy(parts.adversary)
    step = Step(net, make_optimizer(net, parts.tcfg, adversary), parts.tcfg, parts.anti_transfer,
                adversary)  # fmt: skip
    idx = torch.arange(min(parts.tcfg.batch_size, len(train.x)))
    x, labels = train.x[idx], {k: v[idx] for k, v in train.labels.items()}
    keys = torch.as_tensor(np.asarray(train.indices))[idx]
    net.train()
    return net, lambda: step(x, labels, keys, config.lam)


def step_cost(config: RunConfig, parts: _Parts, train: SERDataset, device: str) -> dict:
    """Cost of one training step of this configuration (parameters, FLOPs, peak memory, time),
    measured on a copy of the network (which stays as trained). The cost does not depend on the
    seed or fold, so it is measured once per configuration and machine and reused from the
    cache; the record says whether it was. Its time is timed alone, under whatever load the
    machine had then; qat.costs times configurations side by side."""
    shared = config.replace(seed=0, fold=None).key_dict()
    key = runs.config_key({**shared, "device": device, "in_shape": list(train.x.shape[1:])})
    path = paths.CACHE / "step_costs" / f"{key}.json"
    if path.exists():
        with contextlib.suppress(runs.RecordError, KeyError):
            return {**runs.load_record(path)["cost"], "cost_reused": True}
    net, step = _fixed_batch_step(config, parts, train)
    cost = resources.measure(net, step, device=device)
    with contextlib.suppress(OSError):  # a cache, not a result: a failed write costs nothing
        io.write_json(path, {"config": {"key": key}, "cost": cost})
    return {**cost, "cost_reused": False}


def training_steps(configs, progress: bool = False) -> dict[str, tuple]:
    """{config.key(): (network, step)}: each configuration's training step on a fixed batch of
    its training data (the first batch, RH-emo embeddings where the model reads them). What
    qat.costs times side by side. A step's cost does not depend on the weights, so every
    network is at its initial weights: the SER network, RH-emo (unless the run names a file)
    and the orthogonal network (the random placebo's, of the same architecture); nothing is
    trained. Configurations that share a split load it once."""
    by_split: dict[tuple, list[RunConfig]] = {}
    for config in configs:
        by_split.setdefault((*config.prerequisites(), config.rhemo), []).append(config)
    out = {}
    for group in by_split.values():
        head = group[0]  # the group shares its split, RH-emo and orthogonal network
        data = run_data(head, progress)
        if head.confounded:
            attach_groups(data)
        batch_size = train_config(head.profile, head.seed).batch_size
        train = take(data.train, np.arange(min(batch_size, len(data.train.x))))
        rhemo, orth_net = _rhemo(head, data, progress, trained=False), None
        if rhemo is not None:
            train = embed(rhemo, train)
        if any(c.uses_taps or c.init_from_orthogonal for c in group):
            placebo = head.replace(orthogonal="random")
            orth_net = pretrain_orthogonal(placebo, data, rhemo, progress)
        for config in group:
            out[config.key()] = _fixed_batch_step(config, _parts(config, data, train, orth_net),
                                                  train)  # fmt: skip
    return out


def train_ser(
    config: RunConfig | None = None, *, force: bool = False, progress: bool = True, **settings
) -> dict:
    """Train one SER network and write its run record (reports/runs/ser-<hash>.json).

    `config` is a RunConfig, or its fields are given as keywords (`method="at", tap="conv2_1"`).
    method: "baseline"; "at" (the published Gram/cos^2 anti-transfer at the taps); "cka"
    (linear CKA anti-transfer; several taps sum); "dann" (gradient-reversal adversary of the
    orthogonal label on the penultimate features, peak weight `lam`); "cdann" (the same,
    class-conditional). If a record with the same configuration exists it is returned as is
    (sweeps resume), unless force=True, which adds a new record beside it. A record is served
    only if its stored config equals this run's (runs.find_record), never by file name alone.
    """
    if config is None:
        config = RunConfig(**settings)
    elif settings:
        config = config.replace(**settings)
    key, corpus = _identity(config, progress)
    target = runs.record_path("ser", key)
    found = runs.find_record("ser", key)
    if found is not None and not force:
        return found[1]
    return _train(config, key, corpus, progress, target)[0]


def _identity(config: RunConfig, progress: bool) -> tuple[dict, list | None]:
    """(the run's record key, the user's corpus records or None): a user's corpus enters the
    key by its content, not its path."""
    world = rank_and_world()[1]
    extra = {"world_size": world} if world > 1 else {}
    corpus = None
    if config.root is not None:
        corpus = load_records(config.corpus, config.profile, config.root, progress)
        extra["data_digest"] = corpus_digest(corpus)
    return config.key_dict(**extra), corpus


def _train(config: RunConfig, key: dict, corpus, progress: bool, target) -> tuple[dict, object]:
    """Train the run; return its record and network. The record goes to `target` and the
    network to the cache, unless `target` is None: a network rebuilt for another run's sake,
    never served as the record's own."""
    p = PROFILES[config.profile]
    rank = rank_and_world()[0]
    _check_writable()
    t_start = time.perf_counter()
    runs.code_version()  # read now: the record names the code that starts the run
    where = device()
    name = config.label()

    with _rank_zero_first():
        data = run_data(config, progress, corpus)
        if config.confounded:
            attach_groups(data)
        train, val, test = data.train, data.val, data.test
        t_upstream = time.perf_counter()  # networks shared by every method on this split
        rhemo, orth_net = _upstream(config, data, progress)
        upstream_time = time.perf_counter() - t_upstream
        if rhemo is not None:
            train, val, test = (embed(rhemo, d) for d in (train, val, test))
    num_classes = len(data.label_space.emotions)
    parts = _parts(config, data, train, orth_net)
    net, tcfg, method_info = parts.net, parts.tcfg, parts.method_info
    anti_transfer, adversary, objective = parts.anti_transfer, parts.adversary, None
    ckpt = paths.CACHE / "checkpoints" / f"ser-{runs.config_key(key)}.ckpt"
    io.ensure_folder(ckpt.parent, "checkpoint")
    augment = augmenter(config, data)
    monitor = subset(test, p["monitor_items"]) if p.get("monitor_items") else None
    t_prepared = time.perf_counter()
    try:
        if config.method == "dfr":
            result, method_info["dfr"] = _dfr(config, data, net, rhemo, progress)
        else:
            if config.method in ("reweight", "subsample", "groupdro", "jtt"):
                train, objective, method_info[config.method], tcfg = _group_objective(
                    config, data, train, val, tcfg, progress, name, augment
                )
            result = fit(
                net, train, val, tcfg, anti_transfer=anti_transfer, adversary=adversary,
                objective=objective, monitor=monitor, checkpoint=ckpt, progress=progress,
                name=name, augment=augment,
            )  # fmt: skip
    except KeyboardInterrupt:
        saved = f"checkpoint {ckpt}" if ckpt.exists() else "no checkpoint yet (first epoch)"
        raise Interrupted(
            f"interrupted: {name}; {saved}; the same command resumes from it"
        ) from None
    train_time = time.perf_counter() - t_prepared
    test_metrics = evaluate(net, test, num_classes=num_classes, precision=config.precision)
    pred = np.asarray(test_metrics["predictions"])
    failures = training_failures(result["history"][-1]["train_loss"] if result["history"]
                                 else None, pred, test_metrics["ua"], num_classes)  # fmt: skip
    model_file = None
    if rank == 0 and target is not None:  # the network, ready to predict (in the cache)
        # Beside, never over, a file an earlier record of this key names (a --force rerun).
        seen = [data.records[i] for i in (*data.train.indices, *data.val.indices)]
        model_file = save_model(
            model_path(key), net, feature_config=feature_config(config.profile, config.level),
            model_config=parts.model_config, normalizer=data.normalizer,
            label_space=data.label_space, rhemo=rhemo, run=key,
            trained_on=content_digests(seen), beside=True,
        )  # fmt: skip

    t_evaluated = time.perf_counter()
    cost = {**step_cost(config, parts, train, where),
            "train_time_s": train_time,  # of this process: a resumed run's last epochs only
            "resumed_from_epoch": result.get("resumed_from_epoch", 0)}  # fmt: skip
    t_costed = time.perf_counter()
    target_label = config.probe_target
    probe_taps = sorted({*PROBE_TAPS, *config.taps}, key=TAPS.index)
    probe = invariance_probes(
        net, train, test if target_label == "word" else val, target_label, probe_taps,
        p.get("probe_items"),
    )  # fmt: skip
    t_probed = time.perf_counter()
    selection = selection_scores(data, net, rhemo) if config.confounded else {}
    record = {
        "kind": "ser",
        "config": key,
        "split": {
            "digest": _save_split(data.split),
            "setup": config.setup,
            "seed": config.seed,
            "sizes": {"train": len(train.x), "val": len(val.x), "test": len(test.x)},
            **data.split.meta,
        },
        "labels": {"emotions": list(data.label_space.emotions)},
        "metrics": test_metrics,
        "confound": confound_metrics(data, pred, config.factor) if config.confounded else {},
        "probe": {target_label: probe},
        "history": result["history"],
        "best_epoch": result["best_epoch"],
        "resources": cost,
        "groups": group_metrics(data, test, pred) if config.confounded else {},
        "selection_set": selection,
        "trained": not failures,
        "not_trained_because": failures,
        "labelled_data": labelled_data(config, data, train, val, selection, method_info),
        "method": method_info,
        "at_cache": anti_transfer.cache_stats if anti_transfer is not None else None,
        "upstream_weights": _upstream_weights(rhemo, orth_net),
        "model": model_file and stored_path(model_file),  # relative to the cache root
        "dropped_silent": data.dropped_silent,
        "warnings": data.warnings,
        "code_version": runs.code_version(),
        "device": where,
        "wall_time_s": time.perf_counter() - t_start,
        "timings_s": {  # overhead: prepare, step_cost and probe; evaluate is the measurement
            "prepare": t_prepared - t_start - upstream_time,
            "upstream": upstream_time,  # RH-emo and orthogonal networks (cached after once)
            "train": train_time,  # of which the epochs' steps and evaluation passes:
            **{f"train_{k}": v for k, v in result.get("timings_s", {}).items()},
            "evaluate": t_evaluated - t_prepared - train_time,
            "step_cost": t_costed - t_evaluated,
            "probe": t_probed - t_costed,
            "after": time.perf_counter() - t_prepared - train_time,
        },
    }
    if rank == 0 and target is not None:
        io.write_json_beside(target, record)
    if rank == 0:
        ckpt.unlink(missing_ok=True)  # the record is safe; the resume point is no longer needed
    return record, net


def sweep_configs(taps=None, models=MODELS, seeds=(0,), **settings) -> list[RunConfig]:
    """RunConfigs for taps x models x seeds (all 13 taps by default), each model's baseline
    included so gains can be computed."""
    configs = []
    for model in models:
        for seed in seeds:
            base = RunConfig(**dict(settings, model=model, seed=seed))
            configs += [base.replace(tap=tap) for tap in taps or VGG16_TAPS]
            configs.append(base.replace(method="baseline"))
    return configs


def _train_quietly(config: RunConfig) -> dict:
    return train_ser(config, progress=False)


def run_configs(
    configs: list[RunConfig], jobs: int = 1, desc: str = "sweep", engine: Engine | None = None
) -> list[dict]:
    """Run (or reuse) train_ser over `configs` in `jobs` parallel processes (or as Ray tasks:
    `engine`, qat.sweep.Engine); the first configuration of each prerequisite group runs before
    the others (here with progress when jobs is 1), building the split, RH-emo and orthogonal
    network the others then read from the cache. `desc` names the grid on its progress bar."""
    return run_grid(
        configs, _train_quietly, jobs=jobs, group=RunConfig.prerequisites,
        first=lambda c: train_ser(c, progress=True), name=RunConfig.label, desc=desc,
        engine=engine,
    )  # fmt: skip


def sweep(taps=None, models=MODELS, seeds=(0,), jobs: int = 1, **settings) -> list[dict]:
    """Run (or reuse) train_ser over taps x models x seeds in `jobs` parallel processes;
    configurations whose record exists are not run again. Returns method runs and baselines."""
    settings.setdefault("method", "at")
    settings.pop("progress", None)  # workers run quietly; the sweep shows one bar
    return run_configs(sweep_configs(taps, models, seeds, **settings), jobs=jobs)
