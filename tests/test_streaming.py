"""Corpora larger than memory: a split over the memory budget is read batch by batch from the
memory-mapped feature cache, and everything computed from it equals the in-memory path's:
the same batches (bitwise), the same normaliser, the same one-epoch losses and weights, the
same RH-emo embeddings (cached on disk)."""

import numpy as np
import pytest
import torch

from qat import rundata
from qat.data.dataset import LabelSpace, Normalizer, Rows, SERDataset, StreamedInputs
from qat.data.records import EMOTIONS, Utterance
from qat.train import TrainConfig, fit


def _corpus(tmp_path, n=96, frames=12, bins=16, seed=0):
    """(memory-mapped features (n, frames, bins) with uneven bin scales, records)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, frames, bins)).astype(np.float32) * rng.uniform(0.1, 9, bins)
    np.save(tmp_path / "features.npy", x.astype(np.float32) + 3)
    records = [Utterance(path=f"/corpus/u{i}.wav", corpus="test", emotion=EMOTIONS[i % 4],
                         speaker=f"s{i % 3}", text=f"w{i % 5}") for i in range(n)]  # fmt: skip
    return np.load(tmp_path / "features.npy", mmap_mode="r"), records


def _both(tmp_path, indices=None):
    x, records = _corpus(tmp_path)
    indices = np.random.default_rng(1).permutation(len(x))[:80] if indices is None else indices
    space = LabelSpace.from_records(records)
    normalizer = Normalizer.fit(np.asarray(x[indices]))
    in_memory = SERDataset(x, records, indices, space, normalizer)
    streamed = SERDataset(x, records, indices, space, normalizer, stream=True)
    return in_memory, streamed


def test_streamed_inputs_give_the_in_memory_tensor_s_batches_bitwise(tmp_path):
    in_memory, streamed = _both(tmp_path)
    assert isinstance(streamed.x, StreamedInputs) and isinstance(in_memory.x, torch.Tensor)
    assert len(streamed.x) == len(in_memory.x) and streamed.x.shape == in_memory.x.shape
    order = torch.randperm(len(in_memory.x), generator=torch.Generator().manual_seed(3))
    for batch in (order[:16], order[16:33], order[-5:], torch.tensor([7, 7, 2])):
        assert torch.equal(streamed.x[batch], in_memory.x[batch])  # fit's shuffled batches
    for piece in (slice(0, 32), slice(64, 512), 5):
        assert torch.equal(streamed.x[piece], in_memory.x[piece])  # predict's slices, an item
    assert streamed.x[5].shape == in_memory.x[5].shape == (1, 12, 16)
    torch.testing.assert_close(streamed.labels, in_memory.labels, rtol=0, atol=0, equal_nan=True)


def test_rows_read_only_the_rows_asked_for_in_the_order_asked(tmp_path):
    x, _ = _corpus(tmp_path)
    rows = Rows(Rows(x, np.arange(10, 60)), np.array([5, 0, 30, 5]))
    assert np.array_equal(rows[np.array([2, 0, 1, 3])], np.asarray(x)[[40, 15, 10, 15]])
    assert np.array_equal(rows[1:3], np.asarray(x)[[10, 40]]) and rows.shape == (4, 12, 16)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 4),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x)


def test_one_epoch_streamed_equals_one_epoch_in_memory(tmp_path):
    in_memory, streamed = _both(tmp_path)
    split = 60
    results, weights = [], []
    for data in (in_memory, streamed):
        train, val = rundata.take(data, np.arange(split)), rundata.take(data, np.arange(split, 80))
        if data is streamed:  # take() reads a subset that fits the budget into memory: not here
            train = rundata.with_inputs(train, data.x.take(torch.arange(split)))
        torch.manual_seed(0)
        net = _Tiny()
        config = TrainConfig(epochs=1, batch_size=8, seed=4, selection="final")
        results.append(fit(net, train, val, config, progress=False)["history"])
        weights.append(net.state_dict())
    assert isinstance(train.x, StreamedInputs)  # the streamed run read its batches from disk
    assert results[0] == results[1]  # train loss, val loss, val UA: identical, not close
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_take_reads_a_subset_into_memory_when_it_fits_the_budget(tmp_path, monkeypatch):
    in_memory, streamed = _both(tmp_path)
    small = rundata.take(streamed, np.array([3, 1, 4]))
    assert isinstance(small.x, torch.Tensor) and torch.equal(small.x, in_memory.x[[3, 1, 4]])
    monkeypatch.setenv(rundata.MEMORY_VARIABLE, "1")
    large = rundata.take(streamed, np.array([3, 1, 4]))
    assert isinstance(large.x, StreamedInputs) and torch.equal(large.x[:], small.x)
    assert list(large.indices) == list(in_memory.indices[[3, 1, 4]])


@pytest.mark.parametrize(("text", "size"), [("1000", 1000), ("512M", 512 * 2**20),
                                            ("1.5G", 3 * 2**29), ("2gib", 2 * 2**30)])  # fmt: skip
def test_the_memory_budget_reads_sizes_in_binary_units(monkeypatch, text, size):
    monkeypatch.setenv(rundata.MEMORY_VARIABLE, text)
    assert rundata.memory_budget() == size


@pytest.mark.parametrize("text", ["", "0", "-1G", "lots", "8X"])
def test_an_impossible_memory_budget_is_refused_naming_the_variable(monkeypatch, text):
    monkeypatch.setenv(rundata.MEMORY_VARIABLE, text)
    with pytest.raises(ValueError, match=rf"\$QAT_MEMORY_BUDGET={text!r}: expected a size > 0"):
        rundata.memory_budget()


def test_the_default_memory_budget_is_a_share_of_ram(monkeypatch):
    import psutil

    monkeypatch.delenv(rundata.MEMORY_VARIABLE, raising=False)
    assert rundata.memory_budget() == psutil.virtual_memory().total // rundata.MEMORY_SHARE


@pytest.mark.slow
def test_a_run_s_data_over_the_budget_streams_with_the_in_memory_normaliser_and_batches(
    monkeypatch,
):
    records = rundata.load_records("synthemo", "smoke", progress=False)
    monkeypatch.delenv(rundata.MEMORY_VARIABLE, raising=False)
    held = rundata.prepare_data(records, "confounded", "smoke", seed=0, progress=False)
    monkeypatch.setenv(rundata.MEMORY_VARIABLE, "1")  # every split is over it
    streamed = rundata.prepare_data(records, "confounded", "smoke", seed=0, progress=False)
    assert np.array_equal(streamed.normalizer.mean, held.normalizer.mean)
    assert np.array_equal(streamed.normalizer.std, held.normalizer.std)
    for name in ("train", "val", "test"):
        ours, theirs = getattr(held, name), getattr(streamed, name)
        assert isinstance(ours.x, torch.Tensor) and isinstance(theirs.x, StreamedInputs)
        assert np.array_equal(ours.indices, theirs.indices)
        assert torch.equal(theirs.x[torch.arange(len(ours.x)).flip(0)], ours.x.flip(0))


def test_rhemo_embeddings_of_a_streamed_split_equal_the_in_memory_ones_and_are_cached(
    tmp_path, monkeypatch
):
    from qat import paths
    from qat.models import ENCODERS

    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")
    in_memory, streamed = _both(tmp_path, indices=np.arange(96))
    torch.manual_seed(0)
    rhemo = ENCODERS["published"].build(4, ((2, 1), (1, 1), (1, 1))).eval()
    ours = rundata.embed(rhemo, in_memory, batch_size=32)
    theirs = rundata.embed(rhemo, streamed, batch_size=32)
    assert isinstance(theirs.x, StreamedInputs) and torch.equal(theirs.x[:], ours.x)
    (cached,) = (tmp_path / "cache" / "embeddings").glob("rhemo-*.npy")

    def never(x):
        raise AssertionError("embedded again instead of read from the cache")

    monkeypatch.setattr(rhemo, "encode", never)
    again = rundata.embed(rhemo, streamed, batch_size=32)
    assert torch.equal(again.x[:], ours.x)
    assert list((tmp_path / "cache" / "embeddings").glob("rhemo-*.npy")) == [cached]
