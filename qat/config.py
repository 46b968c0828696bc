"""One home for a run's settings: `RunConfig`, the profiles, and the choices of every field.

A run is named by a flat set of values (corpus, setup, model, method, ...). `RunConfig` holds
them with their types, defaults, valid choices and help lines; validates them with one message
style ("<field>=<value>: expected <what is valid>"); gives the normalised dict that is hashed
into the record key (settings a method ignores are left out, so two spellings of the same run
share one record); gives the run's human label; and reads a config back from a record.
The CLI's options, the widget panel's controls, notebook checks, sweeps and report labels are
all derived from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qat.data.augment import AUGMENTS
from qat.data.augment import RANGES as AUGMENT_RANGES
from qat.data.corpora import CORPORA
from qat.data.splits import FACTORS, SETUPS
from qat.models import ENCODERS, PENULTIMATE, VGG16_TAPS
from qat.runs import config_key

MODELS = ("real", "quaternion")
METHODS = ("baseline", "at", "cka", "dann", "cdann", "reweight", "subsample", "groupdro", "jtt",
           "dfr")  # fmt: skip
TAP_METHODS = ("at", "cka")  # methods that act at taps, with weight beta
ADVERSARY_METHODS = ("dann", "cdann")  # methods with an adversary of weight lam
GROUP_METHODS = ("reweight", "subsample", "groupdro", "dfr")  # need the confound's groups
# What each method uses beyond the emotion labels (the robustness literature's "information
# regime"): comparisons across regimes are labelled as such.
REGIMES = {
    "baseline": "emotion labels only",
    "jtt": "emotion labels only (no group labels in training)",
    "at": "a separate orthogonal corpus (a frozen word or speaker network)",
    "cka": "a separate orthogonal corpus (a frozen word or speaker network)",
    "dann": "the confound's labels (word or speaker) in training",
    "cdann": "the confound's labels (word or speaker) in training",
    "reweight": "group labels in training",
    "subsample": "group labels in training",
    "groupdro": "group labels in training",
    "dfr": "a group-balanced held-out set (group labels there, not in training)",
}
PLACEBO_REGIME = "nothing about the confound (placebo: an untrained or label-shuffled network)"
CEILING_REGIME = "unconfounded training data"
ORTHOGONAL_TASKS = ("word", "speaker", "session")  # session: IEMOCAP, as the published code
PLACEBOS = ("random", "shuffled")  # at/cka from a network that knows nothing of words
GRAMS = ("sample", "batch")
# bf16: the forward passes under bfloat16 autocast (AT's Gram and CKA stay in float32). It
# changes the numbers, so it enters the record key (only when not fp32: earlier keys stand).
PRECISIONS = ("fp32", "bf16")
TAPS = (*VGG16_TAPS, PENULTIMATE)  # where anti-transfer can act
# Level-robust input (issue 38): the input level (qat.data.features.LEVELS: the waveform as
# recorded, or each segment loudness-normalised before its features; spelled here so that
# reading the settings does not import librosa, and a test checks they are the same tuple) and
# the augmentation of training batches (qat.data.augment). Each enters the record key only
# when it is not the default: earlier keys stand.
LEVELS = ("raw", "normalise")
SER_CORPORA = ("synthemo", *(c for c in CORPORA if c not in ("synthemo", "speechcommands")))
MAX_SEED = 2**31 - 1

# The instrument pilot (reports/instrument.md): the same data at the new size (10 repetitions:
# a word-confounded training split of more than 3,000 items), speaker folds, larger upstream
# budgets, and candidate recipes compared on baseline and ceiling runs only.
INSTRUMENT_DATA = dict(
    corpus=dict(repetitions=10),
    orthogonal_corpus=dict(repetitions=8),
    orthogonal_setup="speaker",  # word/speaker networks scored on held-out speakers
    features=dict(kind="logmel", segment_seconds=1.0, n_mels=64),
    rhemo_pools=((2, 2), (2, 1), (1, 1)),
    width=1 / 8, batch_size=32, val_fraction=0.2, folds=4, n_test_speakers=3,
    rhemo_epochs=(15, 15), orthogonal_epochs=15, monitor_items=1000, probe_items=2000,
)  # fmt: skip
RECIPES = {
    # The v1 recipe: Adam at a constant lr, early stopping on the validation loss.
    "adam-es": dict(optimizer="adam", lr=2e-3, schedule="constant", selection="best_val_loss",
                    epochs=12, patience=4),
    # AdamW with warm-up and cosine decay; the EMA of the weights is the model.
    "adamw-onecycle-ema": dict(optimizer="adamw", weight_decay=0.05, lr=3e-3,
                               schedule="onecycle", warmup=0.15, selection="ema",
                               ema_decay=0.99, epochs=12, patience=12),
}  # fmt: skip
CPU_RECIPE = "adamw-onecycle-ema"  # chosen by the pilot's rule (qat.instrument.choose)
# The instrument's quaternion pipeline reads RH-emo with this encoder. The diagnosis
# (reports/instrument.md, section 7) compares the wide one on ceiling runs; it is adopted only
# when a gain is confirmed on fresh (seed, fold) pairs, which it has not been.
INSTRUMENT_ENCODER = "published"

# How the upstream networks (RH-emo and the orthogonal networks) are trained: the run setting
# `upstream`, written before any of its runs. "v1" is how every record before this registry
# trained them: RH-emo with Adam at the profile's lr, constant, for a fixed number of epochs,
# the last one kept; the orthogonal networks with the SER recipe for `orthogonal_epochs`. The
# others train with the SER recipe's care (UPSTREAM_RECIPE: warm-up and cosine decay, early
# stopping on the validation objective, the best-validation weights kept; each stage of RH-emo
# has its own cycle) and differ in RH-emo's loss weights: reconstruction against the emotion
# head and the valence/arousal/dominance heads. RH-emo's encoder (channels) is the run setting
# `rhemo_encoder`; the embedding's size (pools) is the profile's, so every candidate costs
# the downstream quaternion VGG16 the same step. qat.embedding chooses among them on
# validation data of ceiling runs only, and confirms on fresh pairs.
# Patience spans a third of a stage, so early stopping ends a stage in its decay phase, not
# while the one-cycle lr is still high (the validation objective is noisy there).
UPSTREAM_RECIPE = dict(optimizer="adamw", weight_decay=0.05, lr=3e-3, schedule="onecycle",
                       warmup=0.15, selection="best_val_loss", patience=10)  # fmt: skip
UPSTREAMS = {
    "v1": dict(recipe=None, rhemo_weights=dict(reconstruction=1.0, emotion=1.0, ratings=1.0)),
    "careful": dict(recipe=UPSTREAM_RECIPE, rhemo_epochs=(15, 30), orthogonal_epochs=30,
                    rhemo_weights=dict(reconstruction=1.0, emotion=1.0, ratings=1.0)),
    "careful-emotion": dict(recipe=UPSTREAM_RECIPE, rhemo_epochs=(15, 30), orthogonal_epochs=30,
                            rhemo_weights=dict(reconstruction=1.0, emotion=3.0, ratings=1.0)),
}  # fmt: skip
# The instrument's upstream networks; "v1" until qat.embedding's choice is confirmed on fresh
# pairs (reports/instrument.md, section 8).
INSTRUMENT_UPSTREAM = "v1"
# The run setting `precision` of each model's runs in the fair race: fp32 until qat.precision's
# rule, written before its runs, adopts bf16 for the real network (reports/instrument.md,
# section 9). The cost claim (quaternion/real step) is timed in fp32 whatever this says.
INSTRUMENT_PRECISION = {"real": "fp32", "quaternion": "fp32"}

# Sizes and recipe per profile. "cpu" runs on this machine; "paper" is the WASPAA 2023
# setting (full-width VGG16, 4 s STFT segments 512 x 128, Adam lr 1e-5..5e-5, batch 20,
# patience 20). A profile's settings are hashed into every record key: editing one reruns its
# runs. Keys a TrainConfig field names (epochs, lr, optimizer, schedule, selection, ...) are
# the training recipe.
PROFILES = {
    "smoke": dict(
        corpus=dict(n_speakers=4, n_words=10, repetitions=1),
        orthogonal_corpus=dict(n_speakers=4, n_words=10, repetitions=2),
        features=dict(kind="logmel", segment_seconds=0.5, n_mels=32),
        rhemo_pools=((2, 1), (1, 1), (1, 1)),
        width=1 / 16, epochs=1, batch_size=16, lr=1e-3, patience=1,
        rhemo_epochs=(1, 1), orthogonal_epochs=1, n_test_speakers=1,
    ),
    # The frozen instrument (reports/instrument.md): the pilot's chosen recipe on its data.
    "cpu": {**INSTRUMENT_DATA, **RECIPES[CPU_RECIPE]},
    "paper": dict(
        corpus=dict(),
        orthogonal_corpus=dict(),
        features=dict(kind="stft", segment_seconds=4.0),
        rhemo_pools=((2, 2), (2, 1), (2, 1)),
        width=1.0, epochs=200, batch_size=20, lr=2e-5, patience=20,
        rhemo_epochs=(50, 50), orthogonal_epochs=100, n_test_speakers=3,
    ),
}  # fmt: skip
PROFILES.update({f"pilot-{name}": {**INSTRUMENT_DATA, **r} for name, r in RECIPES.items()})

# Why the quaternion ceiling lags the real one (reports/instrument.md): the frozen instrument
# with one change each, run as ceilings (baseline on the unconfounded split) only. Keys beside
# the cpu profile's: quaternion_width (the quaternion VGG16's width), real_input="rhemo" (the
# real VGG16 reads the RH-emo embedding), rhemo_recipe (RH-emo's optimizer and schedule),
# rhemo_profile (reuse that profile's RH-emo per split: the data and features are the same).
# RH-emo's encoder is a run setting (rhemo_encoder): its diagnosis is the cpu profile's
# quaternion runs with rhemo_encoder="wide".
DIAGNOSES = {
    "quaternion-width": ("the quaternion VGG16 at width 1/4: the real one's parameter count",
                         dict(quaternion_width=1 / 4, rhemo_profile="cpu")),
    "real-on-rhemo": ("the real VGG16 (width 1/8) reading the RH-emo embedding",
                      dict(real_input="rhemo", rhemo_profile="cpu")),
    "rhemo-recipe": ("RH-emo trained with the frozen recipe's AdamW and one-cycle schedule",
                     dict(rhemo_recipe=dict(optimizer="adamw", weight_decay=0.05,
                                            schedule="onecycle", warmup=0.15))),
    "rhemo-pools": ("RH-emo without compression: pools (2,1),(1,1),(1,1), a 4x64x64 embedding",
                    dict(rhemo_pools=((2, 1), (1, 1), (1, 1)))),
}  # fmt: skip
PROFILES.update({f"diag-{name}": {**PROFILES["cpu"], **change}
                 for name, (_, change) in DIAGNOSES.items()})  # fmt: skip


def default_profile() -> str:
    """$QAT_PROFILE (the test suite sets "smoke") or "cpu": notebooks and `qat` start here. A
    value that is no profile (empty included) is refused naming the variable, which the user
    never typed into the command that failed."""
    value = os.environ.get("QAT_PROFILE")
    if value is None:
        return "cpu"
    if value not in PROFILES:
        raise ValueError(f"$QAT_PROFILE={value!r}: expected one of {', '.join(PROFILES)}, or "
                         "unset it for cpu")  # fmt: skip
    return value


def check_choice(name: str, value, valid) -> None:
    """The one message style for a value outside a fixed set of choices."""
    valid = tuple(valid)
    if isinstance(value, bool | list | dict) or value not in valid:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(map(str, valid))}")


def check_number(name: str, value, low=0.0, high=math.inf, *, integer=False, open_low=False):
    """A finite number (an int if `integer`) in [low, high] ((low, high] if `open_low`)."""
    kind = "an integer" if integer else "a number"
    bracket = "(" if open_low else "["
    span = f"{bracket}{low:g}, {high:g}]" if high < math.inf else None
    what = f"{kind} in {span}" if span else f"{kind} {'>' if open_low else '>='} {low:g}"
    ok_type = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise ValueError(f"{name}={value!r}: expected {what}")
    if not math.isfinite(value) or value > high or value < low or (open_low and value == low):
        raise ValueError(f"{name}={value!r}: expected {what}")


def _spec(help: str, choices=None, **kw):
    return field(metadata={"help": help, "choices": choices, **kw}, **_default(kw))


def _default(kw: dict) -> dict:
    if "factory" in kw:
        return {"default_factory": kw.pop("factory")}
    return {"default": kw.pop("default")}


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one SER run. Build with keywords (`RunConfig(method="at", tap="conv2_1")`);
    invalid values raise ValueError naming the field, the value and what is valid."""

    corpus: str = _spec("SER corpus: synthemo is built by the kit; the others are read "
                        "from --root", SER_CORPORA, default="synthemo")  # fmt: skip
    root: str | None = _spec("folder of a real corpus in its official layout (or a manifest "
                             "CSV); empty for synthemo", default=None)  # fmt: skip
    setup: str = _spec("task split", SETUPS, default="confounded")
    model: str = _spec("real VGG16 on spectrograms, or quaternion VGG16 on RH-emo embeddings",
                       MODELS, default="real")  # fmt: skip
    method: str = _spec("invariance method", METHODS, default="baseline")
    orthogonal: str = _spec("what the method removes: the orthogonal task, or a placebo network "
                            "(random: untrained; shuffled: trained on shuffled word labels)",
                            (*ORTHOGONAL_TASKS, *PLACEBOS), default="word")  # fmt: skip
    orthogonal_root: str | None = _spec("a real corpus's word data: a Speech Commands "
                                        "folder or a manifest with text", default=None)  # fmt: skip
    rhemo: str | None = _spec("quaternion: a frozen RH-emo file from `qat rhemo` to reuse "
                              "(default: one trained on this split)", default=None)  # fmt: skip
    rhemo_encoder: str = _spec("quaternion: RH-emo's encoder, published (channels 1-2-4-4), "
                               "wide (1-8-16-4) or uncompressed (1-2-4-4 with pools (2,1),(1,1),"
                               "(1,1)); reports/instrument.md section 7 compares them",
                               tuple(ENCODERS), default="published")  # fmt: skip
    upstream: str = _spec("how RH-emo and the orthogonal networks are trained (qat.config."
                          "UPSTREAMS): v1 as first recorded, or with schedule, early stopping "
                          "and best-validation weights", tuple(UPSTREAMS),
                          default=INSTRUMENT_UPSTREAM)  # fmt: skip
    tap: tuple[str, ...] = _spec("tap(s) where at/cka act; several (comma-separated) sum the "
                                 "terms", TAPS, default=("conv2_1",))  # fmt: skip
    beta: float = _spec("weight of the at/cka term (applied once)", default=1.0)
    gram: str = _spec("at: Gram per item (sample) or batch-folded as published (batch)",
                      GRAMS, default="sample")  # fmt: skip
    lam: float = _spec("peak weight of the dann/cdann adversary", default=1.0)
    init_from_orthogonal: bool = _spec("start from the orthogonal network's weights",
                                       default=False)  # fmt: skip
    eta: float = _spec("groupdro: step size of the group weights", default=0.01)
    group_adjustment: float = _spec("groupdro: C of the group adjustment C/sqrt(n_g) (0: off)",
                                    default=0.0)  # fmt: skip
    weight_decay: float | None = _spec("decoupled weight decay (default: the profile's); "
                                       "GroupDRO pairs with strong L2", default=None)  # fmt: skip
    lr: float | None = _spec("peak learning rate (default: the profile's)", default=None)
    grad_clip: float | None = _spec("the gradients' global L2 norm is clipped to this (default: "
                                    "the profile's, no clipping)", default=None)  # fmt: skip
    selection: str | None = _spec("which weights a run keeps: default the profile's rule; "
                                  "worst_group: the best worst-group validation accuracy",
                                  ("worst_group",), default=None)  # fmt: skip
    precision: str = _spec("fp32, or bf16: the forward passes under bfloat16 autocast (AT's "
                           "Gram and CKA in float32)", PRECISIONS, default="fp32")  # fmt: skip
    level: str = _spec("input level: raw (the waveform as recorded) or normalise (each "
                       "segment scaled to a fixed RMS over its active blocks before its "
                       "features; qat.data.features.normalise_level)", LEVELS,
                       default="raw")  # fmt: skip
    augment: str = _spec("training batches only: none, gain (a random gain of up to +-12 dB per "
                         "item) or gain+noise (and noise at 5-30 dB SNR on half the items), in "
                         "the feature domain (qat.data.augment)", AUGMENTS,
                         default="none")  # fmt: skip
    jtt_epochs: int = _spec("jtt: epochs T of the first (ERM) stage", default=2)
    lambda_up: float = _spec("jtt: weight of the items the first stage got wrong", default=6.0)
    rho: float = _spec("confounded setups: share of congruent training items", default=0.9)
    factor: str = _spec("confounded setups: the factor tied to emotion in training", FACTORS,
                        default="word")  # fmt: skip
    seed: int = _spec("seed of the split, initialisation and batch order", default=0)
    fold: int | None = _spec("held-out setups: test on the fold-th of the profile's fixed "
                             "speaker (or word) folds; empty: a seeded held-out set",
                             default=None)  # fmt: skip
    profile: str = _spec("sizes and recipe (smoke: tests, cpu: this machine, paper: a GPU); "
                         "default $QAT_PROFILE or cpu", tuple(PROFILES),
                         factory=default_profile)  # fmt: skip

    def __post_init__(self):
        tap = self.tap
        if isinstance(tap, str):
            tap = tuple(t.strip() for t in tap.split(",")) if "," in tap else (tap,)
        elif tap is None:
            tap = ()
        elif isinstance(tap, Sequence):
            tap = tuple(tap)
        object.__setattr__(self, "tap", tap)
        for name in ("root", "orthogonal_root", "rhemo"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
            if getattr(self, name) == "":
                raise ValueError(f"{name}='': expected a path, or None")
        for f in dataclasses.fields(self):
            validate_field(f.name, getattr(self, f.name))
        if self.uses_taps and not self.tap:
            raise ValueError(
                f"tap=(): expected at least one of {', '.join(TAPS)} (method={self.method!r})"
            )
        if self.orthogonal in PLACEBOS and self.uses_orthogonal and not self.uses_taps:
            raise ValueError(f"orthogonal={self.orthogonal!r}: expected one of "
                             f"{', '.join(ORTHOGONAL_TASKS)} for method={self.method!r} (the "
                             "placebo networks are for at and cka)")  # fmt: skip
        needs_groups = [f"method={self.method!r}"] if self.method in GROUP_METHODS else []
        needs_groups += [f"selection={self.selection!r}"] if self.selection else []
        if needs_groups and not self.confounded:
            raise ValueError(
                f"{needs_groups[0]}: expected a setup with the confound's groups (confounded or "
                f"unconfounded), got setup={self.setup!r}; the kit knows groups only on "
                "SynthEmo's confounded splits"
            )
        if self.orthogonal == "session" and self.uses_adversary:
            raise ValueError("orthogonal='session': expected word or speaker for an adversary")
        if self.fold is not None and self.setup == "random":
            raise ValueError(f"fold={self.fold!r}: expected None (the random setup has no folds)")
        if self.fold is not None and self.corpus == "synthemo" and self.root is None:
            folds = PROFILES[self.profile].get("folds")
            if not folds:
                raise ValueError(f"fold={self.fold!r}: expected None (profile {self.profile!r} "
                                 "has no SynthEmo folds)")  # fmt: skip
            check_number("fold", self.fold, 0, folds - 1, integer=True)
        if self.profile.startswith("diag-") and self.method != "baseline":
            raise ValueError(f"profile={self.profile!r}: expected method='baseline' (a "
                             "diagnostic profile runs baselines and ceilings only)")  # fmt: skip
        if self.augment != "none" and self.reads_rhemo:
            raise ValueError(f"augment={self.augment!r}: expected 'none' for a network that "
                             "reads RH-emo embeddings (they are computed once, before "
                             "training); augment is for networks that read "
                             "features")  # fmt: skip
        # A real corpus's folds depend on its speakers: checked when its split is made.
        if self.corpus != "synthemo" and self.root is None:
            raise ValueError(
                f"root=None: expected the folder of corpus={self.corpus!r} in its official "
                "layout; or use corpus='synthemo', which the kit builds itself"
            )

    # ------------------------------------------------------------ what applies

    @property
    def uses_taps(self) -> bool:
        return self.method in TAP_METHODS

    @property
    def information(self) -> str:
        """What the run uses beyond the emotion labels: its information regime. A penalty from a
        placebo network knows nothing of the confound; the unconfounded baseline is the ceiling."""
        if self.method == "baseline" and self.setup == "unconfounded":
            return CEILING_REGIME
        if self.uses_taps and self.orthogonal in PLACEBOS:
            return PLACEBO_REGIME
        return REGIMES[self.method]

    @property
    def uses_adversary(self) -> bool:
        return self.method in ADVERSARY_METHODS

    @property
    def uses_orthogonal(self) -> bool:
        """The run reads a pretrained orthogonal network or orthogonal labels."""
        return self.uses_taps or self.uses_adversary or self.init_from_orthogonal

    @property
    def reads_rhemo(self) -> bool:
        """The network reads RH-emo embeddings: quaternion models, and the real one where the
        profile says so."""
        return self.model == "quaternion" or PROFILES[self.profile].get("real_input") == "rhemo"

    @property
    def width(self) -> float:
        """The VGG16's width multiplier under the run's profile."""
        p = PROFILES[self.profile]
        return p.get("quaternion_width", p["width"]) if self.model == "quaternion" else p["width"]

    @property
    def confounded(self) -> bool:
        return self.setup in ("confounded", "unconfounded")

    @property
    def taps(self) -> list[str]:
        return list(self.tap) if self.uses_taps else []

    @property
    def probe_target(self) -> str:
        """The orthogonal label the invariance probe decodes: what the method removes (words for
        a placebo, speakers for sessions), else the confounding factor's, else words."""
        if self.uses_orthogonal:
            return {"speaker": "speaker", "session": "speaker"}.get(self.orthogonal, "word")
        return self.factor if self.confounded else "word"

    @property
    def split_options(self) -> dict:
        """rho and factor only shape the confounded setup and its unconfounded control; fold
        only the held-out setups."""
        out = {"rho": self.rho, "factor": self.factor} if self.confounded else {}
        if self.fold is not None:
            out["fold"] = self.fold
        return out

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ keys and labels

    def key_dict(self, **extra) -> dict:
        """The normalised configuration hashed into the record key and stored in the record.
        Settings the method ignores are None (so a baseline's beta never makes a new run)."""
        return dict(
            corpus=self.corpus,
            root=str(Path(self.root).resolve()) if self.root else None,
            setup=self.setup,
            model=self.model,
            method=self.method,
            orthogonal=self.orthogonal if self.uses_orthogonal else None,
            taps=self.taps,
            beta=self.beta if self.uses_taps else None,
            gram=self.gram if self.method == "at" else None,
            lam=self.lam if self.uses_adversary else None,
            init_from_orthogonal=self.init_from_orthogonal,
            seed=self.seed,
            profile=self.profile,
            profile_settings=config_key(PROFILES[self.profile]),  # editing a profile reruns
            split=self.split_options,
            **self._optional_keys(),
            **extra,
        )

    def _optional_keys(self) -> dict:
        """Settings added after the first records: in the key only when they are used, so
        every earlier record keeps its key."""
        out = {}
        if self.orthogonal_root and self.uses_orthogonal:
            out["orthogonal_root"] = str(Path(self.orthogonal_root).resolve())
        if self.rhemo and self.reads_rhemo:  # by content, whichever network reads it
            out["rhemo"] = _file_identity(self.rhemo)
        if self.method == "groupdro":
            out.update(eta=self.eta, group_adjustment=self.group_adjustment)
        if self.method == "jtt":
            out.update(jtt_epochs=self.jtt_epochs, lambda_up=self.lambda_up)
        if self.weight_decay is not None:
            out["weight_decay"] = self.weight_decay
        if self.lr is not None:
            out["lr"] = self.lr
        if self.grad_clip is not None:
            out["grad_clip"] = self.grad_clip
        if self.selection is not None:
            out["selection"] = self.selection
        if self.precision != "fp32":
            out["precision"] = self.precision
        if self.reads_rhemo and not self.rhemo and self.rhemo_encoder != "published":
            out["rhemo_encoder"] = self.rhemo_encoder
        if self.level != "raw":
            out["level"] = self.level
        if self.augment != "none":
            out["augment"] = self.augment
            out["augment_ranges"] = AUGMENT_RANGES
        if self.upstream != "v1" and self.trains_upstream:
            out["upstream"] = upstream_key(self.upstream, self.reads_rhemo and not self.rhemo)
        return out

    @property
    def trains_upstream(self) -> bool:
        """The run reads an RH-emo or orthogonal network the kit trains (not a user's file)."""
        return (self.reads_rhemo and not self.rhemo) or self.uses_orthogonal

    def key(self) -> str:
        return config_key(self.key_dict())

    def prerequisites(self) -> tuple:
        """What the shared inputs of a run (split, RH-emo, orthogonal network) depend on: runs
        with equal prerequisites can share them."""
        orthogonal = self.orthogonal if self.uses_orthogonal else None
        encoder = self.rhemo_encoder if self.reads_rhemo else None
        upstream = self.upstream if self.trains_upstream else None
        return (self.corpus, self.root, self.setup, self.model, self.seed, self.profile,
                orthogonal, encoder, upstream, self.level,
                *self.split_options.values())  # fmt: skip

    def label(self, without: Sequence[str] = ()) -> str:
        """A short human name, e.g. "[confounded] quaternion at word@conv2_1 β=1 seed 1".
        `without` drops parts every compared run shares: "setup", "model", "taps", "seed"."""
        return label_of(self.key_dict(), without)

    @classmethod
    def from_record(cls, record: Mapping) -> RunConfig:
        """The configuration of a run record (or of its "config" dict)."""
        c = record.get("config", record)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in c.items() if k in names and v is not None}
        if c.get("taps"):
            kw["tap"] = tuple(c["taps"])
        kw.update(c.get("split") or {})
        kw["upstream"] = upstream_name(c.get("upstream"))
        return cls(**kw)


def _orthogonal_part(name: str) -> dict:
    design = UPSTREAMS[name]
    return {"recipe": design["recipe"], "epochs": design.get("orthogonal_epochs")}


def upstream_key(name: str, reads_rhemo: bool) -> dict:
    """What a run's key holds of its upstream design (with the settings: editing a design
    reruns its runs): all of it for a run that reads RH-emo; only the orthogonal networks'
    recipe otherwise, so designs that differ in RH-emo alone share those runs."""
    if reads_rhemo:
        return {"name": name, "settings": config_key(UPSTREAMS[name])}
    return {"orthogonal": config_key(_orthogonal_part(name))}


def upstream_name(entry) -> str:
    """The design a record's `upstream` key entry names (v1: none, as before the designs); for
    an entry of the orthogonal recipe alone, the first design with that recipe."""
    if not entry:
        return "v1"
    if "name" in entry:
        return entry["name"]
    return next(n for n in UPSTREAMS if n != "v1"
                and config_key(_orthogonal_part(n)) == entry["orthogonal"])  # fmt: skip


def _file_identity(path: str) -> dict:
    """A file named in a key: its resolved path and content digest (a replaced file is a new
    run)."""
    from qat.data.records import file_digest

    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"rhemo={path!r}: no such file; expected a `qat rhemo` file")
    return {"path": str(resolved), "sha256": file_digest(resolved)}


def label_of(config: Mapping, without: Sequence[str] = ()) -> str:
    """The label of a normalised config dict (a record's "config")."""
    parts = []
    if "setup" not in without:
        split = config.get("split") or {}
        setting = [config.get("setup")]
        if split.get("factor", "word") != "word":
            setting.append(f"by {split['factor']}")
        if split.get("rho", 0.9) != 0.9:
            setting.append(f"ρ={split['rho']:g}")
        if split.get("fold") is not None and "fold" not in without:
            setting.append(f"fold {split['fold']}")
        parts.append(f"[{' '.join(map(str, setting))}]")
    if "model" not in without:
        parts.append(str(config.get("model")))
    method = str(config.get("method"))
    if config.get("orthogonal") and method != "baseline":
        method += f" {config['orthogonal']}"
    taps = config.get("taps") or []
    if taps and "taps" not in without:
        method += "@" + "+".join(taps)
    parts.append(method)
    if config.get("beta") is not None:
        parts.append(f"β={config['beta']:g}")
    if config.get("gram") not in (None, "sample"):
        parts.append(f"gram={config['gram']}")
    if config.get("lam") is not None:
        parts.append(f"λ={config['lam']:g}")
    if config.get("init_from_orthogonal"):
        parts.append("+init")
    if config.get("rhemo_encoder"):
        parts.append(f"RH-emo {config['rhemo_encoder']}")
    if config.get("upstream"):
        parts.append(f"upstream {upstream_name(config['upstream'])}")
    for key, name in (("eta", "η"), ("group_adjustment", "C"), ("jtt_epochs", "T"),
                      ("lambda_up", "λup"), ("weight_decay", "wd"), ("lr", "lr"),
                      ("grad_clip", "clip")):  # fmt: skip
        if config.get(key):
            parts.append(f"{name}={config[key]:g}")
    if config.get("precision"):
        parts.append(config["precision"])
    if config.get("level"):
        parts.append(f"level {config['level']}")
    if config.get("augment"):
        parts.append(f"augment {config['augment']}")
    if config.get("seed") and "seed" not in without:
        parts.append(f"seed {config['seed']}")
    return " ".join(parts)


# ---------------------------------------------------------------- per-field validation

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _check_root(name: str, value) -> None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name}={value!r}: expected a folder path or None")


def _check_taps(name: str, value) -> None:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Sequence):
        raise ValueError(f"{name}={value!r}: expected a tap or a list of taps")
    for tap in value:
        check_choice(name, tap, TAPS)


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected True or False")


_CHECKS = {
    "profile": lambda n, v: check_choice(n, v, PROFILES),
    "root": _check_root,
    "orthogonal_root": _check_root,
    "rhemo": _check_root,
    "tap": _check_taps,
    "beta": lambda n, v: check_number(n, v),
    "lam": lambda n, v: check_number(n, v),
    "rho": lambda n, v: check_number(n, v, 0.0, 1.0),
    "eta": lambda n, v: check_number(n, v, 0.0, 1e3, open_low=True),
    "group_adjustment": lambda n, v: check_number(n, v),
    "weight_decay": lambda n, v: None if v is None else check_number(n, v),
    "lr": lambda n, v: None if v is None else check_number(n, v, 0.0, 10.0, open_low=True),
    "grad_clip": lambda n, v: None if v is None else check_number(n, v),
    "selection": lambda n, v: None if v is None else check_choice(n, v, ("worst_group",)),
    "jtt_epochs": lambda n, v: check_number(n, v, 1, 10**4, integer=True),
    "lambda_up": lambda n, v: check_number(n, v, 1.0, 1e6),
    "seed": lambda n, v: check_number(n, v, 0, MAX_SEED, integer=True),
    "fold": lambda n, v: None if v is None else check_number(n, v, 0, 10**6, integer=True),
    "init_from_orthogonal": _check_flag,
}


def validate_field(name: str, value) -> None:
    """Check one RunConfig field's value; ValueError "<name>=<value>: expected ..."."""
    if name not in _FIELDS:
        raise ValueError(f"unknown setting {name!r}; expected one of {', '.join(_FIELDS)}")
    check = _CHECKS.get(name)
    if check is not None:
        check(name, value)
    elif _FIELDS[name].metadata.get("choices") is not None:
        check_choice(name, value, _FIELDS[name].metadata["choices"])


def fields() -> tuple[dataclasses.Field, ...]:
    """RunConfig's fields, each with metadata "help" and "choices" (None when free)."""
    return dataclasses.fields(RunConfig)
