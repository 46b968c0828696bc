"""write_readme on a temporary reports folder with a few synthetic run records: the README's
tables hold exactly the records' numbers, the figures exist as PNG, nothing is left half
written; run_pipeline runs the notebooks in order with the profile, then writes the README."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qat import report


def ser(model, method, ua, tap=None, seed=0, setup="confounded", profile="smoke"):
    uses_at = method == "at"
    return {
        "kind": "ser",
        "config": {
            "corpus": "synthemo", "root": None, "setup": setup, "model": model,
            "method": method, "orthogonal": "word" if uses_at else None,
            "taps": [tap] if uses_at else [], "beta": 1.0 if uses_at else None,
            "gram": "sample" if uses_at else None, "lam": None, "init_from_orthogonal": False,
            "seed": seed, "profile": profile, "split": {"rho": 0.9, "factor": "word"},
        },
        "labels": {"emotions": ["neutral", "happy", "sad"]},
        "metrics": {"ua": ua, "wa": ua + 0.01, "macro_f1": ua - 0.02,
                    "confusion": [[5, 1, 0], [2, 3, 1], [0, 1, 4]]},
        "confound": {"congruent_ua": 0.8, "incongruent_ua": ua / 2, "follows_shortcut": 0.3,
                     "congruent_share_test": 0.25},
        "probe": {"word": {"conv2_2": 0.6, "penultimate": 0.4}},
        "history": [{"epoch": 1, "train_loss": 1.5, "val_loss": 1.4, "val_ua": 0.3},
                    {"epoch": 2, "train_loss": 1.2, "val_loss": 1.3, "val_ua": 0.4}],
        "best_epoch": 2,
        "resources": {"params": 12345, "flops_per_step": 2.5e9, "peak_memory_bytes": 3 * 2**20,
                      "step_time_s": 0.0125, "train_time_s": 42.0},
        "code_version": "qat 0.1.0 (abc1234)",
    }  # fmt: skip


def orthogonal():
    return {
        "kind": "orthogonal-word-real",
        "config": {"task": "word", "model": "real", "profile": "smoke", "seed": 0, "rhemo": None},
        "history": [{"epoch": 1, "train_loss": 2.0, "val_loss": 1.9, "val_ua": 0.55}],
        "metrics": {"ua": 0.875, "wa": 0.9, "macro_f1": 0.86},
        "wall_time_s": 3.0,
    }


def rhemo():
    return {
        "kind": "rhemo",
        "config": {"corpus": "synthemo", "setup": "confounded", "profile": "smoke", "seed": 0,
                   "root": None, "split": {"rho": 0.9, "factor": "word"}},
        "history": [{"epoch": 1, "stage": "heads", "val_reconstruction_mse": 0.25,
                     "val_emotion_ua": 0.5, "val_valence_acc": 0.625, "val_arousal_acc": 0.75,
                     "val_dominance_acc": 0.5}],
        "wall_time_s": 2.0,
    }  # fmt: skip


def write_records(reports: Path, records) -> None:
    (reports / "runs").mkdir(parents=True)
    for i, r in enumerate(records):
        (reports / "runs" / f"{r['kind']}-{i:04d}.json").write_text(json.dumps(r))


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A reports folder with a few records, and its README written once (rendering the
    figures is the slow part) for the tests below to read."""
    folder = tmp_path_factory.mktemp("reports")
    records = [
        ser("real", "baseline", 0.5),
        ser("real", "baseline", 0.7, seed=1),
        ser("real", "at", 0.5625, tap="conv2_1"),
        ser("real", "at", 0.4375, tap="conv1_1"),
        ser("real", "baseline", 0.625, setup="unconfounded"),  # the ceiling
        ser("real", "baseline", 0.777, profile="cpu"),  # another profile: left out
        orthogonal(),
        rhemo(),
    ]
    write_records(folder, records)
    readme = report.write_readme(folder, profile="smoke")
    assert readme == folder / "smoke" / "README.md"  # not the committed profile's page
    return folder


@pytest.fixture(scope="module")
def text(reports):
    return (reports / "smoke" / "README.md").read_text()


def test_readme_tables_hold_the_records_numbers(text):
    from scipy import stats

    # Section 4: one row per configuration over its (seed, fold) runs.
    base, probe = table_rows(text, "[confounded] real baseline")
    assert base[1:10] == ["synthemo", "confounded", "0.9", "word", "real", "smoke", "2",
                          "0/-, 1/-", "0.600"]  # fmt: skip
    low, high = stats.t.interval(0.95, 1, loc=0.6, scale=stats.sem([0.5, 0.7]))
    assert base[10:13] == ["0.141", f"{max(low, 0):.3f}", f"{min(high, 1):.3f}"]  # an accuracy
    assert base[13:15] == ["0.610", "0.580"]  # WA, macro-F1 means
    at = table_rows(text, "[confounded] real at word@conv2_1 β=1")
    assert at[0][9] == "0.562" and at[0][8] == "0/-"  # one run: no interval
    assert "0.777" not in text  # the cpu-profile record is not reported
    assert "from the 7 run records" in text
    ceiling = table_rows(text, "[unconfounded] real baseline")
    assert ceiling[0][9] == "0.625"
    assert probe[1:] == ["2", "0.600", "0.400"]  # section 5: the probe, per configuration


def test_every_row_names_the_records_it_was_read_from(reports, text):
    from qat import runs, tables

    on_disk = {p.stem: runs.load_record(p) for p in (reports / "runs").glob("*.json")}
    by_id = {tables.record_id(r): r for r in on_disk.values()}
    traced = re.findall(r"^- \[confounded\] real baseline: (.+)$", text, flags=re.M)
    named = re.findall(r"`([^`]+)`", traced[0])
    assert sorted(by_id[n]["metrics"]["ua"] for n in named) == [0.5, 0.7]
    for name in re.findall(r"`((?:ser|rhemo|orthogonal-[a-z-]+)-[0-9a-f]{16})`", text):
        assert name in by_id  # every named record is one under runs/


def test_readme_sweep_table_has_gain_over_the_matching_baseline(text):
    sweep = {row[1]: row for row in table_rows(text, "real at word β=1")}
    assert list(sweep) == ["conv1_1", "conv2_1"]  # network order
    assert sweep["conv2_1"][2:6] == ["1", "0.562", "1", "+0.062"]  # runs, UA, pairs, gain vs 0.5
    assert sweep["conv1_1"][2:6] == ["1", "0.438", "1", "-0.062"]
    assert sweep["conv1_1"][6:8] == ["–", "–"]  # one run: no interval


def test_readme_upstream_networks_in_one_table(text):
    header = next(line for line in text.splitlines() if line.startswith("| row | network |"))
    names = [c.strip() for c in header.strip().strip("|").split("|")]
    rows = [dict(zip(names, r, strict=True)) for n in ("1", "2") for r in table_rows(text, n)]
    by_network = {r["network"]: r for r in rows}
    assert set(by_network) == {"word recognition", "RH-emo"}
    word, rhemo = by_network["word recognition"], by_network["RH-emo"]
    assert (word["model"], word["profile"], word["accuracy"]) == ("real", "smoke", "0.875")
    assert word["RH-emo encoder"] == "–" and word["networks"] == "1"
    assert (rhemo["RH-emo encoder"], rhemo["trained on"], rhemo["accuracy"]) == (
        "published",
        "confounded",
        "0.500",
    )
    assert rhemo["reconstruction MSE"] == "0.25" and rhemo["j: arousal accuracy"] == "0.750"


def test_readme_figures_exist_and_every_section_names_its_command(reports, text):
    images = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)
    assert {"figures/tap_sweep.png", "figures/probe_by_tap.png",
            "figures/method_comparison_confounded.png",
            "figures/rhemo_heads.png"} <= set(images)  # fmt: skip
    # The unconfounded control holds baselines only: drawn as the ceiling, not a figure.
    assert not any("unconfounded" in image for image in images)
    for image in images:
        assert (reports / "smoke" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sections = [s for s in text.split("\n## ")[1:] if s[:1].isdigit()]
    assert len(sections) == 5
    for section in sections[:4]:
        assert "Reproduce: `qat run notebooks/0" in section and "-p profile smoke" in section
    leftovers = [p.name for p in reports.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_readme_without_records_says_so(tmp_path):
    (tmp_path / "runs").mkdir()
    text = report.write_readme(tmp_path, profile="cpu").read_text()
    assert "_No SER run records yet._" in text and "from the 0 run records" in text
    with pytest.raises(FileNotFoundError, match=r"reports_dir=.*missing"):
        report.write_readme(tmp_path / "missing")


def test_run_pipeline_runs_the_notebooks_in_order_then_writes_the_readme(monkeypatch, tmp_path):
    from qat import notebooks

    calls = []
    monkeypatch.setattr(
        notebooks, "run_notebook", lambda nb, params: calls.append((nb.name, params))
    )
    monkeypatch.setattr(report.paths, "REPORTS", tmp_path)
    (tmp_path / "runs").mkdir()
    readme = report.run_pipeline(profile="smoke")
    assert [name for name, _ in calls] == [f"{n}.ipynb" for n in notebooks.PIPELINE]
    assert all(params == {"profile": "smoke"} for _, params in calls)
    assert all((notebooks.FOLDER / name).exists() for name, _ in calls)
    assert readme == tmp_path / "smoke" / "README.md" and readme.exists()
    with pytest.raises(ValueError, match="profile='laptop'"):
        report.run_pipeline(profile="laptop")


def test_another_profile_never_replaces_the_committed_pages(reports):
    """A smoke (or paper) report writes reports/<profile>/; the committed profile's page and
    figures at the top of reports/ are left as they were."""
    committed = report.write_readme(reports, profile="cpu")
    assert committed == reports / "README.md"
    before = {p: p.read_bytes() for p in [committed, *(reports / "figures").glob("*.png")]}
    again = report.write_readme(reports, profile="smoke")
    assert again.parent == reports / "smoke"
    assert {p: p.read_bytes() for p in before} == before
    assert "the committed answer is in [../README.md](../README.md)" in again.read_text()


def test_the_lead_quotes_the_demonstrations_answer_and_links_every_page(tmp_path):
    """reports/README.md opens with the verdict of demonstration.md (its headlines, the
    finalists that gain on the headline's setting, the sweep, the targets), then links every
    page beside it; the per-configuration tables are collapsed."""
    (tmp_path / "runs").mkdir()
    for i, r in enumerate([ser("real", "baseline", 0.5, profile="cpu"),
                           ser("real", "at", 0.6, tap="conv2_1", profile="cpu")]):  # fmt: skip
        (tmp_path / "runs" / f"ser-{i:04d}.json").write_text(json.dumps(r))
    answer = [
        "- **real, word-confounded, rho 0.9: at does not beat its placebo.** at +0.010 [-0.02, "
        "+0.04]",
        "- real, word-confounded, rho 0.9: finalists whose UA gain over the baseline has a 95% "
        "interval above 0: dann.",
        "- real, word-confounded, rho 0.95: finalists whose UA gain over the baseline has a 95% "
        "interval above 0: jtt.",
        "- real: the best tap by mean gain is conv5_3 (+0.001 [-0.02, +0.03], 9 ms a step).",
        "- Targets: 1 of 7 met.",
        "- Runs with a record / planned: 2/2.",
    ]
    page = ["# Which method", "", "## Short answer", "", *answer, "", "## Protocol", "", "- x"]
    (tmp_path / "demonstration.md").write_text("\n".join(page))
    for name in ("instrument.md", "robustness.md"):
        (tmp_path / name).write_text("# page\n")
    text = report.write_readme(tmp_path, profile="cpu").read_text()
    lead = text.split("## Pages")[0]
    assert [line for line in lead.splitlines() if line.startswith("- ")] == [
        answer[0], answer[1], answer[3], answer[4]
    ]  # fmt: skip
    pages = text.split("## Pages")[1].split("\n## ")[0]
    assert re.findall(r"\]\(([a-z]+\.md)\)", pages) == [
        "demonstration.md",
        "instrument.md",
        "robustness.md",
    ]  # fmt: skip (benchmarks.md is not in this folder: not linked)
    table = text.index("| configuration |")
    assert text.rfind("<details>", 0, table) > text.rfind("</details>", 0, table)  # collapsed
    assert "[01_corpus.ipynb](01_corpus.ipynb)" not in text  # not executed here: no dead link
    (tmp_path / "01_corpus.ipynb").write_text("{}")
    text = report.write_readme(tmp_path, profile="cpu").read_text()
    assert "[01_corpus.ipynb](01_corpus.ipynb)" in text


def test_the_header_counts_code_versions_in_one_line(tmp_path):
    versions = ["qat 0.1.0 (abc1234)", "qat 0.1.0 (def5678+dirty)", "qat 0.1.0 (def5678+dirty)"]
    records = [{"kind": "ser", "code_version": v} for v in versions]
    header = report._header(records, "smoke", tmp_path)
    assert "Code versions: 2 (1 with uncommitted changes, marked +dirty)" in header
    assert "abc1234" not in header
    one = report._header(records[:1], "smoke", tmp_path)
    assert "Code version: `qat 0.1.0 (abc1234)`." in one


def test_curves_pair_the_best_method_run_with_the_baseline_of_its_seed_and_fold():
    """The showcase is the method run with the best validation UA (never test) and the baseline
    of the same (seed, fold, split); without one, the lowest-seed baseline, and the heading
    says which."""

    def run(method, seed, fold, val_ua, test_ua):
        r = ser("real", method, test_ua, tap="conv2_2", seed=seed)
        r["config"]["split"]["fold"] = fold
        r["selection_set"] = {"ua": val_ua}
        return r

    baselines = [run("baseline", s, f, 0.4, 0.4) for s, f in ((0, 0), (5, 1), (7, 2))]
    chosen = run("at", 5, 1, val_ua=0.6, test_ua=0.3)
    by_test = run("at", 7, 2, val_ua=0.5, test_ua=0.9)  # best on test: never the choice
    [pair] = report._showcase_pairs([by_test, *baselines, chosen])
    assert pair == [baselines[1], chosen]
    assert "a baseline run on the same (seed, fold)" in report._pair_heading(pair)

    unpaired = run("at", 9, 3, val_ua=0.7, test_ua=0.5)
    [pair] = report._showcase_pairs([*baselines, chosen, unpaired])
    assert pair == [baselines[0], unpaired]
    assert (
        "a baseline run of seed 0, fold 0 (no baseline shares the method run's)"
        in report._pair_heading(pair)
    )
    assert report._pair_heading(pair[:1]).endswith("one run (its curves, not a result)")


def test_the_tour_trains_small_then_reads_the_committed_results(monkeypatch, tmp_path):
    """make demo: notebooks 01-05 at the tour's size into reports/<tour>/, then 04 and 05 on
    the committed profile's records (records_only), then the committed page."""
    from qat import notebooks

    calls = []
    monkeypatch.setattr(notebooks, "run_notebook",
                        lambda nb, params, **kw: calls.append((nb.stem, params)))  # fmt: skip
    monkeypatch.setattr(report.paths, "REPORTS", tmp_path)
    (tmp_path / "runs").mkdir()
    pages = report.run_tour(log=None)
    assert pages == [tmp_path / "README.md", tmp_path / report.TOUR_PROFILE / "README.md"]
    tour, results = calls[: len(notebooks.PIPELINE)], calls[len(notebooks.PIPELINE) :]
    assert [name for name, _ in tour] == list(notebooks.PIPELINE)
    assert all(p == {"profile": report.TOUR_PROFILE} for _, p in tour)
    assert [name for name, _ in results] == list(report.RESULTS)
    for name, params in results:
        assert params["profile"] == notebooks.COMMITTED_PROFILE and params["records_only"]
        notebooks.check_parameter_names(notebooks.notebook_path(name), params)  # all known


def test_the_committed_records_cover_the_tours_results(monkeypatch):
    """Every run the demo's results read is a committed record (a profile or key change that
    orphans them fails here, not in a user's `make demo`)."""
    from qat import paths, widgets
    from qat.config import VGG16_TAPS

    monkeypatch.setattr(paths, "REPORTS", paths.ROOT / "reports")
    profile = {"profile": "cpu"}
    found = widgets.compare(**profile, **report.RESULTS["04_anti_transfer"])
    assert list(found) == ["baseline", "ceiling", "at"]
    sweep = dict(report.RESULTS["05_layer_sweep"])
    swept = widgets.sweep(taps=list(VGG16_TAPS), models=["real", "quaternion"], **profile, **sweep)
    assert len(swept) == 2 * (len(VGG16_TAPS) + 1)
