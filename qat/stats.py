"""Paired statistics for comparing a method with the baseline (DESIGN.md section 6).

Runs are identified by (seed, fold). Each method run is paired with the baseline run on the same
(seed, fold), so run-to-run noise shared by both (the split, the initialisation) cancels in the
difference. Everything here works on those paired differences and reports intervals, not bare
means: a target counts as met only when its interval says so.

Only numpy and scipy are used, so the module can be read and checked on its own.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

__all__ = [
    "FiellerRatio",
    "GapClosed",
    "PairedResult",
    "fieller_ratio",
    "gap_closed",
    "gap_closed_fieller",
    "holm",
    "mean_interval",
    "paired",
    "paired_differences",
    "paired_power",
    "runs_for_power",
    "verdict",
]


# ---------------------------------------------------------------------------------------------
# Matching runs


def _fmt_keys(keys) -> str:
    return ", ".join(repr(k) for k in _sorted(keys))


def _sorted(keys) -> list:
    """Sorted keys; falls back to sorting by repr when keys do not compare (mixed types)."""
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=repr)


def _matched(named: Mapping[str, Mapping[Hashable, float]]) -> tuple[list, dict[str, np.ndarray]]:
    """Values of several run maps on their common keys, in sorted key order.

    Refuses rather than silently dropping runs: an unmatched (seed, fold) usually means a crashed
    or forgotten run, and analysing only the survivors would bias the comparison.
    """
    names = list(named)
    all_keys = set().union(*(set(m) for m in named.values()))
    problems = []
    for name in names:
        missing = all_keys - set(named[name])
        if missing:
            holders = [o for o in names if o != name and missing & set(named[o])]
            problems.append(
                f"{len(missing)} run(s) missing from {name} "
                f"(present in {', '.join(holders)}): {_fmt_keys(missing)}"
            )
    if problems:
        raise ValueError("unmatched runs, each must exist on all sides: " + "; ".join(problems))

    keys = _sorted(all_keys)
    values = {}
    bad = []
    for name in names:
        arr = np.array([float(named[name][k]) for k in keys], dtype=np.float64)
        nonfinite = [k for k, v in zip(keys, arr, strict=True) if not np.isfinite(v)]
        if nonfinite:
            bad.append(f"{name} at {_fmt_keys(nonfinite)}")
        values[name] = arr
    if bad:
        raise ValueError("non-finite values (NaN or inf): " + "; ".join(bad))
    if len(keys) < 2:
        raise ValueError(
            f"need at least 2 matched runs for a paired interval, got {len(keys)}"
            + (f" ({_fmt_keys(keys)})" if keys else "")
        )
    return keys, values


def paired_differences(
    method: Mapping[Hashable, float],
    baseline: Mapping[Hashable, float],
    name: str = "method",
) -> np.ndarray:
    """method - baseline on matched keys (e.g. (seed, fold)), in sorted key order.

    Raises ValueError naming the unmatched keys and their side, the keys holding NaN/inf, or the
    count when fewer than 2 runs match.
    """
    _, v = _matched({name: method, "baseline": baseline})
    return v[name] - v["baseline"]


# ---------------------------------------------------------------------------------------------
# Intervals


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (linear interpolation, as scipy's bootstrap).

    Infinite samples (resamples of a ratio with no defined value) can make the interpolation NaN;
    that end of the interval is then taken as unbounded, the conservative reading.
    """
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):
        low, high = np.percentile(samples, [100 * a, 100 * (1 - a)])
    return (-math.inf if np.isnan(low) else float(low), math.inf if np.isnan(high) else float(high))


def _boot_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Resampled run indices, shape (n_boot, n). Rows resample whole runs, keeping pairs intact."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _check_level(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


@dataclass(frozen=True)
class PairedResult:
    """Mean paired difference (method - baseline) with two intervals at `level`.

    The t-interval is the primary one (exact under normality, honest at the small n of a
    research kit); the percentile bootstrap needs no normality but is too narrow at small n.
    """

    n: int
    mean: float
    sd: float
    se: float
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float
    p_value: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when both intervals lie strictly on the same side of zero.

        Requiring both is deliberately conservative: a claim should not hinge on which interval
        one happened to look at.
        """
        above = self.t_low > 0 and self.boot_low > 0
        below = self.t_high < 0 and self.boot_high < 0
        return above or below


def paired(
    method: Mapping[Hashable, float],
    baseline: Mapping[Hashable, float],
    level: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
) -> PairedResult:
    """Paired comparison of method with baseline on matched (seed, fold) runs.

    The p-value is the two-sided paired t-test (same as scipy.stats.ttest_rel). When all
    differences are identical (sd = 0) the t statistic is undefined: p is then 0 if the common
    difference is non-zero and 1 if it is zero, and both intervals collapse to the point.
    """
    _check_level(level, n_boot)
    d = paired_differences(method, baseline)
    n = d.size
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    if se > 0:
        half = float(_st.t.ppf(0.5 + level / 2.0, df)) * se
        p = float(2.0 * _st.t.sf(abs(mean) / se, df))
    else:
        half = 0.0
        p = 0.0 if mean != 0 else 1.0
    boot = d[_boot_indices(n, n_boot, seed)].mean(axis=1)
    boot_low, boot_high = _percentile_interval(boot, level)
    return PairedResult(
        n=n,
        mean=mean,
        sd=sd,
        se=se,
        t_low=mean - half,
        t_high=mean + half,
        boot_low=boot_low,
        boot_high=boot_high,
        p_value=p,
        level=level,
    )


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of independent `values` (e.g. one configuration's runs, or
    the upstream networks of one setting): NaN ends for fewer than two values, the point
    itself when all values are equal."""
    _check_level(level, 1)
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    mean, se = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(x.size)
    half = float(_st.t.ppf(0.5 + level / 2.0, x.size - 1)) * se if se > 0 else 0.0
    return mean - half, mean + half


# ---------------------------------------------------------------------------------------------
# Multiple comparisons


def holm(p_values: Sequence[float] | Mapping[str, float]) -> np.ndarray | dict[str, float]:
    """Holm-Bonferroni adjusted p-values, in the input's shape (array, or dict with same keys).

    Step-down: the k-th smallest of m p-values is multiplied by (m - k + 1); a running maximum
    keeps the adjusted values in the order of the raw ones, and they are capped at 1. Rejecting
    where adjusted <= alpha controls the family-wise error rate at alpha, with no assumption on
    how the comparisons depend on each other (they share the baseline runs).
    """
    is_map = isinstance(p_values, Mapping)
    keys = list(p_values) if is_map else None
    p = np.asarray(list(p_values.values()) if is_map else p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values must be a flat sequence, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must be finite and in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    if is_map:
        return {k: float(a) for k, a in zip(keys, adjusted, strict=True)}
    return adjusted


# ---------------------------------------------------------------------------------------------
# Power


def paired_power(n: int, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Exact power of the two-sided paired t-test with n pairs (noncentral t).

    Under a true mean difference `effect` with paired SD `sd`, t = mean / (s / sqrt(n)) follows a
    noncentral t with n - 1 degrees of freedom and noncentrality effect / sd * sqrt(n).
    """
    df = n - 1
    nc = effect / sd * math.sqrt(n)
    crit = _st.t.ppf(1.0 - alpha / 2.0, df)
    return float(_st.nct.sf(crit, df, nc) + _st.nct.cdf(-crit, df, nc))


def runs_for_power(effect: float, sd: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Smallest number of paired runs n >= 2 whose two-sided paired t-test reaches `power`.

    Answers "how many (seed, fold) runs would detect this difference?", so that a null result
    from too few runs is not read as "no effect". Power rises with n, so doubling then bisection
    finds the boundary with few noncentral-t evaluations even for tiny effects.
    """
    if not (math.isfinite(effect) and effect != 0):
        raise ValueError(f"effect must be finite and non-zero, got {effect}")
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"sd must be finite and > 0, got {sd}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not alpha < power < 1.0:
        raise ValueError(f"power must be in (alpha, 1), got {power}")

    def enough(n: int) -> bool:
        return paired_power(n, effect, sd, alpha) >= power

    if enough(2):
        return 2
    low, high = 2, 4  # invariant: not enough(low), enough(high) once found
    while not enough(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if enough(mid):
            high = mid
        else:
            low = mid
    return high


# ---------------------------------------------------------------------------------------------
# Share of the confound gap closed


@dataclass(frozen=True)
class GapClosed:
    """Share of the baseline-to-ceiling gap a method closes, with its bootstrap interval.

    `gap_uncertain` is True when the gap's own interval (ceiling - baseline) does not lie above
    0: the share then has no finite bound (a ratio whose denominator may be 0 or negative), so
    low/high are -inf/+inf rather than a misleadingly finite range.
    """

    estimate: float
    low: float
    high: float
    n: int
    gap: float
    gap_low: float
    gap_high: float
    gap_uncertain: bool
    level: float = 0.95


def gap_closed(
    method: Mapping[Hashable, float],
    baseline: Mapping[Hashable, float],
    ceiling: Mapping[Hashable, float],
    level: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
) -> GapClosed:
    """mean(method - baseline) / mean(ceiling - baseline) on runs matched across all three.

    0 means no better than the confounded baseline, 1 means as good as the unconfounded ceiling.
    The interval is a percentile bootstrap that resamples whole (seed, fold) runs, so the three
    scores of a run stay together and their shared noise cancels as in the point estimate.
    """
    _check_level(level, n_boot)
    _, v = _matched({"method": method, "baseline": baseline, "ceiling": ceiling})
    gain = v["method"] - v["baseline"]
    gap = v["ceiling"] - v["baseline"]
    n = gain.size

    idx = _boot_indices(n, n_boot, seed)
    gain_b = gain[idx].mean(axis=1)
    gap_b = gap[idx].mean(axis=1)
    gap_low, gap_high = _percentile_interval(gap_b, level)
    gap_mean = float(gap.mean())
    estimate = float(gain.mean() / gap_mean) if gap_mean != 0 else math.nan
    gap_uncertain = not gap_low > 0
    if gap_uncertain:
        low, high = -math.inf, math.inf
    else:
        # A resample whose gap is <= 0 has no defined share. Counting it as -inf for the lower
        # end and +inf for the upper end covers every value it could have been given, so such
        # resamples can only widen the interval, never narrow it.
        undefined = gap_b <= 0
        ratio_b = gain_b / np.where(undefined, 1.0, gap_b)
        low = _percentile_interval(np.where(undefined, -np.inf, ratio_b), level)[0]
        high = _percentile_interval(np.where(undefined, np.inf, ratio_b), level)[1]
    return GapClosed(
        estimate=estimate,
        low=low,
        high=high,
        n=n,
        gap=gap_mean,
        gap_low=gap_low,
        gap_high=gap_high,
        gap_uncertain=gap_uncertain,
        level=level,
    )


@dataclass(frozen=True)
class FiellerRatio:
    """A ratio of paired means with Fieller's interval at `level`.

    `bounded` is False when the denominator's mean is not distinguishable from 0 at `level`:
    the set of ratios the data do not reject is then the whole line or two rays, and low/high
    are -inf/+inf (the honest reading: the data allow any share)."""

    estimate: float
    low: float
    high: float
    n: int
    bounded: bool
    level: float = 0.95


def fieller_ratio(numerator: Sequence[float], denominator: Sequence[float],
                  level: float = 0.95) -> FiellerRatio:  # fmt: skip
    """mean(a) / mean(b) of paired values (a_i, b_i) with Fieller's interval.

    The interval is every theta for which the paired t-test of mean(a_i - theta * b_i) = 0 is
    not rejected at 1 - level: theta with (ā - theta b̄)^2 <= q (s_aa - 2 theta s_ab +
    theta^2 s_bb), q = t^2 / n, t the (1 + level) / 2 quantile of t with n - 1 degrees of
    freedom and s the sample (co)variances. That is a quadratic inequality in theta; with
    A = b̄^2 - q s_bb > 0 its solution is the interval between the roots. It is exact when
    the pairs are normal, at any n, where a bootstrap over 5 pairs has 126 distinct resamples.
    """
    _check_level(level, 1)
    a, b = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"numerator and denominator: expected two 1-D arrays of one length, "
                         f"got shapes {a.shape} and {b.shape}")  # fmt: skip
    if a.size < 2:
        raise ValueError(f"need at least 2 pairs for Fieller's interval, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("non-finite values (NaN or inf) in the pairs")
    n = a.size
    ma, mb = float(a.mean()), float(b.mean())
    cov = np.cov(np.vstack([a, b]), ddof=1)
    q = float(_st.t.ppf(0.5 + level / 2.0, n - 1)) ** 2 / n
    qa, qb, qc = mb * mb - q * cov[1, 1], ma * mb - q * cov[0, 1], ma * ma - q * cov[0, 0]
    estimate = ma / mb if mb != 0 else math.nan
    if qa <= 0:
        return FiellerRatio(estimate, -math.inf, math.inf, n, False, level)
    root = math.sqrt(max(qb * qb - qa * qc, 0.0))  # >= 0 when qa > 0: ma/mb solves it
    return FiellerRatio(estimate, (qb - root) / qa, (qb + root) / qa, n, True, level)


def gap_closed_fieller(
    method: Mapping[Hashable, float],
    baseline: Mapping[Hashable, float],
    ceiling: Mapping[Hashable, float],
    level: float = 0.95,
) -> FiellerRatio:
    """The share of the gap closed, mean(method - baseline) / mean(ceiling - baseline) on runs
    matched across all three, with Fieller's interval (fieller_ratio): the interval that holds
    with few (seed, fold) pairs."""
    _, v = _matched({"method": method, "baseline": baseline, "ceiling": ceiling})
    return fieller_ratio(v["method"] - v["baseline"], v["ceiling"] - v["baseline"], level)


# ---------------------------------------------------------------------------------------------
# Targets

WIDE = "interval too wide"


def verdict(low: float, high: float, *, at_most: float | None = None,
            at_least: float | None = None) -> str:  # fmt: skip
    """A target's verdict from a 95% interval [low, high] and its threshold (one of the two):
    "met" when the whole interval is on the target's side, "not met" when the whole interval
    is on the other side, and WIDE when the interval straddles the threshold."""
    if (at_most is None) == (at_least is None):
        raise ValueError("verdict: expected exactly one of at_most and at_least")
    if at_most is not None:
        return "met" if high <= at_most else "not met" if low > at_most else WIDE
    return "met" if low >= at_least else "not met" if high < at_least else WIDE


def mean(values) -> float | None:
    """The mean of the values that are not None; None when there are none (a table's blank)."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def sd_interval(sd: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Chi-square interval of a standard deviation from n runs."""
    a = (1 - level) / 2
    return (sd * np.sqrt((n - 1) / _st.chi2.ppf(1 - a, n - 1)),
            sd * np.sqrt((n - 1) / _st.chi2.ppf(a, n - 1)))  # fmt: skip
