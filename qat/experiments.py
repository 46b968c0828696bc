"""Recipes the notebooks, the CLI and the sweeps call: build the data, pretrain the
orthogonal networks and RH-emo, train SER with or without an invariance method, and write one
run record per run.

Everything a recipe needs is named by a flat set of values (corpus, setup, model, method,
orthogonal, tap, beta, seed, profile); the profile sets the sizes. Trained networks are cached
under qat.paths.CACHE, keyed by the hash of everything that determines them.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from qat import paths, resources, runs
from qat.adversarial import Adversary
from qat.antitransfer import AntiTransfer, init_from
from qat.data import corpora, splits, synth
from qat.data.features import FeatureConfig, LabelSpace, Normalizer, SERDataset, extract_features
from qat.models import VGG16_TAPS, RHEmo, vgg16
from qat.probe import pooled_activations, probe_accuracy
from qat.train import (
    Step,
    TrainConfig,
    evaluate,
    fit,
    fit_rhemo,
    make_optimizer,
    rank_and_world,
)

MODELS = ("real", "quaternion")
METHODS = ("baseline", "at", "cka", "dann", "cdann")
ORTHOGONAL_TASKS = ("word", "speaker")
SETUPS = ("random", "speaker", "word", "confounded", "unconfounded")
TAPS = (*VGG16_TAPS, "penultimate")  # where anti-transfer can act
PROBE_TAPS = ("conv2_2", "conv3_3", "conv4_3", "conv5_3", "penultimate")

# Sizes per profile. "cpu" runs on this machine in minutes; "paper" is the WASPAA 2023 setting
# (full-width VGG16, 4 s STFT segments 512 x 128, Adam lr 1e-5..5e-5, batch 20, patience 20).
PROFILES = {
    "smoke": dict(
        corpus=dict(n_speakers=4, n_words=10, repetitions=1),
        orthogonal_corpus=dict(n_speakers=4, n_words=10, repetitions=2),
        features=dict(kind="logmel", segment_seconds=0.5, n_mels=32),
        rhemo_pools=((2, 1), (1, 1), (1, 1)),
        width=1 / 16, epochs=1, batch_size=16, lr=1e-3, patience=1,
        rhemo_epochs=(1, 1), orthogonal_epochs=1, n_test_speakers=1,
    ),
    "cpu": dict(
        corpus=dict(),  # make_synthemo's defaults
        orthogonal_corpus=dict(),
        features=dict(kind="logmel", segment_seconds=1.0, n_mels=64),
        rhemo_pools=((2, 2), (2, 1), (1, 1)),
        width=1 / 8, epochs=10, batch_size=32, lr=2e-3, patience=4, val_fraction=0.2,
        rhemo_epochs=(8, 8), orthogonal_epochs=8, n_test_speakers=3,
    ),
    "paper": dict(
        corpus=dict(),
        orthogonal_corpus=dict(),
        features=dict(kind="stft", segment_seconds=4.0),
        rhemo_pools=((2, 2), (2, 1), (2, 1)),
        width=1.0, epochs=200, batch_size=20, lr=2e-5, patience=20,
        rhemo_epochs=(50, 50), orthogonal_epochs=100, n_test_speakers=3,
    ),
}  # fmt: skip


def default_profile() -> str:
    """The profile notebooks start from: $QAT_PROFILE (the test suite sets "smoke") or "cpu"."""
    return os.environ.get("QAT_PROFILE", "cpu")


def check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {tuple(valid)}")


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
        out = paths.DATA / f"synthemo-{profile}"
        options = _synth_options(PROFILES[profile]["corpus"], synth.DEFAULT_SPEAKERS)
        return synth.make_synthemo(out, progress=progress, **options)
    if root is None:
        raise FileNotFoundError(
            f"corpus={corpus!r} needs root=<folder of the corpus in its official layout>; "
            "or use corpus='synthemo', which the kit builds itself"
        )
    check_choice("corpus", corpus, corpora.CORPORA)
    return corpora.load_corpus(corpus, root)


def load_orthogonal_records(profile: str = "cpu", progress=True):
    """Neutral-prosody SynthEmo with more speakers: data for the word and speaker networks."""
    out = paths.DATA / f"synthemo-orthogonal-{profile}"
    options = _synth_options(PROFILES[profile]["orthogonal_corpus"], synth.MORE_SPEAKERS)
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


def prepare_data(
    records,
    setup: str,
    profile: str,
    seed: int = 0,
    progress: bool = True,
    **split_options,
) -> Data:
    check_choice("setup", setup, SETUPS)
    config = feature_config(profile)
    feats = extract_features(records, config, paths.CACHE / "features", progress=progress)
    keep = np.flatnonzero(~feats.silent)
    kept = [records[i] for i in keep]
    x = feats.x[keep] if len(keep) < len(records) else feats.x
    split_options.setdefault("n_test_speakers", PROFILES[profile]["n_test_speakers"])
    split_options.setdefault("val_fraction", PROFILES[profile].get("val_fraction", 0.1))
    if setup in ("random", "word"):
        split_options.pop("n_test_speakers")
    split = splits.make_split(kept, setup, seed=seed, **split_options)
    train_idx, val_idx, test_idx = split.indices(kept)
    label_space = LabelSpace.from_records(kept)
    normalizer = Normalizer.fit(np.asarray(x[train_idx]))
    datasets = [
        SERDataset(x, kept, idx, label_space, normalizer) for idx in (train_idx, val_idx, test_idx)
    ]
    return Data(kept, split, label_space, *datasets, dropped_silent=len(records) - len(kept))


def train_config(profile: str, seed: int, **overrides) -> TrainConfig:
    """The training settings of a profile, with per-run overrides."""
    p = PROFILES[profile]
    base = dict(epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], patience=p["patience"])
    return TrainConfig(**{**base, "seed": seed, "device": _device(), **overrides})


def split_options_for(setup: str, rho: float = 0.9, factor: str = "word") -> dict:
    """rho and factor only shape the confounded setup and its unconfounded control."""
    return {"rho": rho, "factor": factor} if setup in ("confounded", "unconfounded") else {}


def with_inputs(dataset: SERDataset, x: torch.Tensor) -> SERDataset:
    """The same items and labels with other network inputs (e.g. RH-emo embeddings)."""
    out = copy.copy(dataset)
    out.x = x
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
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval(), path
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = train_fn(net)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
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
        runs.write_json_once(runs.record_path(kind, config), record)
    return net.eval(), path


def pretrain_rhemo(
    corpus="synthemo",
    setup="confounded",
    profile="cpu",
    seed=0,
    root=None,
    progress=True,
    **split_options,
):
    """RH-emo trained on the training items of the SER split (never the test set)."""
    p = PROFILES[profile]
    config = dict(
        corpus=corpus,
        setup=setup,
        profile=profile,
        profile_settings=runs.config_key(PROFILES[profile]),
        seed=seed,
        root=str(root) if root else None,
        split=split_options,
    )
    data = prepare_data(
        load_records(corpus, profile, root, progress),
        setup,
        profile,
        seed,
        progress,
        **split_options,
    )
    build = lambda: RHEmo(len(data.label_space.emotions), pools=p["rhemo_pools"])  # noqa: E731

    def train_fn(net):
        return fit_rhemo(
            net,
            data.train,
            data.val,
            epochs=p["rhemo_epochs"],
            lr=p["lr"],
            seed=seed,
            progress=progress,
        )

    return _cached_network("rhemo", config, build, train_fn)[0]


def pretrain_orthogonal(
    task="word", model="real", profile="cpu", seed=0, rhemo=None, progress=True
):
    """A word- or speaker-recognition VGG16 on the neutral-prosody corpus. The quaternion one
    reads RH-emo embeddings, so it is tied to (and keyed by) that RH-emo's weights."""
    check_choice("orthogonal", task, ORTHOGONAL_TASKS)
    check_choice("model", model, MODELS)
    p = PROFILES[profile]
    records = load_orthogonal_records(profile, progress)
    data = prepare_data(records, "random", profile, seed, progress)
    train, val, test = data.train, data.val, data.test
    rhemo_key = None
    if model == "quaternion":
        if rhemo is None:
            raise ValueError(
                "a quaternion orthogonal network needs the frozen RH-emo it reads: pass rhemo="
            )
        train, val, test = (embed(rhemo, d) for d in (train, val, test))
        rhemo_key = runs.config_key({k: v.tolist() for k, v in rhemo.state_dict().items()})
    num_classes = len(getattr(data.label_space, f"{task}s"))
    in_channels = train.x.shape[1]
    config = dict(
        task=task,
        model=model,
        profile=profile,
        profile_settings=runs.config_key(PROFILES[profile]),
        seed=seed,
        rhemo=rhemo_key,
    )

    def build():
        return vgg16(
            num_classes, in_channels=in_channels, quaternion=model == "quaternion", width=p["width"]
        )

    def train_fn(net):
        cfg = train_config(profile, seed, epochs=p["orthogonal_epochs"], target=task)
        result = fit(net, train, val, cfg, progress=progress)
        return {
            "history": result["history"],
            "metrics": evaluate(net, test, target=task, num_classes=num_classes),
        }

    return _cached_network(f"orthogonal-{task}-{model}", config, build, train_fn)[0]


# ---------------------------------------------------------------- SER runs


def _save_split(split: splits.Split) -> str:
    digest = split.digest()
    target = paths.REPORTS / "splits" / f"{digest}.json"
    if not target.exists():
        try:
            runs.write_json_once(target, split.to_dict())
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
    net, train: SERDataset, held_out: SERDataset, label: str, taps=PROBE_TAPS
) -> dict:
    """Linear-probe accuracy of the orthogonal label at several taps of the trained (frozen)
    network, fitted on `train` and scored on `held_out` (held-out speakers for words; for
    speakers, which the test set does not share with training, the validation items)."""
    out = {}
    for tap in taps:
        a = pooled_activations(net, tap, train.x)
        b = pooled_activations(net, tap, held_out.x)
        out[tap] = probe_accuracy(a, train.labels[label].numpy(), b, held_out.labels[label].numpy())
    return out


def train_ser(
    corpus: str = "synthemo",
    setup: str = "confounded",
    model: str = "real",
    method: str = "baseline",
    orthogonal: str = "word",
    tap: str | list[str] | None = "conv2_1",
    beta: float = 1.0,
    gram: str = "sample",
    lam: float = 1.0,
    init_from_orthogonal: bool = False,
    seed: int = 0,
    profile: str = "cpu",
    root: str | None = None,
    rho: float = 0.9,
    factor: str = "word",
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Train one SER network and write its run record (reports/runs/ser-<hash>.json).

    method: "baseline"; "at" (the published Gram/cos^2 anti-transfer at `tap`); "cka" (linear
    CKA anti-transfer; `tap` may be a list: the sum over taps, "penultimate" allowed); "dann"
    (gradient-reversal `orthogonal`-label adversary on the penultimate features, peak weight
    `lam`); "cdann" (the same adversary, class-conditional). If a record with the same
    configuration exists it is returned as is (sweeps resume), unless force=True, which adds
    a new record beside it.
    """
    for name, value, valid in [
        ("corpus", corpus, corpora.CORPORA),
        ("model", model, MODELS),
        ("method", method, METHODS),
        ("orthogonal", orthogonal, ORTHOGONAL_TASKS),
        ("profile", profile, PROFILES),
        ("setup", setup, SETUPS),
        ("gram", gram, ("sample", "batch")),
    ]:
        check_choice(name, value, valid)
    for name, value in (("beta", beta), ("lam", lam)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < np.inf:
            raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    uses_at = method in ("at", "cka")
    taps = ([tap] if isinstance(tap, str) else list(tap or [])) if uses_at else []
    if uses_at and not taps:
        raise ValueError(f"method={method!r} needs tap=<one of {TAPS} or a list of them>")
    for t in taps:
        check_choice("tap", t, TAPS)
    p = PROFILES[profile]
    split_options = split_options_for(setup, rho, factor)
    config = dict(
        corpus=corpus,
        root=str(root) if root else None,
        setup=setup,
        model=model,
        method=method,
        orthogonal=orthogonal
        if (uses_at or method.endswith("dann") or init_from_orthogonal)
        else None,
        taps=taps,
        beta=beta if uses_at else None,
        gram=gram if method == "at" else None,
        lam=lam if method.endswith("dann") else None,
        init_from_orthogonal=init_from_orthogonal,
        seed=seed,
        profile=profile,
        profile_settings=runs.config_key(PROFILES[profile]),  # editing a profile reruns
        split=split_options,
    )
    rank, world = rank_and_world()
    if world > 1:
        config["world_size"] = world
    target = runs.record_path("ser", config)
    if target.exists() and not force:
        return runs.load_record(target)
    t_start = time.perf_counter()
    device = _device()

    with _rank_zero_first():
        data = prepare_data(
            load_records(corpus, profile, root, progress), setup, profile, seed, progress,
            **split_options,
        )  # fmt: skip
        train, val, test = data.train, data.val, data.test
        rhemo = orth_net = None
        if model == "quaternion":
            rhemo = pretrain_rhemo(corpus, setup, profile, seed, root, progress, **split_options)
            train, val, test = (embed(rhemo, d) for d in (train, val, test))
        if uses_at or init_from_orthogonal:
            orth_net = pretrain_orthogonal(orthogonal, model, profile, 0, rhemo, progress)
    num_classes = len(data.label_space.emotions)
    torch.manual_seed(seed)
    net = vgg16(
        num_classes,
        in_channels=train.x.shape[1],
        quaternion=model == "quaternion",
        width=p["width"],
    )

    anti_transfer = adversary = None
    if init_from_orthogonal:
        init_from(net, orth_net)
    if uses_at:
        anti_transfer = AntiTransfer(
            orth_net,
            taps,
            distance="cos2" if method == "at" else "cka",
            gram=gram,
            cache_budget_mb=p.get("cache_budget_mb", 512) if gram == "sample" else 0,
        )
    if method.endswith("dann"):
        num_domains = len(getattr(data.label_space, f"{orthogonal}s"))
        hidden = net.embed(train.x[:2]).shape[1]
        adversary = Adversary(
            hidden, num_domains, num_classes=num_classes if method == "cdann" else None
        )

    tcfg = train_config(profile, seed, beta=beta, adversary_lambda=lam, adversary_target=orthogonal)
    ckpt = paths.CACHE / "checkpoints" / f"ser-{runs.config_key(config)}.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    t_train = time.perf_counter()
    result = fit(
        net,
        train,
        val,
        tcfg,
        anti_transfer=anti_transfer,
        adversary=adversary,
        checkpoint=ckpt,
        progress=progress,
    )
    train_time = time.perf_counter() - t_train
    test_metrics = evaluate(net, test, num_classes=num_classes)
    pred = np.asarray(test_metrics["predictions"])

    # Cost of one training step of this exact configuration, on a copy (the model stays as trained).
    probe_net = copy.deepcopy(net)
    adv_copy = copy.deepcopy(adversary)
    step = Step(probe_net, make_optimizer(probe_net, tcfg, adv_copy), tcfg, anti_transfer, adv_copy)
    idx = torch.arange(min(p["batch_size"], len(train.x)))
    batch_labels = {k: v[idx] for k, v in train.labels.items()}
    keys = torch.as_tensor(np.asarray(train.indices))[idx]
    probe_net.train()
    cost = resources.measure(
        probe_net, lambda: step(train.x[idx], batch_labels, keys, lam), device=device
    )
    cost["train_time_s"] = train_time

    record = {
        "kind": "ser",
        "config": config,
        "split": {
            "digest": _save_split(data.split),
            "setup": setup,
            "seed": seed,
            "sizes": {"train": len(train.x), "val": len(val.x), "test": len(test.x)},
            **data.split.meta,
        },
        "labels": {"emotions": list(data.label_space.emotions)},
        "metrics": test_metrics,
        "confound": confound_metrics(data, pred, factor)
        if setup in ("confounded", "unconfounded")
        else {},
        "probe": {
            orthogonal: invariance_probes(
                net, train, test if orthogonal == "word" else val, orthogonal
            )
        },
        "history": result["history"],
        "best_epoch": result["best_epoch"],
        "resources": cost,
        "at_cache": anti_transfer.cache_stats if anti_transfer is not None else None,
        "dropped_silent": data.dropped_silent,
        "code_version": runs.code_version(),
        "device": device,
        "wall_time_s": time.perf_counter() - t_start,
    }
    if rank == 0:
        runs.write_json_beside(target, record)
        ckpt.unlink(missing_ok=True)  # the record is safe; the resume point is no longer needed
    return record


def sweep_configs(taps=None, models=MODELS, seeds=(0,), **kwargs) -> list[dict]:
    """train_ser keyword sets for taps x models x seeds (all 13 taps by default), each
    model's baseline included so gains can be computed."""
    configs = []
    for model in models:
        for seed in seeds:
            base = dict(kwargs, model=model, seed=seed)
            configs += [dict(base, tap=tap) for tap in taps or VGG16_TAPS]
            configs.append(dict(base, method="baseline"))
    return configs


def sweep(taps=None, models=MODELS, seeds=(0,), jobs: int = 1, **kwargs) -> list[dict]:
    """Run (or reuse) train_ser over taps x models x seeds in `jobs` parallel processes;
    configurations whose record exists are not run again."""
    from qat.sweep import run_grid

    kwargs.setdefault("method", "at")
    kwargs.pop("progress", None)  # workers run quietly; the sweep shows one bar
    return run_grid(sweep_configs(taps, models, seeds, **kwargs), jobs=jobs)
