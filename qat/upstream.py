"""The networks a run stands on, trained once and cached under qat.paths.CACHE (keyed by the
hash of everything that determines them): RH-emo (or a reused frozen one) and the orthogonal
networks, from the kit's corpus or the user's data, and their placebos."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from qat import io, paths, runs
from qat.config import PROFILES, UPSTREAMS, RunConfig
from qat.data import corpora
from qat.data.records import corpus_digest
from qat.models import ENCODERS, RHEmo, vgg16
from qat.rundata import (
    Data,
    embed,
    feature_config,
    load_orthogonal_records,
    prepare_data,
    run_data,
    subset,
    train_config,
)
from qat.saved import save_rhemo
from qat.train import TrainConfig, evaluate, fit, fit_rhemo


def weights_digest(net: torch.nn.Module) -> str:
    """A digest of a network's weights and buffers: a run's record names the networks it
    stood on by it, so a network retrained under an older record (a lost cache) is noticed."""
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


_SOURCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def source_of(net: torch.nn.Module) -> dict | None:
    """{"record": the id of the cached network's record, "weights": its digest}, or None for
    a network the cache did not give (a user's file, the untrained placebo)."""
    return _SOURCES.get(net)


def _load_cached(path: Path, build):
    """The network cached at `path`, or None when there is none or it is unreadable."""
    if not path.exists():
        return None
    net = build()
    try:
        net.load_state_dict(torch.load(path, weights_only=True))
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        # The kit's own cache file, truncated or from other code: retrain it.
        warnings.warn(f"{path}: unreadable cached network ({err}); retraining", stacklevel=3)
        return None
    _SOURCES[net] = {"record": path.stem, "weights": weights_digest(net)}
    return net.eval()


def _cached_network(kind: str, config: dict, build, train_fn):
    """Load a trained network from the cache, or build, train, save and record it. Parallel
    runs that need the same network train it once: the others wait for it, then load it."""
    key = runs.config_key(config)
    path = paths.CACHE / "networks" / f"{kind}-{key}.pt"
    seen = _stamp(path)
    net = _load_cached(path, build)
    if net is not None:
        return net, path
    io.ensure_folder(path.parent, "network cache")
    with io.locked(path.with_suffix(".lock")):
        if _stamp(path) != seen:  # another process trained it while this one waited
            net = _load_cached(path, build)
        if net is None:
            net = _train_network(kind, config, path, build, train_fn)
    return net, path


def _stamp(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _train_network(kind: str, config: dict, path: Path, build, train_fn):
    net = build()
    ckpt = paths.CACHE / "checkpoints" / f"{path.stem}.ckpt"  # a killed training resumes
    io.ensure_folder(ckpt.parent, "checkpoint")
    t0 = time.perf_counter()
    info = train_fn(net, ckpt)
    io.write_atomic(path, lambda tmp: torch.save(net.state_dict(), tmp))
    record = {
        "kind": kind,
        "config": config,
        "network": str(path.relative_to(paths.ROOT))
        if path.is_relative_to(paths.ROOT)
        else str(path),
        "wall_time_s": time.perf_counter() - t0,
        "code_version": runs.code_version(),
        "weights_digest": weights_digest(net),
        **info,
    }
    target = runs.record_path(kind, config)
    try:
        io.write_json_once(target, record)
    except FileExistsError:  # another process trained it, or the cache was lost since
        earlier = runs.load_record(target).get("weights_digest")
        if earlier != record["weights_digest"]:
            warnings.warn(
                f"{path}: retrained; its record {target} describes another training "
                f"(weights {earlier or 'not recorded'}, now {record['weights_digest']}). "
                "Runs name the weights they used (upstream_weights).",
                stacklevel=2,
            )
    ckpt.unlink(missing_ok=True)  # the network is saved; the resume point is no longer needed
    _SOURCES[net] = {"record": path.stem, "weights": record["weights_digest"]}
    return net.eval()


# Profile keys that shape the data an RH-emo is trained on and its lr.
RHEMO_DATA = ("corpus", "features", "val_fraction", "folds", "n_test_speakers", "lr")


def _rhemo_run(run: RunConfig) -> RunConfig:
    """The run whose RH-emo `run` reads: itself, or the quaternion run of the same split under
    the profile its own names as `rhemo_profile` (which must compute the same data and
    features). Quaternion: a real network reading RH-emo under a profile that does not say so
    itself would otherwise be keyed without its RH-emo's encoder and design, the key of
    another RH-emo."""
    source = PROFILES[run.profile].get("rhemo_profile")
    if source is None:
        return run
    ours, theirs = PROFILES[run.profile], PROFILES[source]
    differ = [k for k in (*RHEMO_DATA, *(k for k in {*ours, *theirs} if k.startswith("rhemo_")))
              if k != "rhemo_profile" and ours.get(k) != theirs.get(k)]  # fmt: skip
    if differ:
        raise ValueError(
            f"profile={run.profile!r}: rhemo_profile={source!r} differs in "
            f"{', '.join(differ)}; expected the same data, features and RH-emo"
        )
    return run.replace(profile=source, model="quaternion", augment="none")


def rhemo_key(run: RunConfig) -> dict:
    """What the RH-emo a run reads depends on: the corpus, its split and the profile (not the
    method), so every method on a (seed, fold) shares one RH-emo."""
    k = _rhemo_run(run).key_dict()
    return {name: k[name] for name in ("corpus", "setup", "profile", "profile_settings", "seed",
                                       "root", "split", "rhemo_encoder", "upstream", "level")
            if name in k}  # fmt: skip


def rhemo_training(run: RunConfig) -> dict:
    """How the run's RH-emo is trained (qat.config.UPSTREAMS): fit_rhemo's epochs, recipe and
    loss weights. v1: Adam at the profile's lr, or the profile's `rhemo_recipe` (a diagnosis),
    every epoch run and the last kept."""
    p, design = PROFILES[run.profile], UPSTREAMS[run.upstream]
    if design["recipe"] is None:
        recipe = p.get("rhemo_recipe")
        recipe = recipe and TrainConfig(lr=p["lr"], selection="final", **recipe)
        return dict(epochs=p["rhemo_epochs"], lr=p["lr"], recipe=recipe,
                    weights=design["rhemo_weights"])  # fmt: skip
    recipe = TrainConfig(batch_size=p["batch_size"], **design["recipe"])
    return dict(epochs=design["rhemo_epochs"], lr=recipe.lr, recipe=recipe,
                weights=design["rhemo_weights"])  # fmt: skip


def pretrain_rhemo(run: RunConfig, data: Data | None = None, progress: bool = True) -> RHEmo:
    """RH-emo trained on the training items of the run's split (never the test set), as the
    run's `upstream` says (rhemo_training); the run's `rhemo_encoder`."""
    run = _rhemo_run(run)
    data = data or run_data(run, progress)

    def build():
        return _initial_rhemo(run, len(data.label_space.emotions))

    def train_fn(net, checkpoint):
        return fit_rhemo(net, data.train, data.val, seed=run.seed, progress=progress,
                         checkpoint=checkpoint, **rhemo_training(run))  # fmt: skip

    return _cached_network("rhemo", rhemo_key(run), build, train_fn)[0]


def _initial_rhemo(run: RunConfig, num_emotions: int) -> RHEmo:
    """The run's RH-emo encoder at its initial weights (they follow the run, not the process)."""
    torch.manual_seed(run.seed)
    return ENCODERS[run.rhemo_encoder].build(num_emotions, PROFILES[run.profile]["rhemo_pools"])


def untrained_rhemo(run: RunConfig, num_emotions: int) -> RHEmo:
    """The run's RH-emo at its initial weights, frozen: embeddings of the trained one's shape,
    for measuring what a step costs (which does not depend on the weights)."""
    rhemo = _initial_rhemo(_rhemo_run(run), num_emotions).eval()
    rhemo.requires_grad_(False)
    return rhemo


def _word_corpus(root: str, progress: bool):
    """A word corpus from the user's disk: a Speech Commands folder (one folder per word) or any
    manifest with a text column."""
    root = Path(root)
    if root.is_dir() and not (root / "manifest.csv").exists():
        return corpora.load_corpus("speechcommands", root)
    return corpora.load_corpus("manifest", root)


def _as_sessions(records) -> list:
    """IEMOCAP records with the session (Ses01..Ses05) as their speaker: the published code's
    "speaker" network was a session classifier."""
    return [dataclasses.replace(r, speaker=r.speaker[:5]) for r in records]


def _orthogonal_data(run: RunConfig, ser: Data | None, task: str, progress: bool):
    """What the orthogonal network of `run` learns from: (records, setup, label, source)."""
    p = PROFILES[run.profile]
    synthemo = run.corpus == "synthemo" and run.root is None
    if task == "word" and run.orthogonal_root is None and not synthemo:
        raise ValueError(
            f"orthogonal_root=None: a word network for corpus={run.corpus!r} needs words from "
            "the user's data: a Speech Commands folder or a manifest with a text column"
        )
    if task == "word" and run.orthogonal_root is not None:
        records = _word_corpus(run.orthogonal_root, progress)
        root = str(Path(run.orthogonal_root).resolve())
        return (
            records,
            p.get("orthogonal_setup", "random"),
            "word",
            {"corpus": records[0].corpus, "root": root, "digest": corpus_digest(records)},
        )
    if synthemo:  # the kit's neutral-prosody corpus, more speakers
        records = load_orthogonal_records(run.profile, progress)
        setup = p.get("orthogonal_setup", "random") if task == "word" else "random"
        return records, setup, task, None
    # The SER corpus's own training speakers (never the test fold's), or their sessions.
    records = [ser.records[i] for i in ser.train.indices]
    if task == "session":
        if run.corpus != "iemocap":
            raise ValueError(f"orthogonal='session': expected corpus='iemocap', got {run.corpus!r}")
        records = _as_sessions(records)
    source = {"corpus": run.corpus, "root": str(Path(run.root).resolve()),
              "split": ser.split.digest(), "part": "train"}  # fmt: skip
    return records, "random", "speaker", source


def export_rhemo(run: RunConfig, out: str | os.PathLike | None = None, progress=True) -> Path:
    """Pretrain RH-emo on the training items of a corpus's split (e.g. IEMOCAP) and save it
    frozen, with its feature config, for reuse on other corpora (`rhemo=PATH`). An existing
    file is never overwritten."""
    data = run_data(run, progress)
    rhemo = pretrain_rhemo(run, data, progress)
    key = rhemo_key(run)
    out = Path(out) if out else paths.CACHE / "rhemo" / f"rhemo-{runs.config_key(key)}.pt"
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out (files are never overwritten)")
    source = {**key, "corpus": run.corpus, "emotions": list(data.label_space.emotions),
              "split": data.split.digest(), "train_items": len(data.train.x)}  # fmt: skip
    return save_rhemo(out, rhemo, feature_config=feature_config(run.profile, run.level),
                      source=source)  # fmt: skip


def pretrain_orthogonal(
    run: RunConfig, ser: Data | None = None, rhemo=None, progress: bool = True
) -> torch.nn.Module:
    """The frozen orthogonal network of a run: a word, speaker or (IEMOCAP) session classifier
    VGG16; or a placebo of the same architecture, "random" (left at its initial weights) or
    "shuffled" (trained on word labels shuffled across items). The quaternion one reads RH-emo
    embeddings, so it is tied to (and keyed by) that RH-emo's weights. Its record says which
    corpus, task and classes it used."""
    model, profile, p = run.model, run.profile, PROFILES[run.profile]
    task = "word" if run.orthogonal in ("random", "shuffled") else run.orthogonal
    records, setup, label, source = _orthogonal_data(run, ser, task, progress)
    data = prepare_data(records, setup, profile, 0, progress, target=label, level=run.level)
    if run.orthogonal == "shuffled":
        data = _shuffled(data, label)
    train, val, test = data.train, data.val, data.test
    if model == "quaternion" and rhemo is None:
        raise ValueError(
            "a quaternion orthogonal network needs the frozen RH-emo it reads: pass rhemo="
        )
    classes = list(getattr(data.label_space, f"{label}s"))
    in_channels = (embed(rhemo, subset(train, 1)) if model == "quaternion" else train).x.shape[1]

    def build():
        torch.manual_seed(0)  # the placebo's "initial weights" are a fixed draw
        return vgg16(
            len(classes), in_channels=in_channels, quaternion=model == "quaternion",
            width=run.width,
        )  # fmt: skip

    if run.orthogonal == "random":
        net = build().eval()
        for param in net.parameters():
            param.requires_grad_(False)
        return net
    rhemo_key = None
    if model == "quaternion":  # a trained network reads every item's embedding
        train, val, test = (embed(rhemo, d) for d in (train, val, test))
        rhemo_key = runs.config_key({k: v.tolist() for k, v in rhemo.state_dict().items()})
    config = dict(task=run.orthogonal, model=model, profile=profile,
                  profile_settings=runs.config_key(p), seed=0, rhemo=rhemo_key)  # fmt: skip
    if source is not None:
        config["source"] = source
    if run.level != "raw":  # it reads the run's input: trained on it
        config["level"] = run.level
    if model == "quaternion" and run.rhemo_encoder != "published":  # named, for its reader
        config["rhemo_encoder"] = run.rhemo_encoder
    if UPSTREAMS[run.upstream]["recipe"] is not None:  # keyed by the recipe, not its name
        recipe = dataclasses.asdict(orthogonal_training(run, label))
        config["recipe"] = {k: v for k, v in recipe.items() if k != "device"}

    def train_fn(net, checkpoint):
        result = fit(net, train, val, orthogonal_training(run, label), progress=progress,
                     name=f"{run.orthogonal} network", checkpoint=checkpoint)  # fmt: skip
        return {
            "history": result["history"],
            "kept_epoch": result["best_epoch"],
            "stopped": result["stopped"],
            "rhemo_record": (source_of(rhemo) or {}).get("record") if rhemo else None,
            "metrics": evaluate(net, test, target=label, num_classes=len(classes)),
            "source": {
                "corpus": records[0].corpus,
                "task": run.orthogonal,
                "label": label,
                "classes": classes,
                "setup": setup,
            },
        }

    return _cached_network(f"orthogonal-{run.orthogonal}-{model}", config, build, train_fn)[0]


def orthogonal_training(run: RunConfig, label: str) -> TrainConfig:
    """The orthogonal network's recipe: v1, the profile's SER recipe for `orthogonal_epochs`;
    otherwise the run's upstream recipe (early stopping, best-validation weights)."""
    design = UPSTREAMS[run.upstream]
    if design["recipe"] is None:
        p = PROFILES[run.profile]
        return train_config(run.profile, 0, epochs=p["orthogonal_epochs"], target=label)
    return train_config(run.profile, 0, epochs=design["orthogonal_epochs"], target=label,
                        **design["recipe"])  # fmt: skip


def _shuffled(data: Data, label: str) -> Data:
    """The same items with `label` permuted across the training, validation and test items (a
    fixed permutation): a network trained on it learns nothing that generalises about words."""
    rng = np.random.default_rng(0)
    for part in (data.train, data.val, data.test):
        values = part.labels[label].numpy()
        part.labels[label] = torch.from_numpy(values[rng.permutation(len(values))])
    return data
