"""Benchmarks: every subcommand runs in quick mode and returns a markdown table without writing
the report; the pieces that compute numbers (the published AT reference step, FLOP counts,
fractions of peak, target verdicts, workload shapes) are checked against explicit formulas."""

import copy
import importlib
import re

import pytest
import torch

from qat.antitransfer import AntiTransfer
from qat.bench import SUBCOMMANDS, antitransfer, efficiency, quaternion, scaling
from qat.config import PROFILES
from qat.models import vgg16
from qat.resources import step_flops

TABLE = re.compile(r"^\|.+\|\n\|(---\|)+\n\|.+\|$", re.MULTILINE)


@pytest.fixture
def one_thread():
    """The CPUs are shared with other jobs: one intra-op thread keeps the smoke runs short and
    steady (two threads wait on each other whenever one is descheduled)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_runs_quick_and_returns_a_table_without_writing(
    name, one_thread, monkeypatch
):
    module = importlib.import_module(f"qat.bench.{name}")

    def refuse(*args, **kwargs):
        raise AssertionError(f"{name}: quick mode must not write reports/benchmarks.md")

    from qat.bench import common

    monkeypatch.setattr(common, "write_section", refuse)
    body = module.run(quick=True)
    assert TABLE.search(body), f"{name}: no markdown table in\n{body}"


def test_workload_is_the_cpu_profile_and_quick_is_tiny():
    cpu = antitransfer.workload(quick=False)
    assert cpu.width == PROFILES["cpu"]["width"] and cpu.batch == 32
    assert cpu.spectrogram_shape == (32, 1, 128, 64)
    # RH-emo pools (2,2),(2,1),(1,1): time / 4, frequency / 2.
    assert cpu.embedding_shape == (32, 4, 32, 32)
    quick = antitransfer.workload(quick=True)
    assert (quick.width, quick.batch, quick.repeats) == (1 / 16, 4, 1)
    assert quick.spectrogram_shape == (4, 1, 32, 32)
    assert quick.embedding_shape == (4, 4, 32, 32)


def _batch_gram_cos2_float64(current: torch.Tensor, pretrained: torch.Tensor) -> float:
    """The published AT value written out: (B*C, H*W) Grams, row cosines, mean |cos|, squared."""
    b, c, h, w = current.shape
    grams = []
    for act in (current, pretrained):
        flat = act.double().reshape(b * c, h * w)
        grams.append(flat @ flat.T / (h * w))
    g1, g2 = grams
    cos = (g1 * g2).sum(1) / (g1.norm(dim=1) * g2.norm(dim=1))
    return float(cos.abs().mean() ** 2)


def test_reference_step_computes_the_published_term_with_its_costs():
    torch.manual_seed(3)
    tap = "conv2_1"
    model = vgg16(5, 1, width=1 / 16)
    frozen = vgg16(40, 1, width=1 / 16)
    x = torch.randn(3, 1, 32, 32)
    # Independent expectation, float64, from copies in train mode (batch statistics, as the
    # published code runs both networks).
    m64, f64 = copy.deepcopy(model).double().train(), copy.deepcopy(frozen).double().train()
    with torch.no_grad():
        expected = _batch_gram_cos2_float64(
            m64.truncated(tap)(x.double()), f64.truncated(tap)(x.double())
        )

    calls = []
    model.tap_module(tap).register_forward_hook(lambda *_: calls.append(1))
    out = antitransfer.reference_step(model, frozen, tap, x)()

    assert out["at"] == pytest.approx(expected, rel=1e-4)
    assert 0 < out["at"] < 1
    assert len(calls) == 2, "the published step runs the trained network twice up to the tap"
    assert frozen.training, "the published frozen network stays in train mode"
    front = list(frozen.truncated(tap).parameters())
    assert front and all(p.grad is not None and p.grad.abs().sum() > 0 for p in front), (
        "autograd on: the frozen network accumulates gradients"
    )


def test_training_step_with_a_warm_cache_skips_the_frozen_network():
    torch.manual_seed(0)
    model, orthogonal = vgg16(5, 1, width=1 / 16), vgg16(40, 1, width=1 / 16)
    at = AntiTransfer(orthogonal, "conv1_1", cache_budget_mb=1)
    step = antitransfer.training_step(model, torch.randn(4, 1, 32, 32), at, torch.arange(4))
    first, second = step(), step()
    assert at.cache_stats["misses"] == 4 and at.cache_stats["hits"] == 4
    assert set(first) == set(second) == {"task", "at", "train_acc"}


def _at_row(tap, ref_t, qat_t, cached_t, ref_m=2.0, qat_m=1.0, cached_m=1.0):
    return {
        "model": "m", "tap": tap,
        "reference time": ref_t, "qat time": qat_t, "qat cached time": cached_t,
        "reference memory": ref_m, "qat memory": qat_m, "qat cached memory": cached_m,
    }  # fmt: skip


def test_antitransfer_verdicts_follow_the_ratios_and_name_the_worst_tap():
    good = [_at_row("conv1_1", 2.0, 1.5, 1.05), _at_row("conv5_3", 3.0, 1.2, 1.10)]
    assert all(": met" in line for line in antitransfer.verdicts(good))
    bad = [_at_row("conv1_1", 2.0, 1.5, 1.05), _at_row("conv5_3", 1.1, 1.2, 1.3)]
    lines = antitransfer.verdicts(bad)
    time_vs_ref, memory_vs_ref, cached_time, cached_memory = lines
    assert "NOT met" in time_vs_ref and "conv5_3" in time_vs_ref and "1.09" in time_vs_ref
    assert ": met" in memory_vs_ref
    assert "NOT met" in cached_time and "1.30x" in cached_time
    assert ": met" in cached_memory


def test_quaternion_verdicts_use_quaternion_over_real():
    results = {
        "real": {"time ratio": 1.0, "bytes": 400},
        "quaternion, cached embeddings": {"time ratio": 0.2, "bytes": 120},
        "quaternion + RH-emo encoder": {"time ratio": 0.3, "bytes": 100},
    }
    lines = quaternion.verdict_lines(results)
    assert lines == [
        "- quaternion, cached embeddings, time: 0.200x real (target <= 0.25: met)",
        "- quaternion, cached embeddings, memory: 0.300x real (target <= 0.25: NOT met)",
        "- quaternion + RH-emo encoder, time: 0.300x real (target <= 0.25: NOT met)",
        "- quaternion + RH-emo encoder, memory: 0.250x real (target <= 0.25: met)",
    ]


def test_matmul_flops_agree_with_torch_flop_counter():
    n = 7
    a, b = torch.randn(n, n), torch.randn(n, n)
    assert efficiency.matmul_flops(n) == 2 * 343 == step_flops(lambda: torch.mm(a, b))


def test_fraction_of_peak_is_achieved_over_matmul_rate_at_each_thread_count():
    m = {
        "threads": 2,
        "step_flops": 6e9,
        "matmul_flops": 8e9,
        "seconds": {"step": 0.5, "matmul": 0.2, "step, 1 thread": 0.8, "matmul, 1 thread": 0.4},
    }
    rows, fractions = efficiency._fraction_rows(m)
    # 2 threads: 6e9 / 0.5 s = 12 GFLOP/s vs 8e9 / 0.2 s = 40 GFLOP/s -> 0.3.
    # 1 thread: 7.5 GFLOP/s vs 20 GFLOP/s -> 0.375.
    assert fractions == pytest.approx({2: 0.3, 1: 0.375})
    assert rows[0] == pytest.approx([2, 500.0, 12.0, 40.0, 0.3])
    assert rows[1] == pytest.approx([1, 800.0, 7.5, 20.0, 0.375])


def test_torch_threads_restores_the_callers_count():
    before = torch.get_num_threads()
    with efficiency.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_scaling_configurations_cover_both_sweeps_at_the_profile_frame_rate():
    configs = scaling.configurations(quick=False)
    assert configs == {
        (8, 1.0): (8, 1, 128, 64),
        (16, 1.0): (16, 1, 128, 64),
        (32, 1.0): (32, 1, 128, 64),
        (64, 1.0): (64, 1, 128, 64),
        (32, 0.5): (32, 1, 64, 64),
        (32, 2.0): (32, 1, 256, 64),
        (32, 4.0): (32, 1, 512, 64),
    }


def test_memory_notes_scale_the_overhead_by_the_largest_tap_and_isolate_the_frozen_forward():
    rows = [
        {"model": "m", "tap": "conv1_1", "qat memory": 1.5, "qat cached memory": 1.25,
         "no AT MiB": 40.0, "tap MiB": 4.0},
        {"model": "m", "tap": "conv5_3", "qat memory": 1.6, "qat cached memory": 1.05,
         "no AT MiB": 40.0, "tap MiB": 0.1},
        # A larger ratio gap on a smaller step is fewer MiB: 0.9 * 10 = 9 MiB < 22 MiB.
        {"model": "q", "tap": "conv3_1", "qat memory": 2.0, "qat cached memory": 1.1,
         "no AT MiB": 10.0, "tap MiB": 0.1},
    ]  # fmt: skip
    cached, frozen = antitransfer.memory_notes(rows)
    # Largest tap conv1_1: (1.25 - 1) * 40 MiB / 4 MiB = 2.5x; frozen: (1.6 - 1.05) * 40 = 22.
    assert "m conv1_1: 2.5x" in cached and "conv5_3" not in cached
    assert "q conv3_1: 10.0x" in cached  # (1.1 - 1) * 10 MiB / 0.1 MiB
    assert "adds up to 22.0 MiB (m conv5_3)" in frozen


def test_paired_ratios_divide_within_each_round(monkeypatch):
    # Scripted per-round times: the warm-up round, then three rounds in which the load drifts.
    script = iter(
        [{"a": 9.0, "b": 9.0}, {"a": 1.0, "b": 2.0}, {"a": 10.0, "b": 10.0}, {"a": 2.0, "b": 6.0}]
    )
    monkeypatch.setattr(antitransfer, "interleaved_medians", lambda *a, **k: next(script))
    medians, ratios = antitransfer.paired_ratios({"a": None, "b": None}, "a", rounds=3)
    assert medians == {"a": 2.0, "b": 6.0}  # a ratio of medians would say 3
    assert ratios == {"a": 1.0, "b": 2.0}  # per-round b/a = 2, 1, 3


def test_quaternion_category_rows_are_share_times_step_time():
    results = {
        "real": {"seconds": 0.2, "categories": {"convolution": 0.5, "batch norm": 0.5}},
        "quaternion, cached embeddings": {
            "seconds": 0.1,
            "categories": {"convolution": 0.6, "other": 0.4},
        },
    }
    rows = {r[0]: r[1:] for r in quaternion.category_rows(results)}
    assert rows["convolution"] == pytest.approx([100.0, 60.0, 0.6])
    assert rows["batch norm"] == pytest.approx([100.0, 0.0, 0.0])
    assert rows["other"][:2] == pytest.approx([0.0, 40.0]) and rows["other"][2] == "-"


def test_write_section_writes_benchmarks_md_under_the_reports_folder(tmp_path, monkeypatch):
    from qat import paths
    from qat.bench import common

    monkeypatch.setattr(paths, "REPORTS", tmp_path / "elsewhere")  # what $QAT_REPORTS sets
    assert common.write_section("layers", "body 1") == tmp_path / "elsewhere" / "benchmarks.md"
    common.write_section("data", common.markdown_table(["step", "s"], [["read", 0.012345]]))
    common.write_section("layers", "body 2")  # replaces its own section, keeps the others
    text = (tmp_path / "elsewhere" / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks\n") and text.count("\n## ") == 2
    assert "body 2" in text and "body 1" not in text
    assert "| read | 0.0123 |" in text  # 3 significant digits
    assert "Command: `python -m qat.bench data`" in text
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == ["benchmarks.md"]


def test_scale_s_epoch_reads_the_same_batches_streamed_and_in_memory(tmp_path, one_thread):
    from qat.bench import scale

    path = tmp_path / "items.npy"
    scale._write_items(path, 200 + scale.VAL_ITEMS, (8, 4))
    streamed, held = scale.measure_epoch(str(path), True), scale.measure_epoch(str(path), False)
    assert streamed["items"] == held["items"] == 200
    assert streamed["train_loss"] == held["train_loss"]  # the same epoch, not a close one
    assert streamed["peak_anon_mb"] > 0 and streamed["s_per_item"] > 0


def test_scale_s_gpu_step_covers_both_networks_with_and_without_at_in_both_precisions(
    one_thread,
):
    from qat.bench import scale

    rows = scale.gpu_rows("cpu", "smoke", batch=4, repeats=1)  # bf16 autocast runs on CPU too
    assert [tuple(r[:3]) for r in rows] == [
        (model, tap, precision) for model in ("real", "quaternion")
        for tap in ("none", "conv1_1") for precision in ("fp32", "bf16")
    ]  # fmt: skip
    assert all(r[3] > 0 and r[4] > 0 for r in rows)


def test_scale_s_gpu_section_says_it_did_not_run_without_cuda(monkeypatch):
    from qat.bench import scale

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "Not run: no CUDA device on this machine" in scale.gpu_section(quick=False)


def test_scale_measures_only_the_parts_named_and_keeps_the_others_text(tmp_path, monkeypatch):
    from qat import paths
    from qat.bench import common, scale

    monkeypatch.setattr(paths, "REPORTS", tmp_path)
    common.write_section("scale", "### (a) ray, kept\n\n### (b) streaming, kept\n\n### (c) old")
    common.write_section("other", "untouched")
    monkeypatch.setattr(scale, "gpu_section", lambda quick: "### (c) measured")
    monkeypatch.setattr(scale, "ray_section", lambda quick: pytest.fail("(a) measured again"))
    scale.main(["gpu"])
    text = (tmp_path / "benchmarks.md").read_text()
    assert "### (a) ray, kept\n\n### (b) streaming, kept\n\n### (c) measured\n" in text
    assert "(c) old" not in text and "untouched" in text


def test_run_s_eager_path_evaluates_as_before_and_restores_the_current_path():
    from types import SimpleNamespace

    from qat import experiments, train
    from qat.bench import run

    torch.manual_seed(0)
    x = torch.randn(130, 1, 32, 32)
    labels = {"emotion": torch.randint(0, 5, (130,)), "group": torch.randint(0, 3, (130,))}
    data = SimpleNamespace(x=x, labels=labels)

    def forwards(model, fn):
        calls = []
        handle = model.register_forward_hook(lambda *_: calls.append(1))
        try:
            return fn(), len(calls)
        finally:
            handle.remove()

    current = vgg16(5, 1, width=1 / 16)
    now, now_calls = forwards(current, lambda: train._scores(current, data, "emotion"))
    assert now_calls == 1  # one batch-512 pass gives loss, UA and worst group
    with run.eager_path():
        eager = vgg16(5, 1, width=1 / 16)
        assert eager.features.conv2_1.conv.weight.is_contiguous()
        assert train.predict is experiments.predict is run.eager_predict
        eager.load_state_dict(current.state_dict())
        before, before_calls = forwards(eager, lambda: train._scores(eager, data, "emotion"))
    assert before_calls == 2 * 3  # batches of 64, the worst group in a second pass
    assert before == pytest.approx(now, rel=1e-5, abs=1e-6)
    assert train.predict is not run.eager_predict and experiments.predict is train.predict
    restored = vgg16(5, 1, width=1 / 16).features.conv2_1.conv.weight
    assert restored.is_contiguous(memory_format=torch.channels_last)


def test_run_s_breakdown_splits_a_record_and_ratios_pair_within_rounds():
    from qat.bench import run

    timings = {
        "prepare": 2.0, "upstream": 100.0, "train": 30.0, "train_steps": 24.0,
        "train_evaluation": 5.0, "evaluate": 1.0, "step_cost": 3.0, "probe": 4.0,
    }  # fmt: skip
    b = run.breakdown({"wall_time_s": 145.0, "timings_s": timings})
    assert b == pytest.approx({
        "data": 2.0, "step": 24.0, "evaluation": 6.0, "cost": 3.0, "probe": 4.0, "other": 6.0,
        "end to end": 45.0, "train": 30.0,
    })  # fmt: skip
    # 2 bench epochs -> 12: the training part (30 s) five more times.
    assert run.projected(b, 2, 12) == pytest.approx(45.0 + 5 * 30.0)
    # Per-round new / eager = 0.5, 1.0, 0.8: the median is 0.8 (a ratio of medians: 1.25).
    assert run.paired_ratio([1.0, 4.0, 4.0], [2.0, 4.0, 5.0]) == pytest.approx(0.8)
    assert run.PATHS == ("eager", "new", "bf16") and run.COMPARED == ("new", "bf16")
    assert run.time_columns() == [
        "run", "piece", "eager (s)", "new (s)", "bf16 (s)", "new / eager", "new range",
        "bf16 / eager", "bf16 range", "share of new", "share of bf16",
    ]  # fmt: skip
    rows = [["real baseline", "end to end", 10.0, 5.0, 8.0, 0.5, "-", 0.8, "-", 1.0, 1.0],
            ["real baseline", "step", 4.0, 3.0, 2.0, 0.75, "-", 0.5, "-", 0.6, 0.25]]  # fmt: skip
    assert run.verdict_lines(rows, "projected") == [
        "- real baseline, end to end: new / eager 0.500, speed-up 2.00x (target >= 1.5x: met)",
        "- real baseline, end to end: bf16 / eager 0.800, speed-up 1.25x (target >= 1.5x: NOT met)",
    ]


def _bench_results(ends: dict[str, list[float]], uas: dict[str, list[float]]) -> dict:
    """A measure() result of one run from end-to-end seconds and UAs per path and round (every
    piece of a round a fixed share of its end to end, training 0.8 of it)."""
    from qat.bench import run

    shares = {"data": 0.05, "step": 0.5, "evaluation": 0.2, "cost": 0.05, "probe": 0.1}
    results = {
        ("real baseline", path): [
            {
                **{k: v * e for k, v in shares.items()},
                "other": 0.1 * e,
                "end to end": e,
                "train": 0.8 * e,
                "ua": ua,
            }
            for e, ua in zip(ends[path], uas[path], strict=True)
        ]
        for path in run.PATHS
    }
    return {"results": results, "epochs": 2, "profile_epochs": 12, "rounds": 2,
            "runs": {"real baseline": None}}  # fmt: skip


def test_run_s_rows_pair_every_path_with_eager_within_rounds():
    from qat.bench import run

    m = _bench_results(
        {"eager": [10.0, 20.0], "new": [8.0, 10.0], "bf16": [5.0, 12.0]},
        {"eager": [0.5, 0.5], "new": [0.5, 0.5], "bf16": [0.48, 0.47]},
    )
    rows = {row[1]: row for row in run.time_rows(m)}
    assert all(len(row) == len(run.time_columns()) for row in rows.values())
    end = rows["end to end"]
    # Medians 15, 9, 8.5; per-round new / eager 0.8 and 0.5, bf16 / eager 0.5 and 0.6.
    assert end[2:5] == pytest.approx([15.0, 9.0, 8.5])
    assert end[run.ratio_column("new")] == pytest.approx(0.65)
    assert end[run.ratio_column("bf16")] == pytest.approx(0.55)
    assert end[run.ratio_column("new") + 1] == "0.50-0.80"
    assert end[run.ratio_column("bf16") + 1] == "0.50-0.60"
    assert rows["step"][-2:] == pytest.approx([0.5, 0.5])  # shares of each path's end to end
    # Projected to 12 epochs: end to end + 5 x 0.8 x end to end = 5 x end to end.
    proj = rows["end to end, projected to 12 epochs"]
    assert proj[2:5] == pytest.approx([75.0, 45.0, 42.5]) and proj[-2:] == ["-", "-"]
    assert proj[run.ratio_column("bf16")] == pytest.approx(0.55)
    lines = run.verdict_lines(list(rows.values()), "end to end, projected to 12 epochs")
    assert lines[:2] == [
        "- real baseline, end to end: new / eager 0.650, speed-up 1.54x (target >= 1.5x: met)",
        "- real baseline, end to end: bf16 / eager 0.550, speed-up 1.82x (target >= 1.5x: met)",
    ]
    assert len(lines) == 4 and lines[3].startswith("- real baseline, end to end, projected")
    assert run.ua_columns() == ["run", "eager UA", "new UA", "bf16 UA", "new - eager",
                                "bf16 - eager", "spread"]  # fmt: skip
    (ua,) = run.ua_rows(m)
    assert ua[0] == "real baseline"
    assert ua[1:] == pytest.approx([0.5, 0.5, 0.48, 0.0, -0.02, 0.01])


def test_run_s_bf16_path_is_the_new_path_in_bfloat16_and_says_whether_it_is_native():
    from qat.bench import run
    from qat.config import RunConfig

    config = RunConfig(model="real", method="baseline", setup="unconfounded", seed=0,
                       profile="smoke")  # fmt: skip
    assert run.path_config(config, "new") is config and run.path_config(config, "eager") is config
    bf16 = run.path_config(config, "bf16")
    assert bf16.precision == "bf16" and bf16 == config.replace(precision="bf16")
    assert bf16.key() != config.key()  # a record of its own
    support = run.bf16_support()
    assert support["capability"] == torch.backends.cpu.get_cpu_capability()
    assert support["native"] == bool(support["flags"])
    assert set(support["flags"]) <= set(run.NATIVE_BF16_FLAGS)
    native = {"capability": "AVX512", "flags": ["avx512_bf16"], "native": True,
              "onednn_bf16": True}  # fmt: skip
    assert "AVX512" in run.bf16_line(native) and "not native" not in run.bf16_line(native)
    emulated = {"capability": "AVX2", "flags": [], "native": False, "onednn_bf16": False}
    assert "AVX2" in run.bf16_line(emulated) and "not native" in run.bf16_line(emulated)


def test_compile_is_adopted_only_when_a_run_repays_its_cold_compile():
    from qat.bench import compile as comp

    row = {"break_even": 300.0, "grads_agree": True}
    assert comp.verdict(row, 1200).startswith("adopted: the cold compile is repaid after 300")
    assert comp.verdict(row, 200).startswith("not adopted")
    assert comp.verdict({**row, "grads_agree": False}, 1200).startswith("not adopted")
    assert comp.verdict({**row, "break_even": None}, 1200) == (
        "not adopted: the compiled step is not faster"
    )


def test_compile_s_cache_folder_is_the_blocks_and_restored(tmp_path, monkeypatch):
    from qat.bench import compile as comp

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere")
    with comp.inductor_cache(str(tmp_path)):
        assert comp.os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)
    assert comp.os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere"


def test_compile_s_agreement_runs_one_step_of_each_path_from_the_same_weights(one_thread):
    from qat.bench import compile as comp

    load = antitransfer.workload(quick=True)
    x = antitransfer.random_batch(load.spectrogram_shape)
    agreement = comp._agreement(False, load, x, backend="eager")  # traced, no C++ generated
    assert agreement == {"loss_rel": 0.0, "grad_rel": 0.0, "grads_agree": True}
    steps = comp.run_steps()
    assert steps is None or steps % PROFILES["cpu"]["epochs"] == 0
