"""Faults: a training process killed mid-epoch, a corrupted or half-built feature cache, a
full disk or a blocked reports folder, concurrent record writers, a notebook that fails.

Each test provokes the fault for real where that is cheap (SIGKILL, corrupted bytes, parallel
processes, a raising cell) and simulates it by monkeypatching where it is not (a full disk).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from corpus_fixtures import build_emodb
from papermill.exceptions import PapermillExecutionError
from test_train import small_net, toy_data, weights_equal

from qat import io, notebooks, runs
from qat.data import features as F
from qat.data.corpora import load_corpus
from qat.data.features import FeatureConfig, extract_features
from qat.train import TrainConfig, evaluate, fit

TESTS = Path(__file__).resolve().parent


def no_space(*_args, **_kwargs):
    """What the kernel says when the disk is full."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _spawn(script: Path, *args, log: Path) -> subprocess.Popen:
    """A child Python running `script`, its output in `log` (read back when it fails)."""
    with open(log, "w") as fh:
        return subprocess.Popen(
            [sys.executable, str(script), *map(str, args)], stdout=fh, stderr=subprocess.STDOUT
        )


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    code = proc.wait(timeout=timeout)
    assert code == 0, f"child exited with {code}:\n{log.read_text()[-3000:]}"


# --------------------------------------------------------------------- killed training run

TRAINING_CHILD = """
import sys, time
from pathlib import Path

import torch

sys.path.insert(0, {tests!r})
from test_train import small_net, toy_data

from qat.train import Step, TrainConfig, evaluate, fit

mode, checkpoint, result, marker = sys.argv[1:5]
torch.set_num_threads(1)  # same arithmetic in every child, and polite to the shared cores
train, val = toy_data(48, 1), toy_data(16, 2)
config = TrainConfig(epochs=3, batch_size=16, lr=1e-3, patience=10, seed=3)  # 3 steps/epoch

if mode == "killed":
    original, calls = Step.__call__, [0]

    def step_then_hang(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 5:  # epoch 2, step 2 of 3: in-memory weights are past the checkpoint
            Path(marker).write_text("mid-epoch")
            time.sleep(600)  # wait here for SIGKILL
        return out

    Step.__call__ = step_then_hang

net = small_net(seed=99 if mode == "resume" else 0)  # the resumed run must not rely on init
out = fit(net, train, val, config, checkpoint=checkpoint or None, progress=False)
torch.save({{"out": out, "weights": net.state_dict(), "metrics": evaluate(net, val)}}, result)
"""


def _wait_for(marker: Path, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"child ended before mid-epoch:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "child never reached the middle of epoch 2"
        time.sleep(0.05)


def test_training_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    script = tmp_path / "train_child.py"
    script.write_text(TRAINING_CHILD.format(tests=str(TESTS)))
    ckpt, marker = tmp_path / "run.ckpt", tmp_path / "mid-epoch"
    children = []

    def start(mode: str, checkpoint: Path | str = "", wait_file: Path | str = ""):
        log = tmp_path / f"{mode}.log"
        children.append(
            _spawn(script, mode, checkpoint, tmp_path / f"{mode}.pt", wait_file, log=log)
        )
        return children[-1], log

    try:
        reference = start("reference")  # uninterrupted, no checkpoint, in parallel
        killed, killed_log = start("killed", ckpt, marker)
        _wait_for(marker, killed, killed_log)
        assert torch.load(ckpt, weights_only=True)["state"]["epoch"] == 1
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        assert not (tmp_path / "killed.pt").exists()
        assert not list(tmp_path.glob("*.tmp")), "a checkpoint write was left half done"
        resume = start("resume", ckpt)
        _finish(*reference)
        _finish(*resume)
    finally:
        for child in children:  # only the children this test started, and only if still alive
            if child.poll() is None:
                child.kill()
                child.wait()
    ref = torch.load(tmp_path / "reference.pt", weights_only=False)
    got = torch.load(tmp_path / "resume.pt", weights_only=False)
    assert len(ref["out"]["history"]) == 3
    assert got["out"].pop("resumed_from_epoch") == 1 and ref["out"].pop("resumed_from_epoch") == 0
    got["out"].pop("timings_s"), ref["out"].pop("timings_s")  # time differs between runs
    assert got["out"] == ref["out"]  # history (every loss, bit for bit), best epoch, best loss
    assert ref["weights"].keys() == got["weights"].keys()
    assert all(torch.equal(ref["weights"][k], got["weights"][k]) for k in ref["weights"])
    assert got["metrics"] == ref["metrics"]


@pytest.fixture
def one_thread():
    """In-process training on one thread: on a busy 2-core machine two threads contend with
    other jobs and run ten times slower (the children set the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "failure",
    [
        # What torch.save really raises when the disk fills (seen on a 64 KiB tmpfs).
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    ],
    ids=["torch-writer-error", "ENOSPC"],
)
def test_checkpoint_write_failure_names_the_file_and_keeps_the_last_good_one(
    tmp_path, monkeypatch, failure, one_thread
):
    train, val = toy_data(48, 1), toy_data(16, 2)
    config = TrainConfig(epochs=2, batch_size=16, patience=10, seed=3)
    ckpt = tmp_path / "run.ckpt"
    fit(small_net(), train, val, TrainConfig(**{**vars(config), "epochs": 1}), checkpoint=ckpt,
        progress=False)  # fmt: skip
    good = ckpt.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 the first bytes of a zip")  # what a full disk leaves
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", disk_full)
        with pytest.raises(OSError, match=re.escape(str(ckpt))):
            fit(small_net(), train, val, config, checkpoint=ckpt, progress=False)
    assert ckpt.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"], "partial file left"

    resumed, uninterrupted = small_net(seed=99), small_net()
    out = fit(resumed, train, val, config, checkpoint=ckpt, progress=False)
    ref = fit(uninterrupted, train, val, config, progress=False)
    assert (out.pop("resumed_from_epoch"), ref.pop("resumed_from_epoch")) == (1, 0)
    out.pop("timings_s"), ref.pop("timings_s")  # time differs between runs
    assert out == ref and weights_equal(resumed, uninterrupted)
    assert evaluate(resumed, val) == evaluate(uninterrupted, val)


# --------------------------------------------------------------------------- feature cache

SMALL_FEATURES = FeatureConfig(kind="logmel", segment_seconds=0.1, n_mels=16)


@pytest.fixture
def records(tmp_path):
    build_emodb(tmp_path / "emodb")
    return load_corpus("emodb", tmp_path / "emodb")


def _extract(records, cache: Path):
    return extract_features(records, SMALL_FEATURES, cache, workers=1, progress=False)


def _count_audio_reads(monkeypatch) -> list[str]:
    reads, real = [], F._load

    def counting(path, sample_rate):
        reads.append(path)
        return real(path, sample_rate)

    monkeypatch.setattr(F, "_load", counting)
    return reads


def _flip_one_bit_mid_file(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one float's low mantissa bit: a plausible silent corruption
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:16] = b"\x00" * 16
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_flip_one_bit_mid_file, _truncate, _damage_header])
def test_corrupted_feature_cache_is_detected_by_checksum_and_rebuilt(
    records, tmp_path, monkeypatch, corrupt
):
    cache = tmp_path / "cache"
    first = _extract(records, cache)
    good = np.array(first.x)
    assert np.abs(good).max() > 0  # real features, not zeros
    corrupt(first.path)
    assert (
        F._sha256_file(first.path)
        != json.loads(first.path.with_suffix(".json").read_text())["sha256"]
    )
    reads = _count_audio_reads(monkeypatch)
    with pytest.warns(UserWarning, match=r"does not match its checksum \(corrupted\); rebuilding"):
        rebuilt = _extract(records, cache)
    assert len(reads) == len(records)  # every file extracted again
    np.testing.assert_array_equal(rebuilt.x, good)
    sidecar = json.loads(rebuilt.path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == F._sha256_file(rebuilt.path)
    reads.clear()
    again = _extract(records, cache)  # now a plain cache hit
    assert reads == []
    np.testing.assert_array_equal(again.x, good)
    assert _kept(cache) == [".json", ".npy"]


def test_cache_build_interrupted_before_its_sidecar_is_rebuilt_not_trusted(
    records, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    reference = np.array(_extract(records, tmp_path / "reference").x)
    with monkeypatch.context() as patch:

        def killed(path, text):
            raise KeyboardInterrupt  # as if the run were stopped between the two writes

        patch.setattr(F, "_write_text_atomic", killed)
        with pytest.raises(KeyboardInterrupt):
            _extract(records, cache)
    assert _kept(cache) == [".npy"]  # the array, and no sidecar
    reads = _count_audio_reads(monkeypatch)
    rebuilt = _extract(records, cache)
    assert len(reads) == len(records)
    np.testing.assert_array_equal(rebuilt.x, reference)


def test_full_disk_while_building_the_feature_cache_is_an_error_not_a_crash(
    records, tmp_path, monkeypatch
):
    """The cache is written through a memory map, and a page that cannot be allocated on a
    full disk kills the process with SIGBUS: no message, no cleanup (reproduced on a 64 KiB
    tmpfs: exit code 135, a 2.6 MB .tmp left behind). Reserving the file's space first
    (os.posix_fallocate) turns that into an ordinary ENOSPC; here the reservation fails."""

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match=re.escape(str(cache))):
        _extract(records, cache)
    assert _kept(cache) == []


def _kept(cache) -> list[str]:
    """The suffixes of what a build left in the cache, beside its (empty) lock file."""
    return sorted(p.suffix for p in cache.iterdir() if p.suffix != ".lock")


# ---------------------------------------------------------------------- run records: disk

CONFIG = {"method": "at", "tap": "conv2_1", "beta": 1.0}


@pytest.mark.parametrize("blocked", ["reports", "reports/runs"])
def test_a_file_where_the_reports_folder_should_be_is_named_and_nothing_is_written(
    tmp_path, blocked
):
    (tmp_path / blocked).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / blocked).write_text("a file, not a folder")
    path = runs.record_path("ser", CONFIG, reports=tmp_path / "reports")
    with pytest.raises(OSError, match=rf"{re.escape(blocked)} is a file; expected a folder"):
        io.write_json_once(path, {"ua": 0.5})
    assert (tmp_path / blocked).read_text() == "a file, not a folder"
    assert not path.exists()


class _FullDiskFile:
    """A file object whose write stores half the text, then fails as on a full disk."""

    def __init__(self, fh):
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, text):
        self.fh.write(text[: len(text) // 2])
        self.fh.flush()
        no_space()

    def flush(self):
        self.fh.flush()

    def fileno(self):
        return self.fh.fileno()


def _fail_write(patch):
    real = os.fdopen
    patch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDiskFile(real(fd, *a, **k)))


def _fail_fsync(patch):
    patch.setattr(os, "fsync", no_space)


def _fail_link(patch):
    patch.setattr(os, "link", no_space)


@pytest.mark.parametrize("fail", [_fail_write, _fail_fsync, _fail_link], ids=lambda f: f.__name__)
def test_full_disk_gives_a_clear_error_and_no_partial_run_record(tmp_path, monkeypatch, fail):
    path = runs.record_path("ser", CONFIG, reports=tmp_path)
    payload = {"config": CONFIG, "history": [{"epoch": i, "val_loss": 1.0 / (i + 1)} for i in
               range(50)]}  # fmt: skip
    with monkeypatch.context() as patch:
        fail(patch)
        with pytest.raises(OSError, match=rf"{re.escape(str(path))}: No space left on device"):
            io.write_json_once(path, payload)
    assert os.listdir(path.parent) == []  # neither the record nor a temporary file
    io.write_json_once(path, payload)  # space is back: the same record can now be written
    assert runs.load_record(path) == payload


# ------------------------------------------------------------------ run records: concurrency

WRITER_CHILD = """
import json, sys, time
from pathlib import Path

from qat import io, runs

reports, go, me, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
Path(f"{go}.ready-{me}").touch()
while not go.exists():
    time.sleep(0.001)
won = []
for k in range(n):
    path = runs.record_path("ser", {"k": k}, reports=reports)
    try:
        io.write_json_once(path, {"config": {"k": k}, "writer": me, "payload": [me] * 20000})
        won.append(k)
    except FileExistsError:
        pass
print(json.dumps(won))
"""


def test_concurrent_writers_of_the_same_records_never_overwrite_each_other(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER_CHILD)
    reports, go, n, writers = tmp_path / "reports", tmp_path / "go", 40, ("w0", "w1", "w2")
    procs = {
        me: subprocess.Popen(
            [sys.executable, str(script), str(reports), str(go), me, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in writers
    }
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.ready-{me}").exists() for me in writers):
        assert time.monotonic() < deadline, "writers did not start"
        time.sleep(0.02)
    go.touch()  # all writers start at once, on the same 40 record names
    won = {}
    for me, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        won[me] = json.loads(out)
    winners = [k for keys in won.values() for k in keys]
    assert sorted(winners) == list(range(n))  # every record written exactly once
    for me, keys in won.items():
        for k in keys:
            record = runs.load_record(runs.record_path("ser", {"k": k}, reports=reports))
            # whole, and its own
            assert record == {"config": {"k": k}, "writer": me, "payload": [me] * 20000}
    assert len(os.listdir(reports / "runs")) == n  # no temporary files left


# ---------------------------------------------------------------------- failing notebook


def _notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("x = 1")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell(body)]
    kernel = {"name": notebooks.KERNEL, "display_name": "qat", "language": "python"}
    nb.metadata["kernelspec"] = kernel
    nbformat.write(nb, path)
    return path


def test_failing_notebook_leaves_no_half_written_executed_notebook(tmp_path):
    failing = _notebook(tmp_path / "failing.ipynb", "raise RuntimeError(f'cell failed, x={x}')")
    out = tmp_path / "reports" / "failing-x_7.ipynb"
    with pytest.raises(
        PapermillExecutionError, match="cell failed, x=7"
    ):  # the cell's error reaches the caller
        notebooks.run_notebook(failing, {"x": 7}, out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "a partial executed notebook was left behind"

    earlier = tmp_path / "reports" / "earlier.ipynb"  # a good report from an earlier run
    earlier.write_text("earlier report")
    with pytest.raises(PapermillExecutionError, match="cell failed"):
        notebooks.run_notebook(failing, {"x": 8}, earlier)
    assert earlier.read_text() == "earlier report"

    working = _notebook(tmp_path / "working.ipynb", "print('x is', x)")
    done = notebooks.run_notebook(working, {"x": 9}, tmp_path / "reports" / "working.ipynb")
    outputs = nbformat.read(done, as_version=4).cells[-1].outputs
    assert outputs[0]["text"] == "x is 9\n"
