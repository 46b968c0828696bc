"""Records -> tables (qat.tables): numbers that match an independent computation from small
synthetic records, run labels, the one Markdown-table writer in each of the styles the kit uses
(report, demonstration, benchmarks), and the import direction of the reporting modules."""

from __future__ import annotations

import ast
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_plots import EMOTIONS, rhemo_record, ser_record, utterances

import qat
from qat import tables


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ---------------------------------------------------------------- tables


def test_results_table_reads_metrics_confound_and_resources_with_units(rng):
    records = [ser_record(rng), ser_record(rng, method="at", tap="conv2_1", confound=False)]
    table = tables.results_table(records)
    assert len(table) == 2
    for (_, row), r in zip(table.iterrows(), records, strict=True):
        res = r["resources"]
        assert row["UA"] == r["metrics"]["ua"] and row["WA"] == r["metrics"]["wa"]
        assert row["macro-F1"] == r["metrics"]["macro_f1"]
        assert row["step time (ms)"] == pytest.approx(res["step_time_s"] * 1000)
        assert row["peak memory (MiB)"] == pytest.approx(res["peak_memory_bytes"] / 1048576)
        assert row["GFLOPs/step"] == pytest.approx(res["flops_per_step"] / 1e9)
        assert row["params"] == res["params"] and row["epochs"] == 3
    assert table.loc[0, "incongruent UA"] == records[0]["confound"]["incongruent_ua"]
    assert math.isnan(table.loc[1, "incongruent UA"])  # not a confounded run
    assert table.loc[1, "taps"] == "conv2_1" and table.loc[1, "beta"] == 1.0


def test_a_resumed_runs_partial_train_time_is_not_shown_as_its_cost(rng):
    fresh, resumed = ser_record(rng), ser_record(rng)
    fresh["resources"].update(train_time_s=412.0, resumed_from_epoch=0)
    resumed["resources"].update(train_time_s=3.2, resumed_from_epoch=11)
    table = tables.results_table([fresh, resumed])
    assert table.loc[0, "train time (s)"] == 412.0
    assert math.isnan(table.loc[1, "train time (s)"])


def test_results_table_rejects_records_without_ser_runs(rng):
    with pytest.raises(ValueError, match="kind 'ser'"):
        tables.results_table([{"kind": "rhemo", "config": {}}])
    with pytest.raises(ValueError, match="at least one"):
        tables.results_table([])


def test_sweep_table_pairs_each_run_with_its_own_baseline(rng):
    base_real = [ser_record(rng, seed=0), ser_record(rng, seed=0)]  # a repeated baseline
    base_q = ser_record(rng, model="quaternion")
    base_seed1 = ser_record(rng, seed=1)
    base_other_setup = ser_record(rng, setup="random")
    runs = [
        ser_record(rng, method="at", tap="conv3_1"),
        ser_record(rng, method="at", tap="conv1_2"),
        ser_record(rng, method="at", tap="conv1_2", seed=1),
        ser_record(rng, model="quaternion", method="at", tap="conv1_2"),
        ser_record(rng, method="at", tap="conv1_2", seed=5),  # no baseline
    ]
    table = tables.sweep_table([*base_real, base_q, base_seed1, base_other_setup, *runs])
    assert len(table) == len(runs)
    expected_base = {
        ("real", "conv3_1", 0): np.mean([b["metrics"]["ua"] for b in base_real]),
        ("real", "conv1_2", 0): np.mean([b["metrics"]["ua"] for b in base_real]),
        ("real", "conv1_2", 1): base_seed1["metrics"]["ua"],
        ("quaternion", "conv1_2", 0): base_q["metrics"]["ua"],
    }
    for _, row in table.iterrows():
        run = next(
            r for r in runs
            if (r["config"]["model"], r["config"]["taps"][0], r["config"]["seed"])
            == (row["model"], row["tap"], row["seed"])
        )  # fmt: skip
        key = (row["model"], row["tap"], row["seed"])
        if key in expected_base:
            assert row["baseline UA"] == pytest.approx(expected_base[key], abs=1e-12)
            assert row["UA gain"] == pytest.approx(run["metrics"]["ua"] - expected_base[key])
        else:
            assert math.isnan(row["baseline UA"]) and math.isnan(row["UA gain"])
    real = table[table["model"] == "real"]
    assert list(real["tap"]) == ["conv1_2", "conv1_2", "conv1_2", "conv3_1"]  # network order


def test_probe_table_is_one_row_per_configuration_in_network_order(rng):
    runs = [ser_record(rng, seed=0), ser_record(rng, seed=1)]
    other = ser_record(rng, method="at", tap="conv2_1")
    table = tables.probe_table([*runs, other])
    assert list(table.columns) == ["configuration", "runs", "word @ conv2_2", "word @ conv5_3",
                                   "records"]  # fmt: skip
    row = table.set_index("configuration").loc["[confounded] real baseline"]
    assert row["runs"] == 2
    for tap in ("conv2_2", "conv5_3"):
        assert row[f"word @ {tap}"] == pytest.approx(
            np.mean([r["probe"]["word"][tap] for r in runs])
        )
    assert sorted(row["records"]) == sorted(tables.record_id(r) for r in runs)


def test_configuration_table_clips_the_ua_interval_to_what_an_accuracy_can_be(rng):
    from scipy import stats as st

    uas = np.array([0.02, 0.05, 0.3]) + rng.uniform(0, 0.01, size=3)  # interval reaches below 0
    runs = [ser_record(rng, seed=s, ua=float(u)) for s, u in enumerate(uas)]
    row = tables.configuration_table(runs).iloc[0]
    low, high = st.t.interval(0.95, 2, loc=uas.mean(), scale=st.sem(uas))
    assert low < 0  # the case the clipping is for
    assert row["runs"] == 3 and row["UA"] == pytest.approx(uas.mean())
    assert row["UA SD"] == pytest.approx(uas.std(ddof=1))
    assert (row["UA 95% low"], row["UA 95% high"]) == pytest.approx((0.0, min(high, 1.0)))


def test_upstream_table_groups_networks_per_configuration_with_intervals(rng):
    from scipy import stats as st

    def rhemo(seed, fold, ua, setup="confounded", encoder=None):
        r = rhemo_record()
        r["config"] = {**r["config"], "seed": seed, "profile": "smoke", "setup": setup,
                       "split": {"rho": 0.9, "factor": "word", "fold": fold}}  # fmt: skip
        if encoder:
            r["config"]["rhemo_encoder"] = encoder
        r["history"][-1] = {**r["history"][-1], "val_emotion_ua": ua}
        return r

    word = {"kind": "orthogonal-word-real", "metrics": {"ua": 0.91}, "wall_time_s": 2.0,
            "config": {"task": "word", "model": "real", "seed": 0, "profile": "smoke"},
            "history": [{"epoch": 1, "val_loss": 1.0}]}  # fmt: skip
    uas = rng.uniform(0.3, 0.7, size=4)
    confounded = [rhemo(s, s % 2, float(u)) for s, u in enumerate(uas)]
    records = [*confounded, rhemo(0, 0, 0.2, "unconfounded"), rhemo(0, 0, 0.3, encoder="wide"),
               word, ser_record(rng)]  # fmt: skip
    table = tables.upstream_table(records)
    assert len(table) == 4  # RH-emo x (confounded, unconfounded, wide), the word network
    row = table[(table["trained on"] == "confounded") & (table["RH-emo encoder"] == "published")]
    row = row.iloc[0]
    assert row["networks"] == 4 and row["(seed, fold)"] == "0/0, 1/1, 2/0, 3/1"
    assert row["accuracy"] == pytest.approx(uas.mean())
    low, high = st.t.interval(0.95, 3, loc=uas.mean(), scale=st.sem(uas))
    assert (row["accuracy 95% low"], row["accuracy 95% high"]) == pytest.approx((low, high))
    assert row["j: arousal accuracy"] == 0.8 and row["reconstruction MSE"] == 0.5
    assert row["reconstruction, last-epoch drop"] == pytest.approx(1 - 0.5 / 0.9)
    assert sorted(row["records"]) == sorted(tables.record_id(r) for r in confounded)
    w = table[table["network"] == "word recognition"].iloc[0]
    assert w["accuracy"] == 0.91 and w["networks"] == 1
    assert math.isnan(w["accuracy 95% low"])  # one network: no interval
    assert w["best val loss at the last epoch"] == "1/1"


def test_cooccurrence_table_counts_match_a_hand_count(rng):
    items = utterances(rng)
    table = tables.cooccurrence_table(items, column="text")
    counts = Counter((u.emotion, u.text) for u in items)
    assert list(table.index) == [e for e in EMOTIONS if any(u.emotion == e for u in items)]
    for emotion in table.index:
        for word in table.columns:
            assert table.loc[emotion, word] == counts[(emotion, word)]
    with pytest.raises(ValueError, match="'colour' is not an utterance field"):
        tables.cooccurrence_table(items, column="colour")


def test_pretrained_and_rhemo_tables(rng):
    orth = {
        "kind": "orthogonal-word-real",
        "config": {"task": "word", "model": "real", "seed": 0},
        "history": [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_ua": 0.4}],
        "metrics": {"ua": 0.91, "wa": 0.92, "macro_f1": 0.9},
        "wall_time_s": 12.5,
    }
    rhemo = rhemo_record()
    table = tables.pretrained_table([orth, rhemo])
    assert len(table) == 1 and table.loc[0, "test UA"] == 0.91 and table.loc[0, "epochs"] == 1
    table = tables.rhemo_table([orth, rhemo])
    assert len(table) == 1 and table.loc[0, "val reconstruction MSE"] == 0.5
    assert table.loc[0, "j: arousal accuracy"] == 0.8


def test_run_label_names_the_configuration(rng):
    at = ser_record(rng, model="quaternion", method="at", tap="conv2_1", seed=3)
    assert tables.run_label(at) == "[confounded] quaternion at word@conv2_1 β=1 seed 3"
    assert tables.run_label(at, without=("setup", "seed", "taps")) == "quaternion at word β=1"
    assert tables.run_label(ser_record(rng)) == "[confounded] real baseline"


def test_pick_examples_takes_the_first_of_each_emotion_in_vocabulary_order(rng):
    items = utterances(rng, n=40)
    picked = tables.pick_examples(items, per_emotion=2)
    expected = []
    for e in EMOTIONS:
        expected += [i for i, u in enumerate(items) if u.emotion == e][:2]
    assert picked == expected


# ---------------------------------------------------------------- markdown_table


def test_markdown_table_report_style_formats_and_escapes():
    table = pd.DataFrame({"run": ["a|b"], "UA": [0.12345], "UA gain": [0.5], "n": [3],
                          "step time (ms)": [1234.567], "beta": [float("nan")],
                          "ok": [True]})  # fmt: skip
    lines = tables.markdown_table(table).splitlines()
    assert lines[0] == "| run | UA | UA gain | n | step time (ms) | beta | ok |"
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2] == "| a\\|b | 0.123 | +0.500 | 3 | 1235 | – | True |"
    assert tables.markdown_table(pd.DataFrame(columns=["run"])) == "_(no rows)_"


def test_markdown_table_demonstration_style_fixed_decimals_per_column():
    rows = pd.DataFrame([{"configuration": "at@conv2_1", "seeds": 3, "UA": 0.41666,
                          "sd": 0.0, "probe": None, "peak memory (MiB)": 123.456}])  # fmt: skip
    text = tables.markdown_table(
        rows, float_format=".3f", formats={"peak memory (MiB)": ".1f"}, missing="n/a"
    )
    assert text.splitlines()[2] == "| at@conv2_1 | 3 | 0.417 | 0.000 | n/a | 123.5 |"


def test_markdown_table_bench_style_rows_as_sequences():
    text = tables.markdown_table([["conv", 7, 0.012345, 1234.5]], ["op", "n", "s", "ms"],
                                 float_format=".3g")  # fmt: skip
    assert text.splitlines() == ["| op | n | s | ms |", "|---|---|---|---|",
                                 "| conv | 7 | 0.0123 | 1.23e+03 |"]  # fmt: skip


def test_markdown_table_rows_as_dicts_take_the_first_rows_keys_or_the_given_columns():
    rows = [{"n": 1, "UA": 0.5, "ms": 0.5}, {"n": 2}]
    assert tables.markdown_table(rows).splitlines() == [
        "| n | UA | ms |", "|---|---|---|", "| 1 | 0.500 | 0.5 |", "| 2 | – | – |"
    ]  # fmt: skip
    assert tables.markdown_table(rows, ["UA"]).splitlines()[2:] == ["| 0.500 |", "| – |"]
    assert tables.markdown_table([]) == "_(no rows)_"


def test_markdown_table_rejects_rows_it_cannot_name():
    with pytest.raises(ValueError, match="columns: expected the column names"):
        tables.markdown_table([[1, 2]])
    with pytest.raises(ValueError, match="expected 2 values"):
        tables.markdown_table([[1, 2, 3]], ["a", "b"])
    with pytest.raises(ValueError, match=r"formats: columns \['c'\]"):
        tables.markdown_table([[1, 2]], ["a", "b"], formats={"c": ".1f"})


# ---------------------------------------------------------------- import direction

# The reporting layer's imports only go down: tables <- plots <- report; notebooks below report.
FORBIDDEN = {
    "tables": {"plots", "report", "notebooks", "demonstration", "widgets", "cli", "experiments"},
    "plots": {"report", "notebooks", "demonstration", "widgets", "cli", "experiments"},
    "notebooks": {"report", "plots", "tables", "demonstration", "widgets", "cli", "experiments"},
    "report": {"cli", "experiments", "demonstration", "widgets"},
    "bench.common": {"report", "plots", "cli", "experiments"},
}


def qat_imports(module: str) -> set[str]:
    """Every qat module `module` imports, at module level or inside a function."""
    path = Path(qat.__file__).parent / (module.replace(".", "/") + ".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "qat":
                found |= {f"qat.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return {name.removeprefix("qat.") for name in found if name.startswith("qat.")}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_reporting_modules_import_only_downwards(module):
    imported = qat_imports(module)
    assert not imported & FORBIDDEN[module], f"qat.{module} imports {imported & FORBIDDEN[module]}"
    assert "tables" in qat_imports("plots") and {"tables", "plots", "io", "notebooks", "runs"} <= (
        qat_imports("report")
    )


def test_a_markdown_table_of_dicts_shows_every_rows_columns():
    from qat.tables import markdown_table

    text = markdown_table([{"a": 1}, {"a": 2, "b": 0.5}])
    assert text.splitlines()[0] == "| a | b |"
    assert text.splitlines()[2:] == ["| 1 | – |", "| 2 | 0.5 |"]


def test_sweep_summary_averages_the_gain_over_the_runs_that_have_a_baseline(rng):
    from scipy import stats as st

    bases = [ser_record(rng, seed=s) for s in (0, 1, 2)]
    runs = [ser_record(rng, method="at", tap="conv2_1", seed=s) for s in (0, 1, 2, 7)]  # 7: none
    row = tables.sweep_summary([*bases, *runs]).iloc[0]
    ua = [r["metrics"]["ua"] for r in runs]
    gains = np.array(ua[:3]) - [b["metrics"]["ua"] for b in bases]
    assert (row["runs"], row["pairs"]) == (4, 3)
    assert row["UA"] == pytest.approx(np.mean(ua))
    assert row["UA gain"] == pytest.approx(gains.mean())
    low, high = st.t.interval(0.95, 2, loc=gains.mean(), scale=st.sem(gains))
    assert (row["UA gain 95% low"], row["UA gain 95% high"]) == pytest.approx(
        (max(low, -1), min(high, 1))
    )


def test_sweep_summary_of_a_tap_without_its_baseline_has_no_gain(rng):
    summary = tables.sweep_summary([ser_record(rng, method="at", tap="conv2_1")])
    row = summary.iloc[0]
    assert (row["runs"], row["pairs"]) == (1, 0)
    assert all(math.isnan(row[c]) for c in ("UA gain", "UA gain 95% low", "UA gain 95% high"))
