"""End to end on a tiny SynthEmo: pretrain a word network, train baseline and AT for real and
quaternion models, and check that every run record holds every field."""

import pytest
import torch

from qat import experiments, paths, rundata, runs, upstream

RECORD_FIELDS = {"kind", "config", "split", "labels", "metrics", "confound", "probe", "history",
                 "best_epoch", "resources", "at_cache", "code_version", "wall_time_s",
                 "upstream_weights"}  # fmt: skip


@pytest.mark.parametrize("model", ["real", "quaternion"])
def test_baseline_and_anti_transfer_write_complete_records(model):
    baseline = experiments.train_ser(
        model=model, method="baseline", profile="smoke", progress=False
    )
    at = experiments.train_ser(
        model=model, method="at", tap="conv2_1", beta=1.0, profile="smoke", progress=False
    )
    for record in (baseline, at):
        assert RECORD_FIELDS <= record.keys()
        assert 0.0 <= record["metrics"]["ua"] <= 1.0
        assert len(record["metrics"]["confusion"]) == len(record["labels"]["emotions"])
        assert set(record["confound"]) == {
            "congruent_ua",
            "incongruent_ua",
            "follows_shortcut",
            "congruent_share_test",
        }
        # The probe covers the fixed taps and the tap the method acted at.
        assert set(record["probe"]["word"]) == {*experiments.PROBE_TAPS, *record["config"]["taps"]}
        res = record["resources"]
        assert res["params"] > 0 and res["flops_per_step"] > 0 and res["peak_memory_bytes"] > 0
        assert record["history"] and record["history"][0]["val_loss"] > 0
    assert "at" in at["history"][0] and "at" not in baseline["history"][0]
    # The runs name the cached networks they stood on, by record and weights.
    used = at["upstream_weights"]
    assert set(used) == ({"rhemo", "orthogonal"} if model == "quaternion" else {"orthogonal"})
    for network in used.values():
        path = paths.REPORTS / "runs" / f"{network['record']}.json"
        assert runs.load_record(path)["weights_digest"] == network["weights"]
    assert at["at_cache"]["misses"] > 0
    # Re-running the same configuration returns the stored record instead of training again.
    again = experiments.train_ser(
        model=model, method="at", tap="conv2_1", beta=1.0, profile="smoke", progress=False
    )
    assert again == runs.load_record(runs.record_path("ser", at["config"]))
    kinds = {r.get("kind") for r in runs.load_records()}
    assert {"orthogonal-word-" + model, "ser"} <= kinds
    # Every network and run is saved with its record, so none of their resume points is left.
    saved = {p.stem for p in (paths.CACHE / "networks").glob("*.pt")}
    saved |= {f"ser-{runs.config_key(r['config'])}" for r in (baseline, at)}
    left = {p.stem for p in (paths.CACHE / "checkpoints").glob("*.ckpt")}
    assert saved and not saved & left


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(tap="conv9_9", method="at"), "conv9_9"),
        (dict(beta=-1.0, method="at"), "beta"),
        (dict(model="complex"), "model"),
        (dict(setup="shuffled"), "setup"),
        (dict(profile="gpu"), "profile"),
        (dict(corpus="iemocap"), "root"),
        (dict(corpus="iemocap", root="/nonexistent/iemocap"), "/nonexistent/iemocap"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        experiments.train_ser(profile=kwargs.pop("profile", "smoke"), progress=False, **kwargs)


def test_a_relabelled_manifest_gets_a_new_record_and_a_moved_one_the_same(tmp_path, monkeypatch):
    import csv
    import shutil
    from pathlib import Path

    from qat.config import RunConfig

    corpus = rundata.load_records("synthemo", "smoke", progress=False)
    source = rundata.synthemo_folder("smoke")
    folder = tmp_path / "mine"
    shutil.copytree(source / "wav", folder / "audio")
    rows = [{"path": "audio/" + str(Path(r.path).relative_to(source / "wav")),
             "emotion": r.emotion, "speaker": r.speaker, "text": r.text}
            for r in corpus]  # fmt: skip

    def write(rows):
        with open(folder / "manifest.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "emotion", "speaker", "text"])
            writer.writeheader()
            writer.writerows(rows)

    write(rows)
    settings = dict(corpus="manifest", setup="random", profile="smoke", progress=False)
    first = experiments.train_ser(root=str(folder), **settings)
    rows[0]["emotion"] = "angry" if rows[0]["emotion"] != "angry" else "sad"
    write(rows)
    second = experiments.train_ser(root=str(folder), **settings)
    assert second["config"]["data_digest"] != first["config"]["data_digest"]
    assert second["config"] != first["config"]
    # The same content elsewhere, named by a relative path: a different root, so a new key,
    # but the same data digest; the path is resolved, never taken as typed.
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    monkeypatch.chdir(tmp_path)
    third = experiments.train_ser(root="elsewhere", **settings)
    assert third["config"]["data_digest"] == second["config"]["data_digest"]
    assert third["config"]["root"] == str(moved.resolve())
    assert RunConfig(corpus="manifest", root="elsewhere").key_dict()["root"] == str(moved)


@pytest.mark.parametrize("model", ["real", "quaternion"])
def test_the_saved_model_predicts_what_the_run_recorded(model):
    from qat import load_model
    from qat.config import RunConfig

    config = RunConfig(model=model, method="baseline", profile="smoke")
    record = experiments.train_ser(config, progress=False)
    predictor = load_model(record["model"])
    data = rundata.run_data(config, progress=False)
    files = [data.records[i].path for i in data.test.indices]
    rows = predictor.predict_files(files, whole=False)  # the run scored the centre segment
    assert all(row.error is None for row in rows)
    predicted = [predictor.emotions.index(row.emotion) for row in rows]
    assert predicted == record["metrics"]["predictions"]


def test_an_exported_rhemo_is_reused_and_a_feature_mismatch_is_named(tmp_path):
    from qat.config import PROFILES, RunConfig
    from qat.saved import load_rhemo

    run = RunConfig(model="quaternion", setup="random", profile="smoke")
    path = upstream.export_rhemo(run, tmp_path / "rhemo.pt", progress=False)
    with pytest.raises(FileExistsError, match=r"rhemo\.pt exists"):
        upstream.export_rhemo(run, path, progress=False)
    rhemo, source = load_rhemo(path)
    assert source["corpus"] == "synthemo" and source["train_items"] > 0
    record = experiments.train_ser(run.replace(rhemo=str(path), setup="confounded"),
                                   progress=False)  # fmt: skip
    assert record["config"]["rhemo"]["path"] == str(path.resolve())
    reused = experiments.train_ser(run.replace(rhemo=str(path), setup="confounded"),
                                   progress=False)  # fmt: skip
    assert reused == record
    other = dict(PROFILES["smoke"]["features"], n_mels=40)
    from qat.data.features import FeatureConfig

    with pytest.raises(ValueError, match="n_mels"):
        load_rhemo(path, FeatureConfig(**other))
    assert isinstance(rhemo, torch.nn.Module)


def test_fold_all_runs_every_speaker_fold_of_a_four_speaker_manifest(tmp_path, capsys):
    import csv
    import shutil
    from pathlib import Path

    from qat import cli

    corpus = rundata.load_records("synthemo", "smoke", progress=False)
    source = rundata.synthemo_folder("smoke")
    shutil.copytree(source / "wav", tmp_path / "audio")
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "emotion", "speaker", "text"])
        writer.writeheader()
        for r in corpus:
            path = "audio/" + str(Path(r.path).relative_to(source / "wav"))
            writer.writerow({"path": path, "emotion": r.emotion, "speaker": r.speaker,
                             "text": r.text})  # fmt: skip
    argv = ["train", "--corpus", "manifest", "--root", str(tmp_path), "--setup", "speaker",
            "--fold", "all", "--profile", "smoke"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 folds: UA mean" in out  # leave-one-speaker-out: 4 speakers, 4 folds
    from qat import runs

    folds = [r for r in runs.load_records(kind="ser") if r["config"]["corpus"] == "manifest"
             and r["config"]["setup"] == "speaker"]  # fmt: skip
    tested = sorted(s for r in folds for s in r["split"]["test_speakers"])
    assert len(folds) == 4 and tested == sorted({r.speaker for r in corpus})
    for r in folds:  # trains on three speakers, tests on one, validates on training speakers
        assert len(r["split"]["test_speakers"]) == 1
