"""The robustness field's methods and the placebos, end to end at a small profile: every one
trains for real and quaternion and records worst-group accuracy; the random placebo is the
untrained architecture, frozen; bad settings are refused before anything trains."""

from __future__ import annotations

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
    if method == "subsample":
        counts = [c for c in groups["train_counts"] if c]
        assert record["method"]["subsample"]["train_items"] == len(counts) * min(counts)
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
