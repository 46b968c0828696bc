"""qat.stats against independent references: scipy's paired t-test, t interval and bootstrap,
hand-written resampling and Holm procedures, and a Monte-Carlo power simulation."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as st

from qat import stats as qs


def _runs(values, seeds_folds):
    return {k: float(v) for k, v in zip(seeds_folds, values, strict=True)}


def _pairs(n_seeds, n_folds):
    return [(s, f) for s in range(n_seeds) for f in range(n_folds)]


def _shuffled(mapping, rng):
    """Same mapping, another insertion order: results must not depend on it."""
    keys = list(mapping)
    order = rng.permutation(len(keys))
    return {keys[i]: mapping[keys[i]] for i in order}


def _method_and_baseline(rng, n, shift=0.02, noise=0.03):
    """Scores with a large per-run component shared by method and baseline, as real runs have."""
    keys = _pairs(n, 1) if n < 5 else _pairs(math.ceil(n / 5), 5)[:n]
    shared = rng.normal(0.6, 0.08, n)
    base = shared + rng.normal(0, noise, n)
    meth = shared + shift + rng.normal(0, noise, n)
    return _runs(meth, keys), _runs(base, keys), np.array(keys)


# ---------------------------------------------------------------------------------------------
# paired differences, t-interval, p-value


def test_paired_differences_are_matched_and_in_sorted_key_order():
    method = {(1, 0): 0.9, (0, 1): 0.7, (0, 0): 0.5}
    baseline = {(0, 0): 0.4, (1, 0): 0.6, (0, 1): 0.8}
    d = qs.paired_differences(method, baseline)
    # sorted keys: (0, 0), (0, 1), (1, 0)
    np.testing.assert_allclose(d, [0.1, -0.1, 0.3], rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "seed, n, level", [(1, 3, 0.95), (2, 8, 0.95), (3, 25, 0.95), (4, 12, 0.9)]
)
def test_t_interval_and_p_value_match_scipy(seed, n, level):
    rng = np.random.default_rng(seed)
    method, baseline, _ = _method_and_baseline(rng, n)
    r = qs.paired(_shuffled(method, rng), _shuffled(baseline, rng), level=level, n_boot=200)

    keys = sorted(method)
    m = np.array([method[k] for k in keys])
    b = np.array([baseline[k] for k in keys])
    ref = st.ttest_rel(m, b)
    d = m - b
    sem = st.sem(d)
    lo, hi = st.t.interval(level, n - 1, loc=d.mean(), scale=sem)

    assert r.n == n
    assert r.level == level
    assert r.mean == pytest.approx(d.mean(), abs=1e-14)
    assert r.sd == pytest.approx(np.std(d, ddof=1), rel=1e-12)
    assert r.se == pytest.approx(sem, rel=1e-12)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.t_low == pytest.approx(lo, rel=1e-10)
    assert r.t_high == pytest.approx(hi, rel=1e-10)


@pytest.mark.parametrize("seed, n, level", [(0, 2, 0.95), (1, 5, 0.95), (2, 9, 0.9)])
def test_mean_interval_matches_scipy(seed, n, level):
    x = np.random.default_rng(seed).normal(0.5, 0.1, size=n)
    ref = st.t.interval(level, n - 1, loc=x.mean(), scale=st.sem(x))
    np.testing.assert_allclose(qs.mean_interval(list(x), level), ref, rtol=1e-12)
    assert all(math.isnan(v) for v in qs.mean_interval([0.4]))  # one value: no interval
    assert qs.mean_interval([0.3, 0.3, 0.3]) == (0.3, 0.3)  # no spread: the point


def test_constant_differences_give_a_point_interval_and_extreme_p():
    base = {(s, f): 0.5 + 0.1 * s + 0.01 * f for s in range(3) for f in range(2)}
    r = qs.paired({k: v + 0.25 for k, v in base.items()}, base, n_boot=100)
    assert r.sd == pytest.approx(0, abs=1e-15)
    assert r.p_value < 1e-12
    assert r.t_low == pytest.approx(0.25) and r.t_high == pytest.approx(0.25)
    assert r.excludes_zero

    same = qs.paired(dict(base), base, n_boot=100)
    assert (same.mean, same.sd, same.p_value) == (0.0, 0.0, 1.0)
    assert not same.excludes_zero


def test_excludes_zero_follows_the_intervals():
    rng = np.random.default_rng(5)
    up, base, _ = _method_and_baseline(rng, 15, shift=0.05, noise=0.01)
    assert qs.paired(up, base).excludes_zero
    assert qs.paired(base, up).excludes_zero  # clearly worse also excludes zero
    null, base0, _ = _method_and_baseline(np.random.default_rng(6), 15, shift=0.0, noise=0.03)
    r = qs.paired(null, base0)
    assert r.t_low < 0 < r.t_high  # the construction has no effect: check it before relying on it
    assert not r.excludes_zero
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.mean = 1.0


def test_excludes_zero_needs_both_intervals():
    # n = 3, all differences positive: the bootstrap interval (within [min, max] of the
    # differences) excludes 0, but the t-interval with 2 degrees of freedom does not.
    base = {(0, 0): 0.5, (0, 1): 0.6, (1, 0): 0.7}
    diffs = {(0, 0): 0.001, (0, 1): 0.01, (1, 0): 0.05}
    r = qs.paired({k: base[k] + diffs[k] for k in base}, base)
    assert r.boot_low > 0 and r.t_low < 0
    assert not r.excludes_zero


# ---------------------------------------------------------------------------------------------
# bootstrap


def _percentile_linear(samples, q):
    """Hand-written linear-interpolation percentile (numpy's default definition)."""
    s = sorted(samples)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


@pytest.mark.parametrize("seed, n", [(11, 6), (12, 20)])
def test_bootstrap_matches_hand_written_resampling_loop(seed, n):
    rng = np.random.default_rng(seed)
    method, baseline, _ = _method_and_baseline(rng, n)
    n_boot, boot_seed = 2000, 7
    r = qs.paired(method, baseline, n_boot=n_boot, seed=boot_seed)

    keys = sorted(method)
    d = [method[k] - baseline[k] for k in keys]
    g = np.random.default_rng(boot_seed)
    means = []
    for _ in range(n_boot):
        total = 0.0
        for _ in range(n):
            total += d[int(g.integers(0, n))]
        means.append(total / n)
    assert r.boot_low == pytest.approx(_percentile_linear(means, 0.025), abs=1e-12)
    assert r.boot_high == pytest.approx(_percentile_linear(means, 0.975), abs=1e-12)


@pytest.mark.parametrize("seed, n, level", [(21, 8, 0.95), (22, 30, 0.95), (23, 15, 0.9)])
def test_bootstrap_matches_scipy_paired_percentile_bootstrap(seed, n, level):
    rng = np.random.default_rng(seed)
    method, baseline, _ = _method_and_baseline(rng, n)
    r = qs.paired(method, baseline, level=level)

    keys = sorted(method)
    m = np.array([method[k] for k in keys])
    b = np.array([baseline[k] for k in keys])
    ref = st.bootstrap(
        (m, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        paired=True,
        vectorized=True,
        method="percentile",
        confidence_level=level,
        n_resamples=40000,
        rng=np.random.default_rng(seed + 100),
    ).confidence_interval
    # Monte-Carlo error of each end is ~1% of the width here; 0.90 vs 0.95 differ by ~8%.
    width = ref.high - ref.low
    assert abs(r.boot_low - ref.low) < 0.04 * width
    assert abs(r.boot_high - ref.high) < 0.04 * width


# ---------------------------------------------------------------------------------------------
# Holm


def test_holm_hand_example_with_monotonicity():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Sorted: 0.005, 0.01, 0.03, 0.04.
    # Scaled by (4, 3, 2, 1): 0.020, 0.030, 0.060, 0.040.
    # Running maximum: 0.020, 0.030, 0.060, 0.060 (0.04 is raised to 0.06).
    # Back in input order: [0.03, 0.06, 0.06, 0.02].
    np.testing.assert_allclose(
        qs.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=0, atol=1e-15
    )


def test_holm_caps_at_one_and_keeps_mapping_keys():
    # {a: 0.6, b: 0.7, c: 0.001}: sorted c, a, b scaled by (3, 2, 1): 0.003, 1.2, 0.7
    # -> running max 0.003, 1.2, 1.2 -> capped 0.003, 1.0, 1.0.
    out = qs.holm({"a": 0.6, "b": 0.7, "c": 0.001})
    assert list(out) == ["a", "b", "c"]
    assert out == pytest.approx({"a": 1.0, "b": 1.0, "c": 0.003}, abs=1e-15)
    assert qs.holm([0.2]).tolist() == [0.2]  # one comparison: nothing to adjust
    assert qs.holm([]).tolist() == []


def _holm_rejects(p, alpha):
    """Holm's procedure as defined: step down through sorted p, reject while
    p_(k) <= alpha / (m - k + 1) (k = 1..m), stop at the first failure."""
    m = len(p)
    rejected = [False] * m
    for k, i in enumerate(sorted(range(m), key=lambda j: p[j]), start=1):
        if p[i] > alpha / (m - k + 1):
            break
        rejected[i] = True
    return rejected


@pytest.mark.parametrize("seed, m", [(31, 3), (32, 6), (33, 12)])
def test_holm_adjusted_p_reproduces_the_step_down_decisions(seed, m):
    # adjusted_i <= alpha must hold exactly when the procedure rejects H_i at level alpha.
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.02, m // 2), rng.uniform(0, 1, m - m // 2)])
    adj = qs.holm(p)
    levels = np.unique(adj)
    alphas = np.concatenate([(levels[:-1] + levels[1:]) / 2, rng.uniform(0, 0.2, 50), [1.0]])
    alphas = alphas[np.min(np.abs(alphas[:, None] - adj[None, :]), axis=1) > 1e-12]
    rejections = 0
    for alpha in alphas:
        expected = _holm_rejects(p.tolist(), float(alpha))
        assert (adj <= alpha).tolist() == expected, alpha
        rejections += sum(expected)
    assert rejections > 0  # the grid did exercise rejections
    assert np.all(adj >= p) and np.all(adj <= 1)


@pytest.mark.parametrize("bad", [[0.1, float("nan")], [0.1, 1.5], [-0.01], [[0.1, 0.2]]])
def test_holm_rejects_invalid_p_values(bad):
    with pytest.raises(ValueError):
        qs.holm(bad)


# ---------------------------------------------------------------------------------------------
# power


def _power_nct(n, effect, sd, alpha):
    """Power of the two-sided paired t-test: P(|T| > t_crit) with T ~ nct(n-1, d*sqrt(n))."""
    df, nc = n - 1, effect / sd * np.sqrt(n)
    crit = st.t.isf(alpha / 2, df)
    return st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc)


def test_runs_for_power_hand_case_d_equals_one():
    # d = 1: n = 9 gives power 0.748, n = 10 gives 0.803 (G*Power's paired-t table also says 10).
    assert qs.runs_for_power(effect=0.02, sd=0.02) == 10
    assert qs.runs_for_power(effect=-0.02, sd=0.02) == 10  # two-sided: sign does not matter


@pytest.mark.parametrize(
    "effect, sd, power, alpha",
    [
        (0.5, 1.0, 0.8, 0.05),
        (0.01, 0.03, 0.8, 0.05),
        (-0.3, 0.2, 0.9, 0.01),
        (0.05, 1.0, 0.8, 0.05),  # tiny effect: n in the thousands
        (3.0, 1.0, 0.8, 0.05),
    ],
)
def test_runs_for_power_is_the_smallest_sufficient_n(effect, sd, power, alpha):
    n = qs.runs_for_power(effect, sd, power=power, alpha=alpha)
    assert n >= 2
    assert _power_nct(n, effect, sd, alpha) >= power
    if n > 2:
        assert _power_nct(n - 1, effect, sd, alpha) < power
    assert qs.paired_power(n, effect, sd, alpha) == pytest.approx(
        _power_nct(n, effect, sd, alpha), rel=1e-12
    )


def test_runs_for_power_agrees_with_monte_carlo():
    # d = 1.5: exact powers are 0.711 (n = 5) and 0.833 (n = 6); with 100k simulated studies the
    # Monte-Carlo standard error is ~0.0015, so both sides of 0.8 are resolved clearly.
    effect, sd, alpha = 0.03, 0.02, 0.05
    n = qs.runs_for_power(effect, sd)
    assert n == 6
    rng = np.random.default_rng(41)
    for size, side in ((n, "above"), (n - 1, "below")):
        d = rng.normal(effect, sd, size=(100_000, size))
        t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(size))
        simulated = np.mean(np.abs(t) > st.t.isf(alpha / 2, size - 1))
        assert (simulated >= 0.8) if side == "above" else (simulated < 0.8)
        assert simulated == pytest.approx(qs.paired_power(size, effect, sd, alpha), abs=0.006)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"effect": 0.0, "sd": 1.0},
        {"effect": 0.1, "sd": 0.0},
        {"effect": 0.1, "sd": -1.0},
        {"effect": float("nan"), "sd": 1.0},
        {"effect": 0.1, "sd": 1.0, "power": 1.0},
        {"effect": 0.1, "sd": 1.0, "alpha": 0.0},
    ],
)
def test_runs_for_power_validates(kwargs):
    with pytest.raises(ValueError):
        qs.runs_for_power(**kwargs)


# ---------------------------------------------------------------------------------------------
# share of the gap closed


def _three(rng, n, share=0.5, base_noise=0.05, noise=0.005):
    """Baseline with large per-run noise that method and ceiling do not share, so gain and gap
    are strongly correlated across runs and only joint resampling gets the interval right."""
    keys = _pairs(n // 4, 4)
    base = 0.5 + rng.normal(0, base_noise, n)
    ceil = 0.6 + rng.normal(0, noise, n)
    meth = 0.5 + share * 0.1 + rng.normal(0, noise, n)
    return _runs(meth, keys), _runs(base, keys), _runs(ceil, keys)


def test_gap_closed_exact_half():
    rng = np.random.default_rng(51)
    keys = _pairs(3, 4)
    base = rng.normal(0.5, 0.05, 12)
    ceil = base + rng.uniform(0.05, 0.2, 12)
    meth = base + 0.5 * (ceil - base)
    g = qs.gap_closed(_runs(meth, keys), _runs(base, keys), _runs(ceil, keys))
    assert g.n == 12
    assert g.estimate == pytest.approx(0.5, abs=1e-12)
    assert g.low == pytest.approx(0.5, abs=1e-9) and g.high == pytest.approx(0.5, abs=1e-9)
    assert not g.gap_uncertain


@pytest.mark.parametrize("seed", [52, 53])
def test_gap_closed_noisy_matches_joint_bootstrap_reference(seed):
    rng = np.random.default_rng(seed)
    meth, base, ceil = _three(rng, 20, share=0.4)
    g = qs.gap_closed(meth, base, ceil)
    assert not g.gap_uncertain and g.gap_low > 0
    assert g.low < g.estimate < g.high
    assert math.isfinite(g.low) and math.isfinite(g.high)

    keys = sorted(meth)
    m, b, c = (np.array([x[k] for k in keys]) for x in (meth, base, ceil))
    assert g.estimate == pytest.approx((m - b).mean() / (c - b).mean(), rel=1e-12)
    assert g.gap == pytest.approx((c - b).mean(), rel=1e-12)

    def share(x, y, z, axis):
        return np.mean(x - y, axis=axis) / np.mean(z - y, axis=axis)

    ref = st.bootstrap(
        (m, b, c),
        share,
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=40000,
        rng=np.random.default_rng(seed + 100),
    ).confidence_interval
    width = ref.high - ref.low
    assert abs(g.low - ref.low) < 0.05 * width
    assert abs(g.high - ref.high) < 0.05 * width

    # The data must tell joint from independent resampling, or the check above could not fail.
    g_rng = np.random.default_rng(0)
    gains = (m - b)[g_rng.integers(0, 20, (10000, 20))].mean(axis=1)
    gaps = (c - b)[g_rng.integers(0, 20, (10000, 20))].mean(axis=1)
    lo_ind, hi_ind = np.percentile(gains / gaps, [2.5, 97.5])
    assert (hi_ind - lo_ind) > 1.5 * width


def test_gap_closed_flags_an_uncertain_gap():
    rng = np.random.default_rng(54)
    keys = _pairs(2, 5)
    base = rng.normal(0.5, 0.03, 10)
    ceil = base + rng.normal(0.0, 0.03, 10)  # the ceiling is no better than the baseline
    meth = base + rng.normal(0.01, 0.03, 10)
    g = qs.gap_closed(_runs(meth, keys), _runs(base, keys), _runs(ceil, keys))
    assert g.gap_low <= 0
    assert g.gap_uncertain
    assert (g.low, g.high) == (-math.inf, math.inf)

    neg = qs.gap_closed(_runs(meth, keys), _runs(base, keys), _runs(base - 0.1, keys))
    assert neg.gap_high < 0 and neg.gap_uncertain and (neg.low, neg.high) == (-math.inf, math.inf)


def test_gap_closed_counts_undefined_resamples_against_the_interval():
    # A gap whose interval just clears 0: about 2% of resamples have a gap <= 0 and so no
    # defined share. They must count as -inf for the lower end and +inf for the upper end.
    rng = np.random.default_rng(67)
    n, n_boot, seed = 10, 10000, 3
    b = rng.normal(0.5, 0.01, n)
    c = b + rng.normal(0.02, 0.025, n)
    m = b + rng.normal(0.01, 0.02, n)
    keys = _pairs(1, n)
    g = qs.gap_closed(_runs(m, keys), _runs(b, keys), _runs(c, keys), n_boot=n_boot, seed=seed)

    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    gain, gap = (m - b)[idx].mean(axis=1), (c - b)[idx].mean(axis=1)
    undefined = gap <= 0
    assert 0.005 < undefined.mean() < 0.025 and g.gap_low > 0 and not g.gap_uncertain
    ratio = gain / np.where(undefined, 1.0, gap)
    assert g.low == pytest.approx(np.percentile(np.where(undefined, -np.inf, ratio), 2.5))
    assert g.high == pytest.approx(np.percentile(np.where(undefined, np.inf, ratio), 97.5))
    # Wider than either naive reading: raw ratios, or silently dropping those resamples.
    for naive in (gain / gap, ratio[~undefined]):
        lo, hi = np.percentile(naive, [2.5, 97.5])
        assert g.low < lo and g.high > hi


def test_gap_closed_requires_all_three_matched():
    runs = {(0, 0): 0.5, (0, 1): 0.6, (1, 0): 0.55}
    ceiling = {(0, 0): 0.7, (0, 1): 0.8}
    with pytest.raises(ValueError, match=r"missing from ceiling .*\(1, 0\)"):
        qs.gap_closed(runs, dict(runs), ceiling)


# ---------------------------------------------------------------------------------------------
# bad inputs


def test_unmatched_keys_name_the_missing_pairs_and_side():
    method = {(0, 0): 0.5, (0, 1): 0.6, (1, 0): 0.7, (2, 3): 0.1}
    baseline = {(0, 0): 0.4, (0, 1): 0.5, (1, 0): 0.6, (1, 1): 0.2}
    with pytest.raises(ValueError) as e:
        qs.paired_differences(method, baseline, name="qat")
    msg = str(e.value)
    assert "missing from baseline (present in qat): (2, 3)" in msg
    assert "missing from qat (present in baseline): (1, 1)" in msg
    with pytest.raises(ValueError, match=r"missing from baseline"):
        qs.paired(method, baseline)


@pytest.mark.parametrize("n_runs", [0, 1])
def test_fewer_than_two_runs_is_refused_with_the_count(n_runs):
    runs = {(0, f): 0.5 for f in range(n_runs)}
    with pytest.raises(ValueError, match=rf"at least 2 matched runs.*got {n_runs}"):
        qs.paired(runs, dict(runs))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_name_the_key(bad):
    method = {(0, 0): 0.5, (0, 1): bad, (1, 0): 0.7}
    baseline = {(0, 0): 0.4, (0, 1): 0.5, (1, 0): 0.6}
    with pytest.raises(ValueError, match=r"non-finite.*method at \(0, 1\)"):
        qs.paired_differences(method, baseline)
    with pytest.raises(ValueError, match=r"non-finite.*baseline at \(0, 1\)"):
        qs.paired(baseline, method)  # the side is named too


@pytest.mark.parametrize("kwargs", [{"level": 1.0}, {"level": 0.0}, {"n_boot": 0}])
def test_paired_validates_level_and_n_boot(kwargs):
    runs = {(0, 0): 0.5, (0, 1): 0.6}
    with pytest.raises(ValueError):
        qs.paired(runs, {k: v - 0.1 for k, v in runs.items()}, **kwargs)


@pytest.mark.parametrize("seed", range(3))
def test_verdict_places_the_interval_against_its_threshold(seed):
    rng = np.random.default_rng(seed)
    intervals = np.sort(rng.normal(0, 1, (200, 2)), axis=1)
    seen = set()
    for (low, high), limit in zip(intervals, rng.normal(0, 1, 200), strict=True):
        below, above = high <= limit, low > limit  # the whole interval on one side
        upper = qs.verdict(low, high, at_most=limit)
        assert upper == ("met" if below else "not met" if above else "interval too wide")
        assert qs.verdict(low, high, at_least=limit) == (
            "met" if low >= limit else "not met" if high < limit else "interval too wide"
        )
        seen.add(upper)
    assert seen == {"met", "not met", qs.WIDE}  # every case drawn
    assert qs.verdict(0.1, 0.2, at_most=0.2) == "met"  # the boundary belongs to the target
    assert qs.verdict(-0.05, 0.3, at_least=-0.05) == "met"


@pytest.mark.parametrize("kwargs", [{}, {"at_most": 1.0, "at_least": 0.0}])
def test_verdict_needs_exactly_one_threshold(kwargs):
    with pytest.raises(ValueError, match="exactly one of at_most and at_least"):
        qs.verdict(0.0, 1.0, **kwargs)


# ---------------------------------------------------------------------------------------------
# share of the gap closed: Fieller's interval


def _gains_and_gaps(rng, n, share=0.6, gap=0.1, gap_sd=0.03, noise=0.02):
    gaps = rng.normal(gap, gap_sd, n)
    return share * gaps + rng.normal(0, noise, n), gaps


def _quadratic_roots(a, b, level):
    """Fieller's bounds by hand: the quadratic's coefficients from raw sums, solved by
    numpy.roots (a companion-matrix eigenvalue solver, not the closed form)."""
    n = len(a)
    t2 = st.t.ppf(0.5 + level / 2, n - 1) ** 2
    saa = ((a - a.mean()) ** 2).sum() / (n - 1)
    sbb = ((b - b.mean()) ** 2).sum() / (n - 1)
    sab = ((a - a.mean()) * (b - b.mean())).sum() / (n - 1)
    coeffs = [n * b.mean() ** 2 - t2 * sbb, -2 * (n * a.mean() * b.mean() - t2 * sab),
              n * a.mean() ** 2 - t2 * saa]  # fmt: skip
    return sorted(np.roots(coeffs).real)


@pytest.mark.parametrize("seed, n, level", [(71, 3, 0.95), (72, 5, 0.95), (73, 8, 0.9)])
def test_fieller_interval_is_every_ratio_the_paired_t_test_does_not_reject(seed, n, level):
    rng = np.random.default_rng(seed)
    a, b = _gains_and_gaps(rng, n, gap_sd=0.01)
    r = qs.fieller_ratio(a, b, level)
    assert r.bounded and r.low < r.estimate < r.high
    assert r.estimate == pytest.approx(a.mean() / b.mean(), rel=1e-12)
    assert [r.low, r.high] == pytest.approx(_quadratic_roots(a, b, level), rel=1e-9)
    # The bounds are where the t-test of mean(a - theta b) = 0 sits at p = 1 - level ...
    for bound in (r.low, r.high):
        assert st.ttest_1samp(a - bound * b, 0).pvalue == pytest.approx(1 - level, rel=1e-6)
    # ... and a theta is inside exactly when that test does not reject it.
    width = r.high - r.low
    for theta in np.linspace(r.low - width, r.high + width, 61):
        if min(abs(theta - r.low), abs(theta - r.high)) > 1e-6 * width:
            inside = r.low <= theta <= r.high
            assert inside == (st.ttest_1samp(a - theta * b, 0).pvalue >= 1 - level), theta


def test_fieller_interval_covers_the_true_share_95_percent_of_the_time_with_five_pairs():
    # Gains and gaps normal and correlated, the true share 0.6: Fieller is exact here.
    rng = np.random.default_rng(74)
    sims, n, share = 4000, 5, 0.6
    covered = 0
    for _ in range(sims):
        a, b = _gains_and_gaps(rng, n, share=share, gap=0.1, gap_sd=0.02, noise=0.02)
        r = qs.fieller_ratio(a, b)
        covered += r.low <= share <= r.high
    # Binomial SD at 95% over 4000 runs: 0.0034; the bound is 3.5 SD.
    assert abs(covered / sims - 0.95) < 0.012


def test_fieller_interval_is_unbounded_when_the_gap_is_not_distinguishable_from_zero():
    rng = np.random.default_rng(75)
    a, b = _gains_and_gaps(rng, 5, gap=0.005, gap_sd=0.05)
    t = b.mean() / (b.std(ddof=1) / np.sqrt(5))
    assert abs(t) < st.t.ppf(0.975, 4)  # the gap's own t-test does not reject 0
    r = qs.fieller_ratio(a, b)
    assert not r.bounded and (r.low, r.high) == (-math.inf, math.inf)


def test_gap_closed_fieller_matches_the_runs_and_is_a_point_when_the_share_is_exact():
    rng = np.random.default_rng(76)
    keys = _pairs(2, 4)
    base = rng.normal(0.45, 0.03, 8)
    ceil = base + rng.normal(0.1, 0.02, 8)
    meth = base + 0.5 * (ceil - base) + rng.normal(0, 0.01, 8)
    g = qs.gap_closed_fieller(_runs(meth, keys), _runs(base, keys), _runs(ceil, keys))
    r = qs.fieller_ratio(meth - base, ceil - base)
    assert (g.estimate, g.low, g.high, g.n) == pytest.approx((r.estimate, r.low, r.high, 8))
    exact = base + 0.5 * (ceil - base)
    h = qs.gap_closed_fieller(_runs(exact, keys), _runs(base, keys), _runs(ceil, keys))
    assert (h.low, h.estimate, h.high) == pytest.approx((0.5, 0.5, 0.5), abs=1e-9)
    with pytest.raises(ValueError, match=r"missing from ceiling"):
        qs.gap_closed_fieller(_runs(meth, keys), _runs(base, keys), _runs(ceil[:6], keys[:6]))


def test_fieller_refuses_fewer_than_two_pairs_and_unequal_lengths():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        qs.fieller_ratio([0.1], [0.2])
    with pytest.raises(ValueError, match="one length"):
        qs.fieller_ratio([0.1, 0.2], [0.2, 0.3, 0.1])


def test_mean_skips_blanks_and_is_none_when_nothing_is_present():
    rng = np.random.default_rng(11)
    values = list(rng.normal(size=9))
    with_blanks = [*values[:4], None, *values[4:], None]
    assert qs.mean(with_blanks) == pytest.approx(math.fsum(values) / len(values))
    assert qs.mean(iter([None, None])) is None
    assert qs.mean([]) is None
