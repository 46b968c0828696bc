"""Beyond one machine (issue 35): what Ray costs a grid, what streaming costs an epoch, and
what a GPU step costs at the paper profile.

(a) ray: the same grid of smoke runs on the local pool (2 jobs) and on Ray (a local cluster
    of this machine's CPUs, 1 CPU per run), in the order local, Ray, Ray, local, each into
    fresh records and caches (the features extracted once beforehand, shared): the grid's
    wall time on each engine, the cluster's start and stop apart; Ray's overhead per run is
    the difference of the medians over the runs; and whether the records are the same.
(b) streaming: one training epoch (fit, batch 32, a small CNN, so that reading the data is a
    large share of the step) over 10k, 40k and 160k synthetic items of the smoke profile's
    feature shape, from a memory-mapped cache file, streamed and in memory, each in a fresh
    process: peak anonymous RSS (the memory map's file pages, i.e. the page cache, aside) and
    time per item. Targets: streamed peak RSS at 160k at most 1.2x that at 10k; streamed time
    per item within 1.3x of in-memory.
(c) gpu: only where CUDA is present: the paper profile's training step (real VGG16 on STFT
    segments, quaternion VGG16 on RH-emo embeddings), without and with AT at conv1_1, fp32 and
    bf16 autocast: median step time and peak memory.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from qat.bench.common import markdown_table, publish

GRID_RUNS = 8
SIZES = (10_000, 40_000, 160_000)
QUICK_SIZES = (300, 600)
RSS_TARGET, TIME_TARGET = 1.2, 1.3
BATCH = 32
VAL_ITEMS = 512
FOLDERS = ("QAT_REPORTS", "QAT_DATA", "QAT_CACHE")
RAY_HEADER = ("engine", "grid 1 (s)", "grid 2 (s)", "median (s)", "s per run",
              "a run's own wall time (s, mean)")  # fmt: skip
STREAMING_HEADER = ("training items", "streamed peak RSS (MB)", "in-memory peak RSS (MB)",
                    "streamed us/item", "in-memory us/item", "time ratio")  # fmt: skip
GPU_HEADER = ("network", "AT tap", "precision", "step (ms)", "peak memory (MiB)")


PARTS = {"ray": "(a)", "streaming": "(b)", "gpu": "(c)"}


def run(quick: bool = False, parts=tuple(PARTS)) -> str:
    """Measure `parts` (default all) and write the section; a part not measured keeps its
    text from benchmarks.md (e.g. `python -m qat.bench.scale gpu` on a machine with a GPU)."""
    makers = {"ray": ray_section, "streaming": streaming_section, "gpu": gpu_section}
    kept = _current_parts() if set(parts) != set(PARTS) else {}
    texts = [makers[name](quick) if name in parts else kept[name] for name in PARTS]
    return publish("scale", "\n\n".join(texts), quick)


def _current_parts() -> dict[str, str]:
    """The scale section's parts as benchmarks.md has them, by name."""
    from qat.bench.common import report_path

    text = report_path().read_text() if report_path().exists() else ""
    section = text.partition("\n## scale\n")[2].partition("\n## ")[0]
    chunks = {c.split(" ", 1)[0]: "### " + c.strip() for c in section.split("### ")[1:]}
    missing = [name for name, mark in PARTS.items() if mark not in chunks]
    if missing:
        raise ValueError(f"benchmarks.md has no scale part {missing}: run all of them first")
    return {name: chunks[mark] for name, mark in PARTS.items()}


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m qat.bench.scale", description="measure some parts of the scale section"
    )
    parser.add_argument(
        "parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)"
    )
    parts = tuple(parser.parse_args(argv).parts) or tuple(PARTS)
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; expected any of {', '.join(PARTS)}")
    run(parts=parts)


# ---------------------------------------------------------------------- (a) Ray vs local


def _grid():
    from qat.config import RunConfig

    return [RunConfig(profile="smoke", seed=seed) for seed in range(GRID_RUNS)]


def _point_runs_at(root: Path, data: Path, features: Path) -> Path:
    """The workers' records and caches under `root` (they read $QAT_*), the corpus in `data`
    and the extracted features shared; returns the records folder."""
    (root / "cache").mkdir(parents=True)
    (root / "cache" / "features").symlink_to(features, target_is_directory=True)
    os.environ.update(QAT_REPORTS=str(root / "reports"), QAT_CACHE=str(root / "cache"),
                      QAT_DATA=str(data))  # fmt: skip
    return root / "reports" / "runs"


def _restore(environment: dict[str, str | None]) -> None:
    for key, value in environment.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _records(folder: Path) -> dict[str, float]:
    return {p.stem: json.loads(p.read_text())["metrics"]["ua"] for p in folder.glob("ser-*")}


def ray_section(quick: bool) -> str:
    title = "### (a) A grid of smoke runs: Ray against the local pool\n\n"
    if quick:
        return title + "Quick mode: not run (a Ray cluster takes tens of seconds to start)."
    from qat import paths, sweep
    from qat.experiments import run_configs
    from qat.rundata import run_data

    configs, before = _grid(), {k: os.environ.get(k) for k in FOLDERS}
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    outcomes, per_run = [], {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="qat-bench-scale-") as tmp:
        root = Path(tmp)
        saved = paths.DATA, paths.CACHE
        paths.DATA, paths.CACHE = root / "data", root / "warm"  # corpus and features, once
        try:
            run_data(configs[0], progress=False)
        finally:
            paths.DATA, paths.CACHE = saved
        t0 = time.perf_counter()
        with sweep.ray_cluster(num_cpus=sweep._cores()) as ray:
            started = time.perf_counter() - t0
            cpus = int(ray.cluster_resources().get("CPU", 0))
            try:
                for i, kind in enumerate(("local", "ray", "ray", "local")):
                    features = root / "warm" / "features"
                    runs = _point_runs_at(root / f"{kind}{i}", root / "data", features)
                    t = time.perf_counter()
                    run_configs(configs, jobs=2, engine=sweep.Engine(kind), desc=f"scale {kind}")
                    walls[kind].append(time.perf_counter() - t)
                    outcomes.append(_records(runs))
                    per_run[kind] += [json.loads(p.read_text())["wall_time_s"]
                                      for p in runs.glob("ser-*")]  # fmt: skip
            finally:
                _restore(before)
            t = time.perf_counter()
        stopped = time.perf_counter() - t
    same = all(o == outcomes[0] for o in outcomes) and len(outcomes[0]) == GRID_RUNS
    local, on_ray = statistics.median(walls["local"]), statistics.median(walls["ray"])
    rows = [
        ["local pool, 2 jobs", *walls["local"], local, local / GRID_RUNS,
         statistics.fmean(per_run["local"])],
        [f"Ray, local cluster ({cpus} CPUs), 1 CPU per run", *walls["ray"], on_ray,
         on_ray / GRID_RUNS, statistics.fmean(per_run["ray"])],
    ]  # fmt: skip
    load = os.getloadavg()[0]
    return (
        title
        + f"{GRID_RUNS} smoke baseline runs (seeds 0-{GRID_RUNS - 1}, 2 at a time), in the order "
        "local, Ray, Ray, local, each grid into fresh records and caches (features extracted "
        "once before); the Ray grids run on one cluster, started and stopped apart.\n\n"
        + markdown_table(RAY_HEADER, rows)
        + f"\n\nRay's overhead per run: {(on_ray - local) / GRID_RUNS:+.2f} s (the difference "
        f"of the medians over {GRID_RUNS} runs); starting the cluster took {started:.1f} s and "
        f"stopping it {stopped:.1f} s, once per grid when `--engine ray` starts its own. "
        f"Records the same on both engines (keys and test UA): {'yes' if same else 'NO'}. "
        f"1-min load average at the end: {load:.1f} on {os.cpu_count()} CPUs (other jobs "
        "shared the machine)."
    )


# -------------------------------------------------------------------- (b) streaming


def _anon_rss_mb() -> float:
    """This process's anonymous resident memory (file-backed pages, e.g. a memory map's, are
    the page cache's and not counted)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _small_cnn(classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, classes),
    )  # fmt: skip


def measure_epoch(path: str, stream: bool) -> dict:
    """One training epoch over every item of the cache file at `path`, streamed or copied into
    memory: seconds per item and the peak anonymous RSS (MB) from loading to the epoch's end,
    sampled every 5 ms."""
    from qat.data.dataset import LabelSpace, Normalizer, SERDataset
    from qat.data.records import EMOTIONS, Utterance
    from qat.train import TrainConfig, fit

    peak, done = [_anon_rss_mb()], threading.Event()

    def sample():
        while not done.wait(0.005):
            peak.append(max(peak[-1], _anon_rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    torch.set_num_threads(1)
    x = np.load(path, mmap_mode="r")
    n = len(x) - VAL_ITEMS
    records = [Utterance(path=f"/synthetic/u{i:06d}.wav", corpus="synthetic",
                         emotion=EMOTIONS[i % 4], speaker=f"s{i % 12}", text=f"w{i % 40}")
               for i in range(len(x))]  # fmt: skip
    space = LabelSpace.from_records(records)
    train_idx = np.arange(n)
    normalizer = Normalizer.fit(x, train_idx)
    train = SERDataset(x, records, train_idx, space, normalizer, stream=stream)
    val = SERDataset(x, records, np.arange(n, len(x)), space, normalizer)
    torch.manual_seed(0)
    net = _small_cnn(len(space.emotions))
    t = time.perf_counter()
    history = fit(net, train, val, TrainConfig(epochs=1, batch_size=BATCH, selection="final"),
                  progress=False)["history"]  # fmt: skip
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    return {"items": n, "s_per_item": seconds / n, "peak_anon_mb": max(peak),
            "train_loss": history[0]["train_loss"]}  # fmt: skip


def _write_items(path: Path, n: int, shape: tuple[int, int]) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *shape))
    rng = np.random.default_rng(0)
    for i in range(0, n, 8192):
        out[i : i + 8192] = rng.standard_normal((min(8192, n - i), *shape), dtype=np.float32)
    out.flush()
    del out


def _in_child(path: str, stream: bool) -> dict:
    """measure_epoch in a fresh Python: its peak memory is this epoch's alone."""
    code = ("import json, sys; from qat.bench.scale import measure_epoch; "
            "print(json.dumps(measure_epoch(sys.argv[1], sys.argv[2] == 'stream')))")  # fmt: skip
    mode = "stream" if stream else "memory"
    done = subprocess.run([sys.executable, "-c", code, path, mode], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def streaming_section(quick: bool) -> str:
    from qat.config import PROFILES
    from qat.data.features import FeatureConfig

    shape = FeatureConfig(**PROFILES["smoke"]["features"]).shape
    sizes = QUICK_SIZES if quick else SIZES
    results = {}
    with tempfile.TemporaryDirectory(prefix="qat-bench-stream-") as tmp:
        for n in sizes:
            path = Path(tmp) / f"items-{n}.npy"
            _write_items(path, n + VAL_ITEMS, shape)
            for stream in (True, False):  # quick: in this process, a smoke test only
                measure = measure_epoch if quick else _in_child
                results[n, stream] = measure(str(path), stream)
            path.unlink()
    rows = []
    for n in sizes:
        s, m = results[n, True], results[n, False]
        rows.append([n, s["peak_anon_mb"], m["peak_anon_mb"], s["s_per_item"] * 1e6,
                     m["s_per_item"] * 1e6, s["s_per_item"] / m["s_per_item"]])  # fmt: skip
    same = all(results[n, True]["train_loss"] == results[n, False]["train_loss"] for n in sizes)
    first, last = results[sizes[0], True], results[sizes[-1], True]
    rss_ratio = last["peak_anon_mb"] / first["peak_anon_mb"]
    worst_time = max(results[n, True]["s_per_item"] / results[n, False]["s_per_item"]
                     for n in sizes)  # fmt: skip
    item_kib = int(np.prod(shape)) * 4 / 1024
    return (
        "### (b) Streaming from the memory-mapped cache\n\n"
        f"Synthetic items of the smoke features' shape ({shape[0]} x {shape[1]}, {item_kib:g} KiB "
        f"as float32) in one cache file; one epoch of fit (batch {BATCH}, a 2-conv CNN, 1 "
        f"thread; {VAL_ITEMS} validation items in memory), streamed and in memory, each in a "
        "fresh process. Peak RSS: anonymous memory only (the memory map's pages are the page "
        "cache's); it includes the items' records (Utterance objects).\n\n"
        + markdown_table(STREAMING_HEADER, rows)
        + f"\n\nStreamed peak RSS at {sizes[-1]:,} items / at {sizes[0]:,}: {rss_ratio:.2f}x "
        f"(target <= {RSS_TARGET}x: {'met' if rss_ratio <= RSS_TARGET else 'NOT met'}); "
        f"streamed time per item / in-memory, worst size: {worst_time:.2f}x (target <= "
        f"{TIME_TARGET}x: {'met' if worst_time <= TIME_TARGET else 'NOT met'}). The epoch's "
        f"training loss is the same streamed and in memory at every size: "
        f"{'yes' if same else 'NO'}. The file was just written, so its pages were in the page "
        "cache: this is the CPU cost of reading batches, not the disk's."
    )


# ------------------------------------------------------------------------ (c) GPU


def gpu_rows(device: str, profile: str = "paper", batch: int | None = None,
             repeats: int = 10) -> list[list]:  # fmt: skip
    """[network, AT, precision, step ms, peak memory MiB] for the profile's real and quaternion
    VGG16, without and with AT at conv1_1 (a frozen network of the same architecture), in fp32
    and under bf16 autocast (AT's Gram in float32), on random inputs of the profile's shapes."""
    from qat.antitransfer import AntiTransfer
    from qat.config import PROFILES
    from qat.data.features import FeatureConfig
    from qat.models import ENCODERS, vgg16
    from qat.resources import median_step_time, peak_step_memory
    from qat.train import Step, TrainConfig, make_optimizer

    p = PROFILES[profile]
    batch = batch or p["batch_size"]
    frames, bins = FeatureConfig(**p["features"]).shape
    rhemo = ENCODERS["published"].build(4, p["rhemo_pools"]).eval()
    with torch.no_grad():
        embedding = tuple(rhemo.encode(torch.zeros(1, 1, frames, bins)).shape[1:])
    inputs = {"real": (1, frames, bins), "quaternion": embedding}
    rows = []
    for model, shape in inputs.items():
        for with_at in (False, True):
            for precision in ("fp32", "bf16"):
                torch.manual_seed(0)
                build = dict(num_classes=4, in_channels=shape[0], quaternion=model == "quaternion",
                             width=p["width"])  # fmt: skip
                net = vgg16(**build).to(device)
                at = AntiTransfer(vgg16(**build), "conv1_1") if with_at else None
                config = TrainConfig(batch_size=batch, device=device)
                step = Step(net, make_optimizer(net, config), config, at)
                x = torch.randn(batch, *shape, device=device)
                labels = {"emotion": torch.randint(0, 4, (batch,), device=device)}
                autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                          enabled=precision == "bf16")  # fmt: skip

                def call(step=step, x=x, labels=labels, autocast=autocast):
                    with autocast:
                        step(x, labels)

                call()  # optimizer state exists before memory is measured
                memory = peak_step_memory(call, device) / 2**20
                seconds = median_step_time(call, warmup=2, repeats=repeats, device=device)
                rows.append([model, "conv1_1" if with_at else "none", precision,
                             seconds * 1e3, memory])  # fmt: skip
    return rows


def gpu_section(quick: bool) -> str:
    title = "### (c) The paper profile's step on a GPU\n\n"
    if not torch.cuda.is_available():
        return title + ("Not run: no CUDA device on this machine (torch "
                        f"{torch.__version__}). `python -m qat.bench scale` runs it where one "
                        "is present.")  # fmt: skip
    device = "cuda"
    rows = gpu_rows(device, "smoke" if quick else "paper", repeats=2 if quick else 10)
    name = torch.cuda.get_device_name(0)
    return (
        title + f"Device: {name} (torch {torch.__version__}, CUDA {torch.version.cuda}); the "
        "paper profile (full-width VGG16, 4 s STFT segments, batch 20), random inputs; the "
        "step (forward, losses, backward, Adam) runs under autocast for bf16, AT's Gram in "
        "float32; median of 10 steps after 2, peak memory by torch.cuda.max_memory_allocated."
        "\n\n" + markdown_table(GPU_HEADER, rows)
    )


if __name__ == "__main__":
    main()
