"""Recipes the notebooks, the CLI and the sweeps call: build the data, pretrain the
orthogonal networks and RH-emo, train SER with or without an invariance method, and write one
run record per run.

A run's settings are one qat.config.RunConfig; its profile sets the sizes. Trained networks
are cached under qat.paths.CACHE, keyed by the hash of everything that determines them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qat import io, paths, resources, robust, runs
from qat.adversarial import Adversary
from qat.antitransfer import AntiTransfer, init_from
from qat.config import MODELS, PROFILES, REGIMES, TAPS, RunConfig, check_choice
from qat.data import corpora, splits, synth
from qat.data.dataset import LabelSpace, Normalizer, SERDataset
from qat.data.features import FeatureConfig, extract_features
from qat.data.records import corpus_digest
from qat.models import VGG16_TAPS, RHEmo, vgg16
from qat.probe import pooled_at_taps, probe_accuracy
from qat.saved import load_model, load_rhemo, model_path, save_model, save_rhemo
from qat.sweep import run_grid
from qat.train import (
    Step,
    TrainConfig,
    evaluate,
    fit,
    fit_rhemo,
    make_optimizer,
    predict,
    rank_and_world,
)

PROBE_TAPS = ("conv2_2", "conv3_3", "conv4_3", "conv5_3", "penultimate")


def _device() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}"


@contextlib.contextmanager
def _rank_zero_first():
    """Under torchrun, rank 0 builds shared things (corpus, caches, networks) while the other
    ranks wait; they then find everything cached."""
    rank, world = rank_and_world()
    if world > 1 and rank > 0:
        torch.distributed.barrier()
    yield
    if world > 1 and rank == 0:
        torch.distributed.barrier()


# ---------------------------------------------------------------- data


def load_records(corpus: str = "synthemo", profile: str = "cpu", root=None, progress=True):
    """The corpus's utterance records: SynthEmo is synthesised (or reused) under
    qat.paths.DATA; a real corpus is read from `root`, the folder in its official layout."""
    check_choice("profile", profile, PROFILES)
    if corpus == "synthemo" and root is None:
        options = _synth_options(PROFILES[profile]["corpus"], synth.DEFAULT_SPEAKERS)
        return synth.make_synthemo(synthemo_folder(profile), progress=progress, **options)
    if root is None:
        raise FileNotFoundError(
            f"corpus={corpus!r} needs root=<folder of the corpus in its official layout>; "
            "or use corpus='synthemo', which the kit builds itself"
        )
    check_choice("corpus", corpus, corpora.CORPORA)
    return corpora.load_corpus(corpus, root)


def synthemo_folder(profile: str) -> Path:
    """The profile's SynthEmo folder: profiles with the same corpus sizes share one."""
    return paths.DATA / f"synthemo-{runs.config_key(PROFILES[profile]['corpus'])[:8]}"


def load_orthogonal_records(profile: str = "cpu", progress=True):
    """Neutral-prosody SynthEmo with more speakers: data for the word and speaker networks."""
    sizes = PROFILES[profile]["orthogonal_corpus"]
    out = paths.DATA / f"synthemo-orthogonal-{runs.config_key(sizes)[:8]}"
    options = _synth_options(sizes, synth.MORE_SPEAKERS)
    return synth.make_orthogonal_corpus(out, progress=progress, **options)


def _synth_options(sizes: dict, speakers) -> dict:
    """A profile names corpus sizes (n_speakers, n_words); SynthEmo takes the lists."""
    options = dict(sizes)
    if "n_speakers" in options:
        options["speakers"] = speakers[: options.pop("n_speakers")]
    if "n_words" in options:
        options["words"] = synth.DEFAULT_WORDS[: options.pop("n_words")]
    return options


def feature_config(profile: str) -> FeatureConfig:
    return FeatureConfig(**PROFILES[profile]["features"])


@dataclass
class Data:
    """A corpus with its features, split and datasets (features normalised with the training
    statistics only). `label_space` maps emotions, speakers and words to class indices."""

    records: list
    split: splits.Split
    label_space: LabelSpace
    train: SERDataset
    val: SERDataset
    test: SERDataset
    dropped_silent: int
    warnings: list[str]
    normalizer: Normalizer | None = None
    x: np.ndarray | None = None  # the kept items' raw features (e.g. for DFR's held-out set)


MIN_TEST_PER_CLASS = 5  # below this a test class's recall moves in steps of 20 points or more


def _check_task(records, kept, split, test_idx, x, target: str = "emotion") -> list[str]:
    """Refuse a degenerate task; return the warnings a run record carries."""
    attr = {"emotion": "emotion", "word": "text", "speaker": "speaker"}[target]
    lost = sorted({getattr(r, attr) for r in records} - {getattr(r, attr) for r in kept})
    if lost:
        raise ValueError(
            f"{target}(s) {lost}: every file is near-silent (peak below the silence threshold); "
            "the task would silently lose the class. Check those files or leave the class out"
        )
    classes = sorted({getattr(r, attr) for r in kept})
    if len(classes) < 2:
        raise ValueError(f"{target} classes {classes}: a classification task needs at least two")
    test_classes = {getattr(kept[i], attr) for i in test_idx}
    if len(test_idx) < 2 or len(test_classes) < 2:
        raise ValueError(
            f"the {split.setup} split's test set holds {len(test_idx)} item(s) of "
            f"{len(test_classes)} {target} class(es) (test speakers/words "
            f"{split.meta.get('test_speakers') or split.meta.get('test_words')}); a score on it "
            "would mean nothing. Choose another setup or a corpus with more test items"
        )
    bad = [
        kept[start + i].uid
        for start in range(0, len(kept), 512)
        for i in np.flatnonzero(~np.isfinite(np.asarray(x[start : start + 512])).all(axis=(1, 2)))
    ]
    if bad:
        raise ValueError(
            f"{len(bad)} item(s) have NaN or infinite features, e.g. {bad[:3]}; check their "
            "audio files, or delete the feature cache under QAT_CACHE/features"
        )
    counts = {c: sum(getattr(kept[i], attr) == c for i in test_idx) for c in classes}
    few = {c: n for c, n in counts.items() if n < MIN_TEST_PER_CLASS}
    out = []
    if few and target == "emotion":
        out.append(f"test set: fewer than {MIN_TEST_PER_CLASS} items for {few}; per-class "
                   "recall, and so UA, is coarse")  # fmt: skip
    if len(kept) < len(records):
        out.append(f"{len(records) - len(kept)} near-silent file(s) dropped")
    return out


def prepare_data(
    records,
    setup: str,
    profile: str,
    seed: int = 0,
    progress: bool = True,
    target: str = "emotion",
    **split_options,
) -> Data:
    check_choice("setup", setup, splits.SETUPS)
    config = feature_config(profile)
    feats = extract_features(records, config, paths.CACHE / "features", progress=progress)
    keep = np.flatnonzero(~feats.silent)
    kept = [records[i] for i in keep]
    x = feats.x[keep] if len(keep) < len(records) else feats.x
    synthemo = kept[0].corpus == synth.CORPUS
    split_options.setdefault("val_fraction", PROFILES[profile].get("val_fraction", 0.1))
    if synthemo and setup not in ("random", "word") and "fold" not in split_options:
        # SynthEmo's held-out speakers; a real corpus takes its share (or its folds).
        split_options.setdefault("n_test_speakers", PROFILES[profile]["n_test_speakers"])
    if "fold" in split_options:
        real_folds = not synthemo and setup == "speaker"
        speakers = [r.speaker for r in kept]
        folds = splits.default_folds(kept[0].corpus, speakers) if real_folds else None
        split_options.setdefault("folds", folds or PROFILES[profile].get("folds", 5))
    split = splits.make_split(kept, setup, seed=seed, **split_options)
    train_idx, val_idx, test_idx = split.indices(kept)
    notes = _check_task(records, kept, split, test_idx, x, target)
    label_space = LabelSpace.from_records(kept)
    normalizer = Normalizer.fit(np.asarray(x[train_idx]))
    datasets = [
        SERDataset(x, kept, idx, label_space, normalizer) for idx in (train_idx, val_idx, test_idx)
    ]
    dropped = len(records) - len(kept)
    return Data(kept, split, label_space, *datasets, dropped_silent=dropped, warnings=notes,
                normalizer=normalizer, x=x)  # fmt: skip


RECIPE = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "device"}


def train_config(profile: str, seed: int, **overrides) -> TrainConfig:
    """The training recipe of a profile (every TrainConfig field it names), with per-run
    overrides."""
    recipe = {k: v for k, v in PROFILES[profile].items() if k in RECIPE}
    return TrainConfig(**{**recipe, "seed": seed, "device": _device(), **overrides})


def with_inputs(dataset: SERDataset, x: torch.Tensor) -> SERDataset:
    """The same items and labels with other network inputs (e.g. RH-emo embeddings)."""
    out = copy.copy(dataset)
    out.x = x
    return out


def subset(dataset: SERDataset, n: int | None, seed: int = 0) -> SERDataset:
    """At most `n` items of a dataset, drawn once with a fixed seed (all of them if n is None)."""
    if n is None or n >= len(dataset.x):
        return dataset
    keep = torch.as_tensor(np.sort(np.random.default_rng(seed).permutation(len(dataset.x))[:n]))
    out = with_inputs(dataset, dataset.x[keep])
    out.labels = {k: v[keep] for k, v in dataset.labels.items()}
    out.indices = np.asarray(dataset.indices)[keep.numpy()]
    return out


@torch.no_grad()
def embed(rhemo: RHEmo, dataset: SERDataset, batch_size: int = 256) -> SERDataset:
    rhemo.eval()
    x = torch.cat(
        [rhemo.encode(dataset.x[i : i + batch_size]) for i in range(0, len(dataset.x), batch_size)]
    )
    return with_inputs(dataset, x)


# ---------------------------------------------------------------- cached networks


def _cached_network(kind: str, config: dict, build, train_fn):
    """Load a trained network from the cache, or build, train, save and record it."""
    key = runs.config_key(config)
    path = paths.CACHE / "networks" / f"{kind}-{key}.pt"
    net = build()
    if path.exists():
        try:
            net.load_state_dict(torch.load(path, weights_only=True))
            return net.eval(), path
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
            # The kit's own cache file, truncated or from other code: retrain it.
            warnings.warn(f"{path}: unreadable cached network ({err}); retraining", stacklevel=2)
            net = build()
    io.ensure_folder(path.parent, "network cache")
    t0 = time.perf_counter()
    info = train_fn(net)
    io.write_atomic(path, lambda tmp: torch.save(net.state_dict(), tmp))
    record = {
        "kind": kind,
        "config": config,
        "network": str(path.relative_to(paths.ROOT))
        if path.is_relative_to(paths.ROOT)
        else str(path),
        "wall_time_s": time.perf_counter() - t0,
        "code_version": runs.code_version(),
        **info,
    }
    with contextlib.suppress(FileExistsError):  # another process trained the same network
        io.write_json_once(runs.record_path(kind, config), record)
    return net.eval(), path


def fold_count(run: RunConfig) -> int:
    """How many folds the run's corpus and setup have: the profile's for SynthEmo, the corpus's
    speaker folds (splits.default_folds) for a real corpus."""
    if run.corpus == "synthemo" and run.root is None:
        return PROFILES[run.profile].get("folds") or 0
    records = load_records(run.corpus, run.profile, run.root, progress=False)
    if run.setup == "speaker":
        return len(splits.default_folds(records[0].corpus, [r.speaker for r in records]))
    return PROFILES[run.profile].get("folds", 5)


def run_data(run: RunConfig, progress: bool = True, records=None) -> Data:
    """The corpus, features and split of a run (`records`: the corpus, if already loaded)."""
    records = records or load_records(run.corpus, run.profile, run.root, progress)
    return prepare_data(records, run.setup, run.profile, run.seed, progress, **run.split_options)


def rhemo_key(run: RunConfig) -> dict:
    """What the RH-emo a run reads depends on: the corpus, its split and the profile (not the
    method), so every method on a (seed, fold) shares one RH-emo."""
    k = run.key_dict()
    return {name: k[name] for name in ("corpus", "setup", "profile", "profile_settings", "seed",
                                       "root", "split")}  # fmt: skip


def pretrain_rhemo(run: RunConfig, data: Data | None = None, progress: bool = True) -> RHEmo:
    """RH-emo trained on the training items of the run's split (never the test set)."""
    p = PROFILES[run.profile]
    data = data or run_data(run, progress)

    def build():
        return RHEmo(len(data.label_space.emotions), pools=p["rhemo_pools"])

    def train_fn(net):
        return fit_rhemo(
            net, data.train, data.val, epochs=p["rhemo_epochs"], lr=p["lr"], seed=run.seed,
            progress=progress,
        )  # fmt: skip

    return _cached_network("rhemo", rhemo_key(run), build, train_fn)[0]


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
    return save_rhemo(out, rhemo, feature_config=feature_config(run.profile), source=source)


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
    data = prepare_data(records, setup, profile, 0, progress, target=label)
    if run.orthogonal == "shuffled":
        data = _shuffled(data, label)
    train, val, test = data.train, data.val, data.test
    rhemo_key = None
    if model == "quaternion":
        if rhemo is None:
            raise ValueError(
                "a quaternion orthogonal network needs the frozen RH-emo it reads: pass rhemo="
            )
        train, val, test = (embed(rhemo, d) for d in (train, val, test))
        rhemo_key = runs.config_key({k: v.tolist() for k, v in rhemo.state_dict().items()})
    classes = list(getattr(data.label_space, f"{label}s"))
    in_channels = train.x.shape[1]

    def build():
        torch.manual_seed(0)  # the placebo's "initial weights" are a fixed draw
        return vgg16(
            len(classes), in_channels=in_channels, quaternion=model == "quaternion",
            width=p["width"],
        )  # fmt: skip

    if run.orthogonal == "random":
        net = build().eval()
        for param in net.parameters():
            param.requires_grad_(False)
        return net
    config = dict(task=run.orthogonal, model=model, profile=profile,
                  profile_settings=runs.config_key(p), seed=0, rhemo=rhemo_key)  # fmt: skip
    if source is not None:
        config["source"] = source

    def train_fn(net):
        cfg = train_config(profile, 0, epochs=p["orthogonal_epochs"], target=label)
        result = fit(net, train, val, cfg, progress=progress, name=f"{run.orthogonal} network")
        return {
            "history": result["history"],
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


def _shuffled(data: Data, label: str) -> Data:
    """The same items with `label` permuted across the training, validation and test items (a
    fixed permutation): a network trained on it learns nothing that generalises about words."""
    rng = np.random.default_rng(0)
    for part in (data.train, data.val, data.test):
        values = part.labels[label].numpy()
        part.labels[label] = torch.from_numpy(values[rng.permutation(len(values))])
    return data


# ---------------------------------------------------------------- SER runs


def _save_split(split: splits.Split) -> str:
    digest = split.digest()
    target = paths.REPORTS / "splits" / f"{digest}.json"
    if not target.exists():
        try:
            io.write_json_once(target, split.to_dict())
        except FileExistsError:
            pass  # a parallel run saved the same split first
    return digest


def confound_metrics(data: Data, pred: np.ndarray, target: str = "word") -> dict:
    """On a confounded (or its unconfounded control) test set: UA on congruent and
    incongruent items, and the share of incongruent predictions that follow the word (or
    speaker), i.e. predict the emotion whose training subset holds the item's word."""
    from qat import metrics

    owner = data.split.meta.get("assignment")
    if not owner:
        return {}
    emotion_of = {v: e for e, vs in owner.items() for v in vs}
    test = [data.records[i] for i in data.test.indices]
    y = data.test.labels["emotion"].numpy()
    congruent = data.split.congruent(data.records, data.test.indices)
    attr = "text" if target == "word" else "speaker"
    follows = np.array(
        [
            data.label_space.emotions.index(emotion_of[getattr(r, attr)])
            if getattr(r, attr) in emotion_of
            else -1
            for r in test
        ]
    )
    inc = ~congruent
    return {
        "congruent_ua": metrics.unweighted_accuracy(y[congruent], pred[congruent])
        if congruent.any()
        else None,
        "incongruent_ua": metrics.unweighted_accuracy(y[inc], pred[inc]) if inc.any() else None,
        "follows_shortcut": float(np.mean(pred[inc] == follows[inc])) if inc.any() else None,
        "congruent_share_test": float(congruent.mean()),
    }


def invariance_probes(
    net, train: SERDataset, held_out: SERDataset, label: str, taps=PROBE_TAPS, items=None
) -> dict:
    """Linear-probe accuracy of the orthogonal label at several taps of the trained (frozen)
    network, fitted on `train` and scored on `held_out` (held-out speakers for words; for
    speakers, which the test set does not share with training, the validation items), each
    at most `items` items (a fixed subsample: the probe is a measurement, not the run)."""
    train, held_out = subset(train, items, 1), subset(held_out, items, 2)
    taps = list(taps)
    fitted, scored = pooled_at_taps(net, taps, train.x), pooled_at_taps(net, taps, held_out.x)
    y_fit, y_score = train.labels[label].numpy(), held_out.labels[label].numpy()
    return {tap: probe_accuracy(fitted[tap], y_fit, scored[tap], y_score) for tap in taps}


def _check_writable() -> None:
    """Fail before training, not after, if results could not be saved."""
    io.ensure_folder(paths.REPORTS / "runs", "run records (QAT_REPORTS)")
    io.ensure_folder(paths.CACHE, "cache (QAT_CACHE)")
    io.ensure_folder(paths.DATA, "data (QAT_DATA)")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message names the checkpoint a rerun resumes from."""


def attach_groups(data: Data) -> None:
    """Each item's group, (emotion, the emotion its word or speaker was paired with in
    training), as the label "group" of the training, validation and test sets."""
    emotions = data.label_space.emotions
    for part in (data.train, data.val, data.test):
        ids = data.split.groups(data.records, part.indices, emotions)
        part.labels[robust.GROUP_LABEL] = torch.from_numpy(ids)


def group_metrics(data: Data, test: SERDataset, pred: np.ndarray) -> dict:
    """Per-group and worst-group test accuracy, and the accuracy averaged with the training
    group shares (the spurious-correlation literature's "average accuracy")."""
    from qat import metrics

    n = len(data.label_space.emotions) ** 2
    y, groups = test.labels["emotion"].numpy(), test.labels[robust.GROUP_LABEL].numpy()
    shares = np.bincount(data.train.labels[robust.GROUP_LABEL].numpy(), minlength=n)
    return {
        "n_groups": n,
        "per_group": {str(g): a for g, a in metrics.group_accuracies(y, pred, groups).items()},
        "worst_group": metrics.worst_group_accuracy(y, pred, groups),
        "average": metrics.average_accuracy(y, pred, groups, shares / shares.sum()),
        "train_counts": shares.tolist(),
    }


def _take(dataset: SERDataset, positions: np.ndarray) -> SERDataset:
    """The items of a dataset at `positions` (positions within the dataset)."""
    keep = torch.as_tensor(np.asarray(positions))
    out = with_inputs(dataset, dataset.x[keep])
    out.labels = {k: v[keep] for k, v in dataset.labels.items()}
    out.indices = np.asarray(dataset.indices)[keep.numpy()]
    return out


def _group_objective(config: RunConfig, data: Data, train, val, tcfg, progress, name):
    """(training set, objective, what the record says) of the group methods and JTT."""
    groups = train.labels[robust.GROUP_LABEL].numpy()
    n_groups = len(data.label_space.emotions) ** 2
    by_position = np.zeros(len(data.records))
    if config.method == "subsample":
        keep = robust.balanced_subsample(groups, config.seed)
        return _take(train, keep), None, {"train_items": len(keep)}
    if config.method == "reweight":
        by_position[train.indices] = robust.group_weights(groups, n_groups)
        return train, robust.ReweightObjective(by_position), {}
    if config.method == "groupdro":
        counts = np.bincount(groups, minlength=n_groups)
        if config.group_adjustment:
            dro = robust.GroupDRO(n_groups, config.eta, config.group_adjustment, counts)
        else:
            dro = robust.GroupDRO(n_groups, config.eta)
        return train, dro, {}
    # JTT: ERM for T epochs, then train afresh with the items it got wrong upweighted.
    torch.manual_seed(config.seed)
    first = vgg16(
        len(data.label_space.emotions),
        in_channels=train.x.shape[1],
        quaternion=config.model == "quaternion",
        width=PROFILES[config.profile]["width"],
    )
    stage1 = dataclasses.replace(tcfg, epochs=config.jtt_epochs, selection="final")
    fit(first, train, val, stage1, progress=progress, name=f"{name} (JTT stage 1)")
    wrong = (predict(first, train.x).argmax(1) != train.labels["emotion"]).numpy()
    by_position[train.indices] = robust.jtt_upweights(wrong, config.lambda_up)
    torch.manual_seed(config.seed)
    return train, robust.ReweightObjective(by_position), {"upweighted": int(wrong.sum())}


def held_out_set(data: Data, per_group: int, seed: int, rhemo=None) -> SERDataset:
    """A group-balanced set of training-speaker items no run trains on: the items the
    confounded split left out and the validation items. The split keeps every congruent
    training item, so the left-out items are all incongruent; the validation items supply the
    congruent groups. At most `per_group` items of each group, drawn with `seed`."""
    pool = np.concatenate([data.split.unused_indices(data.records), data.val.indices])
    groups = data.split.groups(data.records, pool, data.label_space.emotions)
    rng = np.random.default_rng(seed)
    chosen = np.concatenate(
        [rng.permutation(pool[groups == g])[:per_group] for g in np.unique(groups)]
    )
    held = SERDataset(data.x, data.records, np.sort(chosen), data.label_space, data.normalizer)
    attach = data.split.groups(data.records, held.indices, data.label_space.emotions)
    held.labels[robust.GROUP_LABEL] = torch.from_numpy(attach)
    return embed(rhemo, held) if rhemo is not None else held


SELECTION_PER_GROUP = 40  # the decorrelated validation set: up to 40 items of each group


def selection_scores(data: Data, net, rhemo) -> dict:
    """UA and worst-group accuracy on the decorrelated validation set (a fixed draw per split,
    the same for every method): what knobs are chosen on, never the test set."""
    from qat import metrics

    held = held_out_set(data, SELECTION_PER_GROUP, 0, rhemo)
    pred = predict(net, held.x).argmax(1).numpy()
    y, groups = held.labels["emotion"].numpy(), held.labels[robust.GROUP_LABEL].numpy()
    return {
        "ua": metrics.unweighted_accuracy(y, pred),
        "worst_group": metrics.worst_group_accuracy(y, pred, groups),
        "items": len(y),
    }


DFR_PER_GROUP = 200  # held-out items per group fed to DFR (it balances them itself)
DFR_REFITS = 10


def _dfr(config: RunConfig, data: Data, net, rhemo, progress) -> tuple[dict, dict]:
    """DFR: the same-seed baseline's network with its last layer refitted on a group-balanced
    held-out set (training-speaker items the split did not use, and the validation items), as
    an L1 logistic regression folded back into the classifier. Returns (the baseline's
    history, what the record says)."""
    base = train_ser(config.replace(method="baseline"), progress=progress)
    net.load_state_dict(load_model(base["model"]).net.state_dict())
    held = held_out_set(data, DFR_PER_GROUP, config.seed, rhemo)
    features = pooled_at_taps(net, ["penultimate"], held.x)["penultimate"]
    emotions = data.label_space.emotions
    refit = robust.dfr(
        features,
        held.labels["emotion"].numpy(),
        data.split.groups(data.records, held.indices, emotions),
        n_refits=DFR_REFITS,
        seed=config.seed,
        n_groups=len(emotions) ** 2,
    )
    _fold_into_classifier(net, refit, len(emotions))
    info = {
        "baseline": base["config"],
        "held_out_items": len(held.x),
        "C": refit.C,
        "validation_worst_group": {str(c): v for c, v in refit.validation_scores.items()},
    }
    return {"history": base["history"], "best_epoch": base["best_epoch"]}, info


def _fold_into_classifier(net, refit, num_classes: int) -> None:
    """Write a standardised linear model (coef, intercept over (x - mean) / scale) into the
    network's last linear layer, so the network itself predicts what the refit predicts."""
    coef = refit.coef / refit.scale
    bias = refit.intercept - coef @ refit.mean
    if len(coef) == 1 and num_classes == 2:  # scikit-learn's binary form: one row, class 1
        coef, bias = np.vstack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, bias[0]])
    weight = np.zeros((num_classes, coef.shape[1]))
    full_bias = np.full(num_classes, -1e9)  # a class absent from the held-out set: never
    weight[refit.classes], full_bias[refit.classes] = coef, bias
    with torch.no_grad():
        net.head.classifier.weight.copy_(torch.as_tensor(weight))
        net.head.classifier.bias.copy_(torch.as_tensor(full_bias))


def step_cost(config: RunConfig, net, tcfg, anti_transfer, adversary, train, device) -> dict:
    """Cost of one training step of this configuration (parameters, FLOPs, peak memory, time),
    measured on a copy of the network (which stays as trained). The cost does not depend on the
    seed or fold, so it is measured once per configuration and machine and reused from the
    cache; the record says whether it was."""
    shared = config.replace(seed=0, fold=None).key_dict()
    key = runs.config_key({**shared, "device": device, "in_shape": list(train.x.shape[1:])})
    path = paths.CACHE / "step_costs" / f"{key}.json"
    if path.exists():
        with contextlib.suppress(runs.RecordError, KeyError):
            return {**runs.load_record(path)["cost"], "cost_reused": True}
    probe_net, adv_copy = copy.deepcopy(net), copy.deepcopy(adversary)
    step = Step(probe_net, make_optimizer(probe_net, tcfg, adv_copy), tcfg, anti_transfer, adv_copy)
    idx = torch.arange(min(tcfg.batch_size, len(train.x)))
    batch_labels = {k: v[idx] for k, v in train.labels.items()}
    keys = torch.as_tensor(np.asarray(train.indices))[idx]
    probe_net.train()
    cost = resources.measure(
        probe_net, lambda: step(train.x[idx], batch_labels, keys, config.lam), device=device
    )
    with contextlib.suppress(OSError):  # a cache, not a result: a failed write costs nothing
        io.write_json(path, {"config": {"key": key}, "cost": cost})
    return {**cost, "cost_reused": False}


def train_ser(
    config: RunConfig | None = None, *, force: bool = False, progress: bool = True, **settings
) -> dict:
    """Train one SER network and write its run record (reports/runs/ser-<hash>.json).

    `config` is a RunConfig, or its fields are given as keywords (`method="at", tap="conv2_1"`).
    method: "baseline"; "at" (the published Gram/cos^2 anti-transfer at the taps); "cka"
    (linear CKA anti-transfer; several taps sum); "dann" (gradient-reversal adversary of the
    orthogonal label on the penultimate features, peak weight `lam`); "cdann" (the same,
    class-conditional). If a record with the same configuration exists it is returned as is
    (sweeps resume), unless force=True, which adds a new record beside it.
    """
    if config is None:
        config = RunConfig(**settings)
    elif settings:
        config = config.replace(**settings)
    p = PROFILES[config.profile]
    rank, world = rank_and_world()
    extra = {"world_size": world} if world > 1 else {}
    corpus = None
    if config.root is not None:  # a user's corpus: results follow its content, not its path
        corpus = load_records(config.corpus, config.profile, config.root, progress)
        extra["data_digest"] = corpus_digest(corpus)
    key = config.key_dict(**extra)
    target = runs.record_path("ser", key)
    if target.exists() and not force:
        return runs.load_record(target)
    _check_writable()
    t_start = time.perf_counter()
    device = _device()
    name = config.label()

    with _rank_zero_first():
        data = run_data(config, progress, corpus)
        if config.confounded:
            attach_groups(data)
        train, val, test = data.train, data.val, data.test
        rhemo = orth_net = None
        if config.model == "quaternion" and config.rhemo:
            rhemo = load_rhemo(config.rhemo, feature_config(config.profile))[0]
        elif config.model == "quaternion":
            rhemo = pretrain_rhemo(config, data, progress)
        if rhemo is not None:
            train, val, test = (embed(rhemo, d) for d in (train, val, test))
        if config.uses_taps or config.init_from_orthogonal:
            orth_net = pretrain_orthogonal(config, data, rhemo, progress)
    num_classes = len(data.label_space.emotions)
    torch.manual_seed(config.seed)
    net = vgg16(
        num_classes,
        in_channels=train.x.shape[1],
        quaternion=config.model == "quaternion",
        width=p["width"],
    )

    anti_transfer = adversary = objective = None
    method_info: dict = {"information": REGIMES[config.method]}
    if config.init_from_orthogonal:
        init_from(net, orth_net)
    if config.uses_taps:
        anti_transfer = AntiTransfer(
            orth_net,
            config.taps,
            distance="cos2" if config.method == "at" else "cka",
            gram=config.gram,
            cache_budget_mb=p.get("cache_budget_mb", 512) if config.gram == "sample" else 0,
        )
    if config.uses_adversary:
        num_domains = len(getattr(data.label_space, f"{config.orthogonal}s"))
        hidden = net.embed(train.x[:2]).shape[1]
        adversary = Adversary(
            hidden, num_domains, num_classes=num_classes if config.method == "cdann" else None
        )

    overrides = {} if config.weight_decay is None else {"weight_decay": config.weight_decay}
    if config.selection is not None:
        overrides["selection"] = config.selection
    method_info["selection"] = (
        "worst-group validation accuracy" if config.selection == "worst_group"
        else f"the instrument's rule ({PROFILES[config.profile].get('selection', 'best_val_loss')})"
    )  # fmt: skip
    tcfg = train_config(
        config.profile, config.seed, beta=config.beta, adversary_lambda=config.lam,
        adversary_target=config.orthogonal, **overrides,
    )  # fmt: skip
    ckpt = paths.CACHE / "checkpoints" / f"ser-{runs.config_key(key)}.ckpt"
    io.ensure_folder(ckpt.parent, "checkpoint")
    monitor = subset(test, p["monitor_items"]) if p.get("monitor_items") else None
    t_prepared = time.perf_counter()
    try:
        if config.method == "dfr":
            result, method_info["dfr"] = _dfr(config, data, net, rhemo, progress)
        else:
            if config.method in ("reweight", "subsample", "groupdro", "jtt"):
                train, objective, method_info[config.method] = _group_objective(
                    config, data, train, val, tcfg, progress, name
                )
            result = fit(
                net, train, val, tcfg, anti_transfer=anti_transfer, adversary=adversary,
                objective=objective, monitor=monitor, checkpoint=ckpt, progress=progress,
                name=name,
            )  # fmt: skip
    except KeyboardInterrupt:
        saved = f"checkpoint {ckpt}" if ckpt.exists() else "no checkpoint yet (first epoch)"
        raise Interrupted(
            f"interrupted: {name}; {saved}; the same command resumes from it"
        ) from None
    train_time = time.perf_counter() - t_prepared
    test_metrics = evaluate(net, test, num_classes=num_classes)
    pred = np.asarray(test_metrics["predictions"])
    model_file = model_path(key)
    if rank == 0:  # the trained network, ready to predict (kept in the cache, not committed)
        save_model(
            model_file, net, feature_config=feature_config(config.profile),
            model_config=dict(num_classes=num_classes, in_channels=train.x.shape[1],
                              quaternion=config.model == "quaternion", width=p["width"]),
            normalizer=data.normalizer, label_space=data.label_space, rhemo=rhemo, run=key,
        )  # fmt: skip

    t_evaluated = time.perf_counter()
    cost = {**step_cost(config, net, tcfg, anti_transfer, adversary, train, device),
            "train_time_s": train_time}  # fmt: skip
    t_costed = time.perf_counter()
    target_label = config.probe_target
    probe_taps = sorted({*PROBE_TAPS, *config.taps}, key=TAPS.index)
    probe = invariance_probes(
        net, train, test if target_label == "word" else val, target_label, probe_taps,
        p.get("probe_items"),
    )  # fmt: skip
    t_probed = time.perf_counter()
    record = {
        "kind": "ser",
        "config": key,
        "split": {
            "digest": _save_split(data.split),
            "setup": config.setup,
            "seed": config.seed,
            "sizes": {"train": len(train.x), "val": len(val.x), "test": len(test.x)},
            **data.split.meta,
        },
        "labels": {"emotions": list(data.label_space.emotions)},
        "metrics": test_metrics,
        "confound": confound_metrics(data, pred, config.factor) if config.confounded else {},
        "probe": {target_label: probe},
        "history": result["history"],
        "best_epoch": result["best_epoch"],
        "resources": cost,
        "groups": group_metrics(data, test, pred) if config.confounded else {},
        "selection_set": selection_scores(data, net, rhemo) if config.confounded else {},
        "method": method_info,
        "at_cache": anti_transfer.cache_stats if anti_transfer is not None else None,
        "model": str(model_file),
        "dropped_silent": data.dropped_silent,
        "warnings": data.warnings,
        "code_version": runs.code_version(),
        "device": device,
        "wall_time_s": time.perf_counter() - t_start,
        "timings_s": {  # overhead: prepare, step_cost and probe; evaluate is the measurement
            "prepare": t_prepared - t_start,
            "train": train_time,
            "evaluate": t_evaluated - t_prepared - train_time,
            "step_cost": t_costed - t_evaluated,
            "probe": t_probed - t_costed,
            "after": time.perf_counter() - t_prepared - train_time,
        },
    }
    if rank == 0:
        io.write_json_beside(target, record)
        ckpt.unlink(missing_ok=True)  # the record is safe; the resume point is no longer needed
    return record


def sweep_configs(taps=None, models=MODELS, seeds=(0,), **settings) -> list[RunConfig]:
    """RunConfigs for taps x models x seeds (all 13 taps by default), each model's baseline
    included so gains can be computed."""
    configs = []
    for model in models:
        for seed in seeds:
            base = RunConfig(**dict(settings, model=model, seed=seed))
            configs += [base.replace(tap=tap) for tap in taps or VGG16_TAPS]
            configs.append(base.replace(method="baseline"))
    return configs


def _train_quietly(config: RunConfig) -> dict:
    return train_ser(config, progress=False)


def run_configs(configs: list[RunConfig], jobs: int = 1) -> list[dict]:
    """Run (or reuse) train_ser over `configs` in `jobs` parallel processes; the first
    configuration of each prerequisite group runs here first (with progress), building the
    split, RH-emo and orthogonal network the others then read from the cache."""
    return run_grid(
        configs, _train_quietly, jobs=jobs, group=RunConfig.prerequisites,
        first=lambda c: train_ser(c, progress=True), name=RunConfig.label,
    )  # fmt: skip


def sweep(taps=None, models=MODELS, seeds=(0,), jobs: int = 1, **settings) -> list[dict]:
    """Run (or reuse) train_ser over taps x models x seeds in `jobs` parallel processes;
    configurations whose record exists are not run again. Returns method runs and baselines."""
    settings.setdefault("method", "at")
    settings.pop("progress", None)  # workers run quietly; the sweep shows one bar
    return run_configs(sweep_configs(taps, models, seeds, **settings), jobs=jobs)
