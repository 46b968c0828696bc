"""`qat perturb`: a saved model on its run's test split, clean and perturbed, paired item by
item. Checked here: the items are the split's and the clean answers are `qat predict`'s, a gain
of 0 dB reproduces the clean predictions exactly, babble mixes other speakers, records are
reused unless --force, the refusals, and reports/perturbations.md against numpy computations
from the records."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import test_saved

from qat import cli, io, paths, perturbed, runs
from qat.data.corpora import load_corpus
from qat.data.splits import Split
from qat.perturb import Perturbation
from qat.saved import load_model, save_model, stored_path

RUN = {
    "corpus": "synthemo", "setup": "speaker", "model": "real", "method": "baseline",
    "seed": 0, "profile": "smoke", "split": {},
}  # fmt: skip
PAGE_SET = ["gain-10dB", "white-10dB", "babble-10dB", "rt60-0.3s", "8kHz"]


def _publish(base: Path, built, reports: Path, run: dict, test_uids, name: str) -> Path:
    """A model file of the built network whose run record and split are under `reports`."""
    path = save_model(
        base / f"{name}.pt", built.net, model_config=test_saved.model_config(4),
        feature_config=test_saved.FEATURES, normalizer=built.normalizer,
        label_space=built.labels, run=run,
    )  # fmt: skip
    uids = [r.uid for r in built.records]
    split = Split("speaker", run["seed"], tuple(u for u in uids if u not in test_uids), (),
                  tuple(test_uids), {"test_speakers": [test_saved.TEST_SPEAKER]})  # fmt: skip
    io.write_json(reports / "splits" / f"{split.digest()}.json", split.to_dict())
    record = {"kind": "ser", "config": run, "split": {"digest": split.digest()},
              "metrics": {"ua": 0.5}, "model": stored_path(path)}  # fmt: skip
    io.write_json(runs.record_path("ser", run, reports), record)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny trained network of test_saved, saved twice (runs of seeds 0 and 1: one method
    on two (seed, fold) pairs), each with a run record and split in its own reports folder."""
    base = tmp_path_factory.mktemp("perturbed")
    built = test_saved.build_model(base)
    reports = base / "reports"
    run = {**RUN, "root": str(base / "corpus")}
    corpus = load_corpus("synthemo", base / "corpus")
    test_uids = [r.uid for r in corpus if r.speaker == test_saved.TEST_SPEAKER]
    paths_ = [
        _publish(base, built, reports, {**run, "seed": seed}, test_uids, f"model-{seed}")
        for seed in (0, 1)
    ]
    return SimpleNamespace(
        path=paths_[0], second=paths_[1], reports=reports, base=base, built=built, run=run,
        corpus=corpus, test_uids=test_uids,
        test_files=[r.path for r in corpus if r.speaker == test_saved.TEST_SPEAKER],
    )  # fmt: skip


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def ua(emotions, correct) -> float:
    """UA written out: the mean over the emotions present of the share correct."""
    emotions, correct = np.asarray(emotions), np.asarray(correct, dtype=float)
    return float(np.mean([correct[emotions == e].mean() for e in np.unique(emotions)]))


# ---------------------------------------------------------------- pairing and scoring


def test_clean_and_perturbed_are_paired_on_the_split_and_0_db_changes_nothing(model, monkeypatch):
    bars = []
    real_tqdm = perturbed.tqdm

    def recording(iterable, **kwargs):
        bars.append(kwargs["desc"])
        return real_tqdm(iterable, **kwargs)

    monkeypatch.setattr(perturbed, "tqdm", recording)
    unity, quieter = perturbed.evaluate_perturbations(
        model.path, perturbations=[Perturbation("gain", 0.0), Perturbation("gain", -10.0)],
        reports=model.reports, progress=False,
    )  # fmt: skip
    name = perturbed.model_name(load_model(model.path))
    assert bars == [f"{name} clean", f"{name} gain+0dB", f"{name} gain-10dB"]

    # The split's test items, in its order, each scored whole as `qat predict` scores it.
    rows = load_model(model.path).predict_files(model.test_files)
    for record in (unity, quieter):
        items = record["per_item"]
        assert items["uids"] == model.test_uids
        assert items["clean"] == [r.emotion for r in rows]
        truth = [model.corpus[[r.uid for r in model.corpus].index(u)].emotion
                 for u in items["uids"]]  # fmt: skip
        assert items["emotions"] == truth
        correct = [int(p == t) for p, t in zip(items["clean"], truth, strict=True)]
        assert items["clean_correct"] == correct
        assert record["paired"]["clean_ua"] == pytest.approx(ua(truth, correct), abs=1e-12)
        assert record["kind"] == "eval" and runs.record_problem(record) is None
        assert record["config"]["model"]["sha256"] and record["config"]["seed"] == 0
    assert unity["clean"] == quieter["clean"]

    # 0 dB: the same samples, the same segments, the same batches: the same answers exactly.
    assert unity["per_item"]["perturbed"] == unity["per_item"]["clean"]
    assert unity["metrics"] == unity["clean"]["metrics"]
    assert unity["paired"]["unchanged"] == 1.0 and unity["paired"]["ua_difference"] == 0.0
    moved = quieter["per_item"]
    unchanged = np.mean(np.array(moved["perturbed"]) == np.array(moved["clean"]))
    assert quieter["paired"]["unchanged"] == pytest.approx(unchanged, abs=1e-12)
    assert quieter["metrics"]["ua"] == pytest.approx(
        ua(moved["emotions"], moved["perturbed_correct"]), abs=1e-12
    )


def test_windows_are_those_of_qat_saved_segments(model):
    from qat.data.audio import load_audio
    from qat.saved import segments

    predictor = load_model(model.path)
    for file in model.test_files[:3]:
        y = load_audio(file, 16000)
        y[: len(y) // 2] = 0  # a silent first segment is left out by both
        kept, silent = segments(y, predictor.feature_config)
        cuts = perturbed.windows(y, predictor)
        assert len(cuts) == len(kept) == 1 and silent == 1
        assert all(np.array_equal(y[c], k) for c, k in zip(cuts, kept, strict=True))


def test_babble_mixes_other_speakers(model):
    (record,) = perturbed.evaluate_perturbations(
        model.path, ["babble-10dB"], reports=model.reports, progress=False
    )
    speaker = {r.uid: r.speaker for r in model.corpus}
    notes = record["perturbation"]
    assert notes["speakers_from"] == "corpus"  # one test speaker: the corpus's others
    assert len(notes["mixed"]) == len(record["per_item"]["uids"])
    for uid, talkers in zip(record["per_item"]["uids"], notes["mixed"], strict=True):
        voices = [speaker[t] for t in talkers]
        assert speaker[uid] not in voices and len(set(voices)) == len(voices) == 2


# ---------------------------------------------------------------- records


def test_an_existing_record_is_reused_unless_forced(model, monkeypatch):
    first = perturbed.evaluate_perturbations(
        model.path, ["gain+6dB"], reports=model.reports, progress=False
    )
    monkeypatch.setattr(perturbed, "_predict", lambda *a, **k: pytest.fail("scored again"))
    again = perturbed.evaluate_perturbations(
        model.path, ["gain+6dB"], reports=model.reports, progress=False
    )
    assert again[0]["record_path"] == first[0]["record_path"]
    assert again[0]["per_item"] == first[0]["per_item"]
    monkeypatch.undo()
    forced = perturbed.evaluate_perturbations(
        model.path, ["gain+6dB"], reports=model.reports, progress=False, force=True
    )
    assert forced[0]["record_path"] != first[0]["record_path"]
    assert Path(first[0]["record_path"]).is_file()  # write-once: the first is kept
    assert forced[0]["per_item"] == first[0]["per_item"]  # and the rerun reproduces it


def test_a_subsample_of_the_test_items_is_drawn_by_the_seed(model):
    def drawn(items, seed=0):
        (record,) = perturbed.evaluate_perturbations(
            model.path, ["gain-10dB"], items=items, seed=seed, reports=model.reports,
            progress=False,
        )  # fmt: skip
        return record

    first, again, other = drawn(6), drawn(6), drawn(6, seed=1)
    assert again["record_path"] == first["record_path"] and first["config"]["test"]["items"] == 6
    uids = first["per_item"]["uids"]
    assert len(uids) == 6 and set(uids) <= set(model.test_uids)
    assert uids == [u for u in model.test_uids if u in uids]  # in the split's order
    assert other["per_item"]["uids"] != uids
    everything = drawn(len(model.test_uids) + 5)  # more than there are: every item
    assert everything["config"]["test"]["items"] is None
    assert everything["per_item"]["uids"] == model.test_uids


# ---------------------------------------------------------------- refusals


def test_refusals_are_one_line(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "REPORTS", model.reports)
    missing = tmp_path / "missing.pt"
    code, out, err = run_cli(capsys, "perturb", "--model", missing)
    assert code == 2 and out == [] and len(err) == 1
    assert err[0].startswith(f"qat: error: model file {missing} ") and "does not exist" in err[0]

    code, out, err = run_cli(capsys, "perturb", "--model", model.path, "--only", "gain-15dB")
    assert code == 2 and out == [] and len(err) == 1
    assert "'gain-15dB': not a declared perturbation" in err[0] and "gain-10dB" in err[0]

    for argv in (["perturb"], ["perturb", "--report-only", "--model", model.path]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and err[0].startswith("qat: error: perturb")


def test_a_model_without_its_run_record_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="its test split is unknown"):
        perturbed.evaluate_perturbations(model.path, ["gain-10dB"], reports=tmp_path,
                                         progress=False)  # fmt: skip
    path = save_model(
        tmp_path / "no-run.pt", model.built.net, model_config=test_saved.model_config(4),
        feature_config=test_saved.FEATURES, normalizer=model.built.normalizer,
        label_space=model.built.labels, run={},
    )  # fmt: skip
    with pytest.raises(ValueError, match="names no run"):
        perturbed.evaluate_perturbations(path, reports=model.reports, progress=False)


def test_a_degenerate_test_set_is_refused(model, tmp_path):
    reports = tmp_path / "reports"
    sad = [r.uid for r in model.corpus if r.speaker == test_saved.TEST_SPEAKER
           and r.emotion == "sad"]  # fmt: skip
    path = _publish(tmp_path, model.built, reports, {**model.run, "seed": 7}, sad, "one-class")
    with pytest.raises(ValueError, match=r"holds 3 item\(s\) of 1 emotion\(s\).*mean nothing"):
        perturbed.evaluate_perturbations(path, ["gain-10dB"], reports=reports, progress=False)
    with pytest.raises(ValueError, match="items=1: expected an integer >= 2"):
        perturbed.evaluate_perturbations(model.path, ["gain-10dB"], items=1,
                                         reports=model.reports, progress=False)  # fmt: skip


# ---------------------------------------------------------------- the page


def _table(lines: list[str], heading: str) -> dict[str, list[str]]:
    """{first cell: cells} of the first table after the line `heading`."""
    start = lines.index(heading)
    rows = {}
    for line in lines[start + 1 :]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_the_page_reproduces_the_records(model, monkeypatch, capsys):
    monkeypatch.setattr(paths, "REPORTS", model.reports)
    for path in (model.path, model.second):
        code, out, err = run_cli(capsys, "perturb", "--model", path, "--only", *PAGE_SET)
        assert code == 0, err
        assert [line.split(":")[0] for line in out[:-1]] == PAGE_SET
    code, out, _ = run_cli(capsys, "perturb", "--report-only")
    assert code == 0 and out == [str(model.reports / "perturbations.md")]
    text = (model.reports / "perturbations.md").read_text()
    lines = text.splitlines()
    assert "finalists (issue 34) are not trained yet" in text
    assert (model.reports / "figures" / "perturbations.png").stat().st_size > 0
    assert "![UA against gain and SNR](figures/perturbations.png)" in text

    records = {}
    for r in runs.load_records(model.reports, kind="eval"):
        if r["config"]["seed"] == 0 and r["config"]["test"]["items"] is None:
            records.setdefault(r["config"]["model"]["run"]["seed"], {})[
                r["config"]["perturbation"]["name"]
            ] = r  # a forced rerun is the same numbers
    label = perturbed.model_name(load_model(model.path))
    assert f"`{stored_path(model.path)}`" in text and f"`{stored_path(model.second)}`" in text

    def uas(r):
        items = r["per_item"]
        clean = ua(items["emotions"], items["clean_correct"])
        moved = ua(items["emotions"], items["perturbed_correct"])
        same = np.mean(np.array(items["clean"]) == np.array(items["perturbed"]))
        return clean, moved, same

    # One model: its table, from numpy over the per-item correctness.
    heading = f"### {label}, seed 0: 12 test items, noise seed 0"
    clean = uas(records[0][PAGE_SET[0]])[0]
    assert lines[lines.index(heading) + 2].startswith(f"Clean UA {clean:.3f} on 12 test items")
    table = _table(lines, heading)
    assert set(PAGE_SET) <= set(table)
    for name in PAGE_SET:
        clean, moved, same = uas(records[0][name])
        ua_cell, diff, low, high, unchanged, n = table[name]
        assert (ua_cell, diff, unchanged, n) == (
            f"{moved:.3f}",
            f"{moved - clean:+.3f}",
            f"{same:.1%}",
            "12",
        )
        assert float(low) <= float(diff) <= float(high)

    # One method over its two runs: means over the pairs.
    method = [line for line in lines if line.startswith("### ") and "2 runs" in line]
    assert len(method) == 1
    table = _table(lines, method[0])
    for name in PAGE_SET:
        per_run = [uas(records[seed][name]) for seed in (0, 1)]
        cells = dict(zip(table["perturbation"], table[name], strict=True))
        assert cells["clean UA"] == f"{np.mean([c for c, _, _ in per_run]):.3f}"
        assert cells["UA"] == f"{np.mean([m for _, m, _ in per_run]):.3f}"
        assert cells["UA difference"] == f"{np.mean([m - c for c, m, _ in per_run]):+.3f}"
        assert cells["unchanged"] == f"{np.mean([s for _, _, s in per_run]):.1%}"
        assert cells["runs"] == "2"
    assert not re.search(r"\bnan\b", text)


def test_the_figure_has_labelled_axes_with_units():
    from qat import plots

    fig = plots.perturbation_curves({
        "a": {"clean": 0.6, "gain": {-20.0: 0.3, -10.0: 0.4, 6.0: 0.55},
              "white": {20.0: 0.5, 10.0: 0.4, 5.0: 0.3}, "babble": {10.0: 0.45}},
        "b": {"clean": 0.5, "gain": {-10.0: 0.45}},
    })  # fmt: skip
    gain_ax, snr_ax = fig.axes
    assert gain_ax.get_xlabel().startswith("gain (dB") and snr_ax.get_xlabel() == "SNR (dB)"
    assert gain_ax.get_ylabel() == "UA (fraction)"
    assert len(gain_ax.get_lines()) == 2 + 2  # two models and their clean references
    with pytest.raises(ValueError, match="no model has a gain or noise"):
        plots.perturbation_curves({"a": {"clean": 0.5}})
