"""The one registry of what every method is tuned over in the demonstration's fair race.

Every method, the baseline included, gets the same number of random draws (N_DRAWS) over the
learning rate, the weight decay and its own knobs, from the ranges below, written before any
run (SubpopBench's hparams_registry: the same budget for every algorithm, ERM included). A
draw is reproducible on its own: draw i of a method comes from a numpy Generator seeded by
(the method's name, i), so adding a method or a draw never moves another method's draws.

Beside the draws, FIXED holds what each method's paper trains it with and nobody tunes
(GroupDRO's early stopping on worst-group validation accuracy) and what every method gets for
robustness (gradient clipping). The ranges live here and nowhere else; qat.demonstration turns
a draw into a RunConfig and the page prints the registry from `describe`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from qat.config import METHODS, TAPS

N_DRAWS = 8  # per method, the baseline included (SubpopBench draws 16 or more on a GPU)
SIGNIFICANT = 3  # drawn numbers keep 3 significant digits: readable keys and labels


def _rounded(value: float) -> float:
    """`value` to SIGNIFICANT digits. Rounding is monotone and the bounds below have at most 3
    significant digits, so a rounded draw never leaves its range."""
    return float(f"{value:.{SIGNIFICANT}g}")


@dataclass(frozen=True)
class LogUniform:
    """A number whose logarithm is uniform in [log low, log high]: scale knobs (learning
    rate, weight decay, penalty weights) matter by their order of magnitude."""

    low: float
    high: float

    def draw(self, rng: np.random.Generator) -> float:
        return _rounded(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def contains(self, value) -> bool:
        return isinstance(value, float) and self.low <= value <= self.high

    def __str__(self) -> str:
        return f"log-uniform in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class IntUniform:
    """An integer uniform in [low, high], both included."""

    low: int
    high: int

    def draw(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.low, self.high + 1))

    def contains(self, value) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high

    def __str__(self) -> str:
        return f"integer uniform in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class Choice:
    """One of a few values, each equally likely."""

    values: tuple

    def draw(self, rng: np.random.Generator):
        return self.values[int(rng.integers(len(self.values)))]

    def contains(self, value) -> bool:
        return value in self.values

    def __str__(self) -> str:
        return f"uniform over {len(self.values)}: {', '.join(map(str, self.values))}"


# Every method's learning rate and weight decay (decoupled, AdamW).
COMMON = {"lr": LogUniform(3e-4, 1e-2), "weight_decay": LogUniform(1e-4, 1e-1)}
# Each method's own knobs; a name that COMMON also has replaces its range.
OWN: dict[str, dict] = {
    "baseline": {},
    "at": {"tap": Choice(TAPS), "beta": LogUniform(0.1, 100.0)},
    "cka": {"tap": Choice(TAPS), "beta": LogUniform(0.01, 10.0)},
    "dann": {"lam": LogUniform(0.01, 10.0)},
    "cdann": {"lam": LogUniform(0.01, 10.0)},
    # Sagawa et al. (2020): GroupDRO generalises only with strong L2 (or early stopping).
    "groupdro": {"eta": LogUniform(1e-3, 1e-1), "weight_decay": LogUniform(1e-2, 1.0)},
    # T, the first stage's epochs, is searched: the paper tunes it per data set.
    "jtt": {"jtt_epochs": IntUniform(1, 8), "lambda_up": LogUniform(1.0, 10**2.5)},
    "reweight": {},
    "subsample": {},
    "dfr": {},  # its C is tuned inside the refit, on half of its balanced set
}
SPACES: dict[str, dict] = {m: {**COMMON, **OWN[m]} for m in METHODS}

GRAD_CLIP = 1.0  # every method's gradients: a run that diverges early is a run lost
# Settings beside the draws, per method: every method's clipping, and GroupDRO's early stopping
# on worst-group validation accuracy (Sagawa et al.: strong L2 or early stopping).
FIXED: dict[str, dict] = {
    m: {"grad_clip": GRAD_CLIP, **({"selection": "worst_group"} if m == "groupdro" else {})}
    for m in METHODS
}


def _rng(method: str, index: int) -> np.random.Generator:
    """Draw `index` of `method`'s own generator: a stable digest of the name (not Python's
    salted hash), so the draws are the same in every process."""
    return np.random.default_rng([zlib.crc32(method.encode()), index])


def draw(method: str, index: int) -> dict:
    """Draw `index` (0-based) of `method`: {knob: value} over its space, in the space's order."""
    if method not in SPACES:
        raise ValueError(f"method={method!r}: expected one of {', '.join(SPACES)}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index={index!r}: expected an integer >= 0")
    rng = _rng(method, index)
    return {name: sampler.draw(rng) for name, sampler in SPACES[method].items()}


def draws(method: str, n: int = N_DRAWS) -> list[dict]:
    """The first `n` draws of `method`."""
    return [draw(method, i) for i in range(n)]


def settings(method: str, index: int) -> dict:
    """RunConfig settings of draw `index` of `method`: the draw and the method's FIXED ones."""
    return {**draw(method, index), **FIXED[method]}


def describe() -> list[dict]:
    """The registry as one row per method, for the page."""
    return [
        {
            "method": m,
            "draws": N_DRAWS,
            "learning rate": str(SPACES[m]["lr"]),
            "weight decay": str(SPACES[m]["weight_decay"]),
            "own knobs": "; ".join(f"{k}: {s}" for k, s in SPACES[m].items() if k not in COMMON)
            or "none",
            "fixed": ", ".join(f"{k}={v}" for k, v in FIXED[m].items()),
        }
        for m in METHODS
    ]
