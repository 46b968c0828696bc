"""The robustness field's methods and the placebos, end to end at a small profile: every one
trains for real and quaternion and records worst-group accuracy; the random placebo is the
untrained architecture, frozen; bad settings are refused before anything trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qat import config as cfg
from qat import experiments, robust, rundata, upstream
from qat.config import RunConfig
from qat.models import vgg16

# The smoke corpus holds too few items per group for DFR's balanced held-out set (two per
# group at least, on each of 25 groups): three repetitions and a larger validation share.
GROUPS = {
    **cfg.PROFILES["smoke"],
    "corpus": dict(n_speakers=4, n_words=10, repetitions=3),
    "val_fraction": 0.3,
}


@pytest.fixture(autouse=True)
def groups_profile(monkeypatch):
    monkeypatch.setitem(cfg.PROFILES, "smoke-groups", GROUPS)
    # DFR refits on held-out items outside the decorrelated validation set; the smoke corpus
    # holds 4 to 18 held-out items per group, so that set takes 2 of each here, not 40.
    monkeypatch.setattr(experiments, "SELECTION_PER_GROUP", 2)


@pytest.mark.parametrize("model", ["real", "quaternion"])
@pytest.mark.parametrize("method", ["reweight", "subsample", "groupdro", "jtt", "dfr"])
def test_each_method_trains_and_records_worst_group_accuracy(method, model):
    record = experiments.train_ser(
        RunConfig(method=method, model=model, profile="smoke-groups", jtt_epochs=1),
        progress=False,
    )
    groups = record["groups"]
    assert groups["n_groups"] == 25
    per_group = groups["per_group"].values()
    assert groups["worst_group"] == min(per_group) <= record["metrics"]["ua"] <= 1
    assert 0 <= groups["average"] <= 1 and sum(groups["train_counts"]) > 0
    assert record["method"]["information"] == cfg.REGIMES[method]
    chosen_on = record["selection_set"]  # the decorrelated validation set, never the test set
    assert chosen_on["items"] > 0 and chosen_on["worst_group"] <= chosen_on["ua"] <= 1
    assert record["trained"] == (record["not_trained_because"] == [])
    used = record["labelled_data"]
    assert used["emotion"]["training"] == record["split"]["sizes"]["train"]
    assert used["group"]["selection set"] == chosen_on["items"]
    in_training = {"reweight": "training", "groupdro": "training",
                   "subsample": "training (to subsample)"}  # fmt: skip
    assert (in_training.get(method) in used["group"]) == (method in in_training)
    if method == "subsample":
        counts = [c for c in groups["train_counts"] if c]
        assert record["method"]["subsample"]["train_items"] == len(counts) * min(counts)
        assert used["group"]["training (to subsample)"] == sum(counts)
    if method == "jtt":
        assert record["method"]["jtt"]["upweighted"] >= 0
    if method == "dfr":
        base = experiments.train_ser(record["method"]["dfr"]["baseline"] and RunConfig(
            method="baseline", model=model, profile="smoke-groups"), progress=False)  # fmt: skip
        assert record["history"] == base["history"]  # DFR starts from the baseline's network
        assert record["method"]["dfr"]["C"] in robust.DFR_C_GRID
        capped, fits = map(int, record["method"]["dfr"]["fits_at_iteration_limit"].split(" of "))
        assert fits == len(robust.DFR_C_GRID) + experiments.DFR_REFITS and 0 <= capped <= fits
        assert bool(capped) == any(w.startswith("DFR:") for w in record["warnings"])
        assert record["method"]["dfr"]["shared_with_selection_set"] == 0
        assert used["group"]["refit set"] == record["method"]["dfr"]["held_out_items"]


def test_dfr_refits_on_a_balanced_set_disjoint_from_the_selection_set():
    """The decorrelated validation set selects every method's draw; DFR's refit set never
    holds one of its items, and takes every other held-out item of a group up to
    DFR_PER_GROUP."""
    run = RunConfig(method="dfr", profile="smoke-groups", seed=3)
    data = rundata.run_data(run, progress=False)
    rundata.attach_groups(data)
    held, selection = experiments._dfr_set(data, run.seed, None)
    chosen_on = rundata.held_out_set(data, experiments.SELECTION_PER_GROUP, 0)
    assert np.array_equal(selection, chosen_on.indices)
    assert not set(held.indices) & set(selection)
    # The pool, by hand: the split's unused training-speaker items and the validation items.
    pool = set(data.split.unused_indices(data.records)) | set(data.val.indices)
    assert set(held.indices) <= pool
    free = np.array(sorted(pool - set(selection)))
    groups = data.split.groups(data.records, free, data.label_space.emotions)
    held_groups = held.labels[robust.GROUP_LABEL].numpy()
    for g in np.unique(groups):
        expected = min(int((groups == g).sum()), experiments.DFR_PER_GROUP)
        assert int((held_groups == g).sum()) == expected, g
    with pytest.MonkeyPatch.context() as mp:  # the cap per group holds where the pool is larger
        mp.setattr(experiments, "DFR_PER_GROUP", 3)
        few, _ = experiments._dfr_set(data, run.seed, None)
        counts = np.bincount(few.labels[robust.GROUP_LABEL].numpy())
        assert counts.max() == 3 and not set(few.indices) & set(selection)


STEPS = {**GROUPS, "epochs": 3, "patience": 3, "selection": "ema", "schedule": "onecycle",
         "optimizer": "adamw", "warmup": 0.3}  # fmt: skip


def test_subsample_and_reweight_take_the_baselines_optimizer_steps(monkeypatch):
    """The baseline's steps are counted as they happen; a subsample (fewer items per epoch)
    trains the whole number of epochs whose steps come closest to them, and its one-cycle
    schedule ends where the baseline's does (its last lr is the schedule's floor)."""
    from qat import train

    monkeypatch.setitem(cfg.PROFILES, "smoke-steps", STEPS)
    calls, fitting = [], []  # steps taken inside fit (not the cost measurement's)
    step, fit = train.Step.__call__, experiments.fit

    def counted(self, *args, **kwargs):
        calls.extend(fitting)
        return step(self, *args, **kwargs)

    def fitted(*args, **kwargs):
        fitting.append(1)
        try:
            return fit(*args, **kwargs)
        finally:
            fitting.clear()

    monkeypatch.setattr(train.Step, "__call__", counted)
    monkeypatch.setattr(experiments, "fit", fitted)
    taken, records = {}, {}
    for method in ("baseline", "subsample", "reweight"):
        calls.clear()
        records[method] = experiments.train_ser(
            RunConfig(method=method, profile="smoke-steps", seed=21), force=True, progress=False
        )
        taken[method] = len(calls)
    base, sub = taken["baseline"], taken["subsample"]
    n, batch = records["baseline"]["split"]["sizes"]["train"], STEPS["batch_size"]
    assert base == STEPS["epochs"] * -(-n // batch)  # the last batch here holds >= 2 items
    # The subsample's steps per epoch, as observed; the epochs whose steps come closest.
    epochs = len(records["subsample"]["history"])
    per_epoch = sub // epochs
    assert sub == epochs * per_epoch and per_epoch < base // STEPS["epochs"]
    best = min(range(1, 10 * base), key=lambda e: (abs(e * per_epoch - base), -e))
    assert epochs == best and epochs > STEPS["epochs"] and abs(sub - base) <= per_epoch / 2
    assert taken["reweight"] == base
    for method in ("subsample", "reweight"):
        said = records[method]["method"][method]
        assert (said["steps"], said["baseline_steps"]) == (taken[method], base)
        assert len(records[method]["history"]) == said["epochs"]
    for method in records:  # each schedule ran over the steps actually taken, to its end
        assert records[method]["history"][-1]["lr"] == pytest.approx(_one_cycle_end(taken[method]))


def _one_cycle_end(steps: int) -> float:
    """The lr torch's OneCycleLR (as qat.train configures it) reaches after `steps` steps."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=STEPS["lr"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=STEPS["lr"], total_steps=steps, pct_start=STEPS["warmup"],
        anneal_strategy="cos", cycle_momentum=False, div_factor=25.0, final_div_factor=1e3,
    )  # fmt: skip
    for _ in range(steps):
        optimizer.step()
        schedule.step()
    return schedule.get_last_lr()[0]


def test_reweights_weights_are_capped_and_said_so():
    record = experiments.train_ser(RunConfig(method="reweight", profile="smoke-groups", seed=5),
                                   progress=False)  # fmt: skip
    said = record["method"]["reweight"]
    counts = np.array(record["groups"]["train_counts"])
    present = counts[counts > 0]
    uncapped = counts.sum() / (len(present) * present.min())  # the rarest group's weight
    assert said["largest_weight_uncapped"] == pytest.approx(uncapped)
    assert said["cap"] == robust.REWEIGHT_CAP
    rare = sum(c for c in present if counts.sum() / (len(present) * c) > robust.REWEIGHT_CAP)
    assert said["items_capped"] == rare


@pytest.mark.parametrize(
    ("loss", "predictions", "ua", "why"),
    [
        (math.log(5) + 0.049, [0, 1, 2, 3, 4] * 4, 0.9, ["training loss"]),
        (math.log(5) - 0.049, [0, 1, 2, 3, 4] * 4, 0.9, ["training loss"]),
        (math.log(5) - 0.051, [0, 1, 2, 3, 4] * 4, 0.9, []),
        (0.5, [2] * 12 + [0, 1, 3, 4] * 2, 0.9, ["test predictions"]),  # 12 of 20: 60%
        (0.5, [2] * 11 + [0, 1, 3, 4] * 2 + [0], 0.9, []),  # 11 of 20: 55%
        (0.5, [0, 1, 2, 3, 4] * 4, 0.2499, ["test UA"]),  # below 1.25 / 5
        (0.5, [0, 1, 2, 3, 4] * 4, 0.25, []),
        (math.log(5), [1] * 20, 0.2, ["training loss", "test predictions", "test UA"]),
        (None, None, 0.6, []),  # a record without loss or predictions: judged on what it has
    ],
)
def test_a_run_that_did_not_train_is_named_with_every_rule_it_breaks(loss, predictions, ua, why):
    said = experiments.training_failures(loss, predictions, ua, 5)
    assert [next(k for k in ("training loss", "test predictions", "test UA") if k in s)
            for s in said] == why  # fmt: skip
    record = {"metrics": {"ua": ua, "predictions": predictions},
              "labels": {"emotions": list("abcde")},
              "history": [] if loss is None else [{"train_loss": loss}]}  # fmt: skip
    assert experiments.training_verdict(record) == said
    # A record that says so is read as it says.
    assert (
        experiments.training_verdict({**record, "trained": True, "not_trained_because": []}) == []
    )


def test_the_random_placebo_is_the_untrained_network_frozen():
    run = RunConfig(method="at", orthogonal="random", tap="conv2_1", profile="smoke")
    data = rundata.run_data(run, progress=False)
    placebo = upstream.pretrain_orthogonal(run, data, progress=False)
    torch.manual_seed(0)
    fresh = vgg16(len(placebo.head.classifier.weight), in_channels=1,
                              width=cfg.PROFILES["smoke"]["width"])  # fmt: skip
    for (name, a), b in zip(placebo.state_dict().items(), fresh.state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    assert not placebo.training and not any(p.requires_grad for p in placebo.parameters())
    record = experiments.train_ser(run, progress=False)
    assert record["config"]["orthogonal"] == "random" and "word" in record["probe"]


def test_the_shuffled_placebo_trains_on_permuted_word_labels():
    run = RunConfig(method="cka", orthogonal="shuffled", tap="conv3_1", profile="smoke")
    record = experiments.train_ser(run, progress=False)
    assert record["config"]["orthogonal"] == "shuffled"
    from qat import runs

    networks = [r for r in runs.load_records(kind="orthogonal-shuffled-real")]
    assert networks and networks[0]["source"]["task"] == "shuffled"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"method": "dfr", "setup": "random"}, "method='dfr': expected a setup with the confound"),
        ({"method": "groupdro", "setup": "speaker"}, "setup='speaker'"),
        ({"method": "groupdro", "eta": 0.0}, "eta=0.0"),
        ({"method": "groupdro", "eta": float("inf")}, "eta=inf"),
        ({"method": "jtt", "lambda_up": 0.5}, "lambda_up=0.5"),
        ({"method": "jtt", "jtt_epochs": 0}, "jtt_epochs=0"),
        ({"method": "dann", "orthogonal": "random"}, "orthogonal='random'"),
        ({"method": "groupdro", "weight_decay": -1.0}, "weight_decay=-1.0"),
    ],
)
def test_bad_method_settings_are_refused_before_training(settings, named):
    with pytest.raises(ValueError, match="expected") as err:
        RunConfig(profile="smoke", **settings)
    assert named in str(err.value)


def test_dfr_names_a_held_out_set_too_small_for_every_group():
    with pytest.raises(ValueError, match="balanced held-out set is too small"):
        experiments.train_ser(RunConfig(method="dfr", profile="smoke"), progress=False)


def test_new_method_knobs_enter_the_key_only_for_their_method():
    base = RunConfig(profile="smoke")
    assert base.key() == RunConfig(profile="smoke", eta=0.5, lambda_up=3.0).key()
    dro = RunConfig(method="groupdro", profile="smoke")
    assert dro.key() != dro.replace(eta=0.1).key()
    assert "η=0.01" in dro.label()


def test_worst_group_selection_keeps_the_epoch_with_the_best_worst_group_validation_accuracy():
    settings = dict(cfg.PROFILES["smoke-groups"], epochs=3, patience=3)
    cfg.PROFILES["smoke-groups"] = settings
    record = experiments.train_ser(
        RunConfig(method="reweight", selection="worst_group", profile="smoke-groups"),
        progress=False,
    )
    scores = [h["val_worst_group"] for h in record["history"]]
    assert record["best_epoch"] == 1 + scores.index(max(scores))
    assert record["config"]["selection"] == "worst_group"
    assert record["method"]["selection"] == "worst-group validation accuracy"
    with pytest.raises(ValueError, match="selection='worst_group': expected a setup with"):
        RunConfig(selection="worst_group", setup="random")


def test_the_methods_page_lists_every_method_with_its_information_regime():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    for method in cfg.METHODS:
        assert f"| `{method}` |" in page and cfg.REGIMES[method] in page, method


def test_dfr_retrains_a_baseline_whose_record_came_without_its_network():
    # A committed baseline record on a fresh machine: its network is not in the cache. DFR
    # retrains it without touching the record or serving the new network as the record's,
    # and says so. (On one machine and thread count, the network comes back the same.)
    from qat import paths
    from qat.saved import model_path

    base_config = RunConfig(method="baseline", profile="smoke-groups", seed=7)
    base = experiments.train_ser(base_config, progress=False)
    records = sorted((paths.REPORTS / "runs").glob("ser-*.json"))
    written = {p: p.read_bytes() for p in records}
    model_path(base["config"]).unlink()
    record = experiments.train_ser(base_config.replace(method="dfr"), progress=False)
    retrained = record["method"]["dfr"]["baseline_network_retrained"]
    assert retrained["record_test_ua"] == base["metrics"]["ua"]
    assert retrained["test_ua"] == base["metrics"]["ua"]  # training is deterministic here
    assert record["history"] == base["history"]
    assert not model_path(base["config"]).exists()
    after = sorted((paths.REPORTS / "runs").glob("ser-*.json"))
    assert {p: p.read_bytes() for p in after if p in written} == written  # nothing rewritten
    assert len(after) == len(records) + 1  # the DFR record only


def test_dfr_with_its_baseline_network_in_the_cache_does_not_retrain():
    record = experiments.train_ser(RunConfig(method="dfr", profile="smoke-groups", seed=8),
                                   progress=False)  # fmt: skip
    assert "baseline_network_retrained" not in record["method"]["dfr"]
