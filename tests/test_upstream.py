"""The networks a run stands on are named by their weights: a network retrained under an older
record (a lost cache) is warned about when it is trained, and the report names the runs that
stood on it."""

from __future__ import annotations

import hashlib
from unittest import mock

import pytest
import torch

from qat import paths, runs, tables, upstream


def test_the_weights_digest_is_sha256_of_names_and_bytes_and_sees_one_changed_value():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        h.update(name.encode() + tensor.numpy().tobytes())
    assert upstream.weights_digest(net) == h.hexdigest()[:16]
    with torch.no_grad():
        net[0].weight[1, 2] += 1e-6
    assert upstream.weights_digest(net) != h.hexdigest()[:16]


def _train(seed):
    def train_fn(net, checkpoint):
        torch.manual_seed(seed)
        with torch.no_grad():
            net.weight.normal_()
        return {}

    return train_fn


def test_a_network_retrained_under_its_record_is_warned_about_and_its_runs_named(tmp_path):
    config = {"case": "lost cache"}
    build = lambda: torch.nn.Linear(4, 2)  # noqa: E731
    with mock.patch.object(paths, "CACHE", tmp_path / "cache"), \
         mock.patch.object(paths, "REPORTS", tmp_path / "reports"):  # fmt: skip
        first, path = upstream._cached_network("rhemo", config, build, _train(1))
        assert upstream.source_of(first) == {
            "record": path.stem,
            "weights": upstream.weights_digest(first),
        }
        record = runs.load_record(runs.record_path("rhemo", config))
        assert record["weights_digest"] == upstream.weights_digest(first)
        path.unlink()  # the cache is lost; the record stays
        with pytest.warns(UserWarning, match="retrained; its record"):
            second, _ = upstream._cached_network("rhemo", config, build, _train(2))
        again, _ = upstream._cached_network("rhemo", config, build, _train(3))  # from the cache
        assert upstream.source_of(again) == upstream.source_of(second)
    network = {**record, "kind": "rhemo"}
    old = {
        "kind": "ser",
        "config": {"seed": 1},
        "upstream_weights": {"rhemo": upstream.source_of(first)},
    }
    new = {
        "kind": "ser",
        "config": {"seed": 2},
        "upstream_weights": {"rhemo": upstream.source_of(second)},
    }
    before = {"kind": "ser", "config": {"seed": 3}}  # from before weights were recorded
    undated = {k: v for k, v in network.items() if k != "weights_digest"}
    assert tables.unrecorded_weights([network, old, new, before]) == [tables.record_id(new)]
    assert tables.unrecorded_weights([undated, old, new, before]) == []
    assert "1 run(s) stood on network weights" in tables.upstream_markdown([network, old, new])


def test_parallel_runs_that_need_the_same_network_train_it_once(tmp_path, monkeypatch):
    from process_tools import train_a_shared_network

    from qat import sweep

    monkeypatch.setenv("QAT_CACHE", str(tmp_path / "cache"))  # the workers' paths
    monkeypatch.setenv("QAT_REPORTS", str(tmp_path / "reports"))
    digests = sweep.run_grid([str(tmp_path)] * 2, train_a_shared_network, jobs=2)
    assert len((tmp_path / "trainings").read_text().split()) == 1
    assert digests[0] == digests[1]  # the waiting run loaded the network the other trained
