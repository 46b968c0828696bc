"""A whole run, the kit's current path and its bfloat16 setting against the eager path (issue
33): one real baseline run and one quaternion baseline run of the "cpu" profile, each trained
end to end by qat.experiments.train_ser (data, features, fit, final evaluation, step cost,
probes), on the three paths (PATHS) in interleaved rounds of random order in this one process.

The eager path is the code before issue 33's run-level changes, emulated here by patching
module attributes for the duration of its runs (nothing else differs; see `eager_path`):

- evaluation: qat.train.predict at batch 64 (its default before commit ea1db2c; not the
  training batch, 32) under torch.no_grad, instead of one batch-512 inference_mode pass per
  set, wherever the run evaluates (validation, the monitored test items, the final test set,
  the selection set); and fit's per-epoch validation scores
  read the worst-group accuracy from a second, separate pass over the validation set, as
  before, instead of from the same logits as the loss and UA;
- layout: the real VGG16 built contiguous (qat.models.REAL_LAYOUT = torch.contiguous_format)
  instead of channels-last.

The quaternion step is the same on the eager and new paths (no quaternion step change has
been adopted), so those two of its runs differ in evaluation only.

The bf16 path is the new path with the run's config `.replace(precision="bf16")` (the kit's
existing RunConfig setting, nothing patched): every forward pass of the training step (so also
the step cost's step) and of evaluation (validation, monitored test items, final test set) runs
under torch.autocast bfloat16 on the CPU (qat.train.autocast), convolutions and matmuls in
bfloat16, the quaternion network's too (its convolutions are conv2d on an assembled real
weight); weights, optimiser, the loss and the returned logits stay float32, AT's Gram and
CKA stay float32 (qat.antitransfer switches autocast off around them), the invariance probes
and the selection set's pass run float32 as on the new path, and the record key includes
precision="bf16" (a record of its own; the RH-emo and features are the same). Its numerics
differ from float32 by design, so the issue's numerics test (the same loss and gradients
within float32 tolerance) does not apply to it: its criterion is the UA one (paired over at
least 3 seeds), which a one-seed bench cannot establish and the page does not claim (it says
so). bfloat16 is fast only where the CPU has native bfloat16 dot products (avx512_bf16 or
amx_bf16); the page records torch's CPU capability and those flags (`bf16_support`).

Bench size: the profile's data, network, batch and recipe, but BENCH_EPOCHS epochs instead of
the profile's (stated in the output; the epochs' pieces are also projected to the profile's
epochs, an extrapolation). The networks a run stands on (RH-emo) and the feature cache are
prepared once before the rounds and shared; everything a run writes (record, split, model,
checkpoint, cached step cost) goes to a scratch folder, so every run measures its step cost
afresh and nothing lands in reports/runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from qat import experiments, metrics, models, paths, train
from qat.bench.antitransfer import load_note
from qat.bench.common import markdown_table, publish
from qat.config import PROFILES, RunConfig
from qat.rundata import attach_groups, run_data

BENCH_EPOCHS, ROUNDS, WARMUP_ROUNDS = 2, 3, 1
QUICK_EPOCHS, QUICK_ROUNDS = 1, 1  # no warm-up
EAGER_EVAL_BATCH = 64  # qat.train.predict's default batch before EVAL_BATCH (commit ea1db2c)
TARGET_SPEEDUP = 1.5  # eager / new (and eager / bf16) end to end
PATHS = ("eager", "new", "bf16")  # the first is the reference of every ratio
COMPARED = PATHS[1:]
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The split and upstream design whose RH-emo is in the cache here (training one takes 10-30
# min; if it is missing it is trained once, before the rounds, and not timed).
RUN_SETTINGS = dict(method="baseline", setup="unconfounded", seed=0, fold=0, upstream="careful")
QUICK_SETTINGS = dict(method="baseline", setup="unconfounded", seed=0, profile="smoke")
# What a record's timings_s split into: (piece, the timings_s keys summed).
PIECES = (
    ("data", ("prepare",)),
    ("step", ("train_steps",)),
    ("evaluation", ("train_evaluation", "evaluate")),
    ("cost", ("step_cost",)),
    ("probe", ("probe",)),
)


def configs(quick: bool) -> dict[str, RunConfig]:
    """The two runs the bench times, by name."""
    settings = QUICK_SETTINGS if quick else {**RUN_SETTINGS, "profile": "cpu"}
    return {f"{model} baseline": RunConfig(model=model, **settings)
            for model in ("real", "quaternion")}  # fmt: skip


def bf16_support() -> dict:
    """torch's CPU capability string, the CPU's native bfloat16 flags (/proc/cpuinfo, else
    lscpu) and whether any was found; oneDNN's own bf16 check where torch has it."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    if not text:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    words = set(text.split())
    flags = [f for f in NATIVE_BF16_FLAGS if f in words]
    onednn = None
    with contextlib.suppress(AttributeError, RuntimeError):
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return {"capability": torch.backends.cpu.get_cpu_capability(), "flags": flags,
            "native": bool(flags), "onednn_bf16": onednn}  # fmt: skip


def bf16_line(support: dict) -> str:
    """What the page says about bfloat16 on this machine."""
    found = ", ".join(support["flags"]) or f"none of {', '.join(NATIVE_BF16_FLAGS)}"
    onednn = {None: "unknown", True: "yes", False: "no"}[support["onednn_bf16"]]
    head = (f"bfloat16 on this machine: torch CPU capability {support['capability']}, CPU "
            f"flags {found}, oneDNN bf16 supported: {onednn}")  # fmt: skip
    if support["native"]:
        return head + " (native bfloat16 dot products)."
    return (
        head + ". **bfloat16 is not native on this CPU** (emulated through float32): the "
        "bf16 path's times here say nothing about a CPU that has it."
    )


def path_config(config: RunConfig, path: str) -> RunConfig:
    """The run's config on a path: bf16 is the new path's with precision="bf16"."""
    return config.replace(precision="bf16") if path == "bf16" else config


@contextmanager
def patched(target, **values) -> Iterator[None]:
    """Set attributes of a module (or object) for the duration of a block, then restore them."""
    before = {name: getattr(target, name) for name in values}
    for name, value in values.items():
        setattr(target, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(target, name, value)


@torch.no_grad()
def eager_predict(model, x, batch_size: int = EAGER_EVAL_BATCH, precision: str = "fp32"):
    """qat.train.predict as it was: eval mode, no_grad, batches of 64 (autocast kept, so a
    bf16 run would still be bf16; the bench runs fp32)."""
    model.eval()
    device = next(model.parameters()).device
    with train.autocast(precision, device):
        return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(x), batch_size)])  # fmt: skip


def eager_scores(model, data, target: str, precision: str = "fp32") -> dict[str, float]:
    """qat.train._scores as it was: loss and UA from one pass, the worst-group accuracy (where
    the items have group labels) from a second pass over the same set."""
    logits = eager_predict(model, data.x, precision=precision)
    y = data.labels[target]
    loss = float(F.cross_entropy(logits, y))
    if not math.isfinite(loss):
        raise train.NonFiniteLossError(f"loss is {loss}")
    out = {"loss": loss, "ua": metrics.unweighted_accuracy(y.numpy(), logits.argmax(1).numpy())}
    if "group" in data.labels:
        pred = eager_predict(model, data.x, precision=precision).argmax(1).numpy()
        out["worst_group"] = metrics.worst_group_accuracy(y.numpy(), pred,
                                                          data.labels["group"].numpy())  # fmt: skip
    return out


@contextmanager
def eager_path() -> Iterator[None]:
    """The code as it ran before issue 33's run-level changes (module docstring): contiguous
    real VGG16, evaluation at batch 64 with the worst group in its own pass."""
    with (
        patched(models, REAL_LAYOUT=torch.contiguous_format),
        patched(train, predict=eager_predict, _scores=eager_scores),
        patched(experiments, predict=eager_predict),  # it imported predict by name
    ):
        yield


@contextmanager
def bench_epochs(epochs: int) -> Iterator[None]:
    """Every run's recipe with `epochs` epochs (the profile and record key stay as they are, so
    the cached RH-emo is the one the profile's runs read)."""
    profile_recipe = experiments.train_config

    def recipe(*args, **kwargs):
        return dataclasses.replace(profile_recipe(*args, **kwargs), epochs=epochs)

    with patched(experiments, train_config=recipe):
        yield


@contextmanager
def scratch_folders() -> Iterator[Path]:
    """Reports and cache in a temporary folder for the bench's runs, with the shared caches
    (features, upstream networks, embeddings) linked from the real cache."""
    cache_root = paths.CACHE
    with tempfile.TemporaryDirectory(prefix="qat-bench-run-") as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        for shared in ("features", "networks", "embeddings"):
            (cache_root / shared).mkdir(parents=True, exist_ok=True)
            (cache / shared).symlink_to(cache_root / shared, target_is_directory=True)
        with patched(paths, CACHE=cache, REPORTS=Path(tmp) / "reports"):
            yield Path(tmp)


def prepare(config: RunConfig) -> None:
    """Build (or load) the run's data, features and RH-emo once, untimed."""
    data = run_data(config, progress=False)
    if config.confounded:
        attach_groups(data)
    if config.reads_rhemo:
        print(f"preparing RH-emo for {config.label()} (trained once if not cached)", flush=True)
    experiments._upstream(config, data, progress=False)


def one_run(config: RunConfig, path: str) -> dict:
    """Train the run end to end on one path (PATHS); its record."""
    shutil.rmtree(paths.CACHE / "step_costs", ignore_errors=True)  # measured afresh each run
    t0 = time.perf_counter()
    with eager_path() if path == "eager" else contextlib.nullcontext():
        record = experiments.train_ser(path_config(config, path), force=True, progress=False)
    record["bench_wall_s"] = time.perf_counter() - t0
    return record


def breakdown(record: dict) -> dict[str, float]:
    """Seconds per piece of a run record (PIECES; "other" is what remains: checkpoints, weight
    copies, saving the model, the selection set), end to end without the upstream networks,
    and the training time (the part that grows with the epochs)."""
    t = record["timings_s"]
    out = {piece: sum(t.get(k, 0.0) for k in keys) for piece, keys in PIECES}
    total = record["wall_time_s"] - t.get("upstream", 0.0)
    out["other"] = total - sum(out.values())
    out["end to end"] = total
    out["train"] = t["train"]
    return out


def projected(b: dict[str, float], bench_epochs: int, profile_epochs: int) -> float:
    """End-to-end time with the profile's epochs: the training part scaled by the epochs, the
    rest as measured (an extrapolation: the one-cycle schedule and EMA change nothing per step)."""
    return b["end to end"] + b["train"] * (profile_epochs / bench_epochs - 1)


def measure(quick: bool) -> dict:
    """Every run on every path, WARMUP_ROUNDS discarded rounds (the first runs of a process
    pay for warming caches and allocators), then ROUNDS rounds, each in a fresh random order;
    the breakdowns and test UA of each (run, path) per timed round."""
    epochs, rounds = (QUICK_EPOCHS, QUICK_ROUNDS) if quick else (BENCH_EPOCHS, ROUNDS)
    warmup = 0 if quick else WARMUP_ROUNDS
    runs = configs(quick)
    order = [(name, path) for name in runs for path in PATHS]
    rng = random.Random(0)
    results: dict[tuple[str, str], list[dict]] = {key: [] for key in order}
    with scratch_folders(), bench_epochs(epochs):
        prepared = {}
        for config in (path_config(c, path) for c in runs.values() for path in PATHS):
            prepared.setdefault(config.key(), config)
        for config in prepared.values():  # the same data and RH-emo on every path: cached
            prepare(config)
        for r in range(-warmup, rounds):
            rng.shuffle(order)
            for name, path in order:
                record = one_run(runs[name], path)
                b = breakdown(record)
                b["ua"] = record["metrics"]["ua"]
                if r >= 0:
                    results[(name, path)].append(b)
                which = f"round {r + 1}/{rounds}" if r >= 0 else "warm-up (discarded)"
                print(f"{which}: {name}, {path} path: {b['end to end']:.1f} s, "
                      f"step {b['step']:.1f} s, test UA {b['ua']:.4f}", flush=True)  # fmt: skip
    profile = runs[next(iter(runs))].profile
    return {"results": results, "epochs": epochs, "rounds": rounds, "warmup": warmup, "runs": runs,
            "profile_epochs": PROFILES[profile]["epochs"]}  # fmt: skip


def paired_ratios(new: list[float], eager: list[float]) -> list[float]:
    """new / eager within each round (`new` any compared path's)."""
    return [n / e if e > 0 else math.nan for n, e in zip(new, eager, strict=True)]


def paired_ratio(new: list[float], eager: list[float]) -> float:
    """Median over rounds of new / eager within each round."""
    return statistics.median(paired_ratios(new, eager))


def spread(new: list[float], eager: list[float]) -> str:
    """The lowest and highest per-round new / eager."""
    ratios = paired_ratios(new, eager)
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def time_columns() -> list[str]:
    """time_rows' columns: run, piece, median seconds per path, then per compared path its
    median paired ratio to the first path and their per-round range, then each compared path's
    share of its own end to end."""
    reference = PATHS[0]
    return (["run", "piece"] + [f"{path} (s)" for path in PATHS]
            + [c for path in COMPARED for c in (f"{path} / {reference}", f"{path} range")]
            + [f"share of {path}" for path in COMPARED])  # fmt: skip


def ratio_column(path: str) -> int:
    """Where `path`'s ratio to the first path sits in a time_rows row."""
    return 2 + len(PATHS) + 2 * COMPARED.index(path)


def time_rows(m: dict) -> list[list]:
    """Per run and piece: median seconds on each path and, per compared path, the median paired
    ratio to the first path and its range (columns: time_columns)."""
    rows = []
    pieces = [p for p, _ in PIECES] + ["other", "end to end"]
    projected_label = f"end to end, projected to {m['profile_epochs']} epochs"
    for name in m["runs"]:
        on = {path: m["results"][(name, path)] for path in PATHS}
        ends = {path: statistics.median([b["end to end"] for b in on[path]]) for path in PATHS}
        values = {piece: {path: [b[piece] for b in on[path]] for path in PATHS}
                  for piece in pieces}  # fmt: skip
        if m["epochs"] != m["profile_epochs"]:
            values[projected_label] = {
                path: [projected(b, m["epochs"], m["profile_epochs"]) for b in on[path]]
                for path in PATHS
            }
        for piece, v in values.items():
            ref = v[PATHS[0]]
            row = [name, piece] + [statistics.median(v[path]) for path in PATHS]
            for path in COMPARED:
                row += [paired_ratio(v[path], ref), spread(v[path], ref)]
            if piece == projected_label:
                row += ["-"] * len(COMPARED)
            else:
                row += [statistics.median(v[path]) / ends[path] for path in COMPARED]
            rows.append(row)
    return rows


def ua_columns() -> list[str]:
    reference = PATHS[0]
    return (["run"] + [f"{path} UA" for path in PATHS]
            + [f"{path} - {reference}" for path in COMPARED] + ["spread"])  # fmt: skip


def ua_rows(m: dict) -> list[list]:
    """Per run: the test UA on each path (the first round's; rounds of one path are the same
    computation), each compared path's minus the first's, and the spread: the widest range
    over rounds of one path (0 where every path's rounds agree)."""
    rows = []
    for name in m["runs"]:
        ua = {path: [b["ua"] for b in m["results"][(name, path)]] for path in PATHS}
        widest = max(max(u) - min(u) for u in ua.values())
        first = [ua[path][0] for path in PATHS]
        rows.append([name, *first, *(ua[path][0] - first[0] for path in COMPARED), widest])
    return rows


def verdict_lines(rows: list[list], projected_label: str) -> list[str]:
    """Speed-up of each compared path over the first end to end per run, measured and
    projected, against the target."""
    lines = []
    for row in rows:
        if row[1] not in ("end to end", projected_label):
            continue
        for path in COMPARED:
            ratio = row[ratio_column(path)]
            speedup = 1 / ratio
            met = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
            lines.append(f"- {row[0]}, {row[1]}: {path} / {PATHS[0]} {ratio:.3f}, speed-up "
                         f"{speedup:.2f}x (target >= {TARGET_SPEEDUP}x: {met})")  # fmt: skip
    return lines


def run(quick: bool = False) -> str:
    before = load_note()
    threads = torch.get_num_threads()
    support = bf16_support()
    m = measure(quick)
    rows = time_rows(m)
    projected_label = f"end to end, projected to {m['profile_epochs']} epochs"
    runs = m["runs"]
    described = "; ".join(f"{name}: {c.label()}, profile {c.profile}" for name, c in runs.items())
    body = (
        f"Whole runs (qat.experiments.train_ser: data, fit, final test evaluation, step cost, "
        f"probes) on the eager path, the kit's current path (new) and the current path with "
        f'precision="bf16" (bf16), {m["rounds"]} round(s) after {m["warmup"]} discarded '
        f"warm-up round(s), each running the {len(PATHS) * len(runs)} (run, path) pairs once "
        f"in a fresh random order in one process; {threads} torch threads. Runs: {described}. "
        f"**Bench size: {m['epochs']} epoch(s) instead of the profile's "
        f"{m['profile_epochs']}**; the RH-emo they read was prepared before the rounds and is "
        "not timed. Eager path, as emulated here (qat/bench/run.py): evaluation at batch "
        f"{EAGER_EVAL_BATCH} under no_grad with the validation worst group in a separate "
        "pass, real VGG16 contiguous; current path: one batch-"
        f"{train.EVAL_BATCH} inference pass per set, real VGG16 channels-last; bf16 path: the "
        "current path with the training step's and evaluation's forward passes under "
        "torch.autocast bfloat16 on the CPU (weights, optimiser, logits, AT's Gram and CKA "
        "and the probes stay float32; the record key includes precision). Seconds are "
        "medians over rounds (from the records' timings_s: data = prepare, step = the epochs' "
        "steps, evaluation = the epochs' validation and monitor passes + the final test "
        "evaluation, cost = step cost, probe = invariance probes, other = the rest); each "
        "ratio is the median of the per-round path / eager (its range beside it). The "
        "quaternion step is the same code on the eager and new paths, so its new step ratio "
        "shows how far this machine's noise moves a ratio here. The projected row scales the "
        "training part to the profile's epochs (an extrapolation, not a measurement). "
        f"{before} before, {load_note()} after (other jobs share the CPUs: ratios, not "
        f"times). {bf16_line(support)}\n\n"
        + markdown_table(time_columns(), rows)
        + f"\n\nTarget (a whole run >= {TARGET_SPEEDUP}x faster than the eager path):\n\n"
        + "\n".join(verdict_lines(rows, projected_label))
        + "\n\nTest UA, same seed on every path (path - eager; spread = largest range over "
        "rounds of one path):\n\n"
        + markdown_table(ua_columns(), ua_rows(m))
        + "\n\nOne seed only: the issue's UA criterion (paired over at least 3 seeds, the "
        "difference interval including 0 and above -0.01) needs full-length runs on 3 seeds, "
        "more than this bench runs; it is not claimed here, for either path. The bf16 path "
        "changes the numerics by design (bfloat16 forwards), so the issue's float32-tolerance "
        "test of the step does not apply to it; the UA criterion is the only one it can meet. "
        "Full-length runs measure it, paired over 5 (seed, fold) pairs with a rule written "
        "before them: reports/instrument.md, section 9 (`qat instrument --stage precision`)."
    )
    return publish("run", body, quick)
