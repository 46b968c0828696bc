"""The spurious-correlation baselines against hand-computed cases and independent references:
GroupDRO against its formula by hand and a float64 numpy loop, reweighting and subsampling
against exact group counts, JTT against the upsampled data set it stands for, and DFR against
an ERM fit and a core-feature oracle on a synthetic problem with a spurious feature."""

import io
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from qat import robust
from qat.metrics import worst_group_accuracy
from qat.robust import (
    GroupDRO,
    ReweightObjective,
    balanced_subsample,
    dfr,
    group_weights,
    jtt_upweights,
)


def _random_sizes(rng, n_groups):
    """Group sizes from 0 to 60, at least two groups present, most of them very unequal."""
    sizes = rng.integers(0, 61, size=n_groups) * (rng.random(n_groups) < 0.8)
    sizes[rng.choice(n_groups, size=2, replace=False)] += rng.integers(1, 20, size=2)
    return sizes


def _shuffled_groups(rng, sizes):
    return rng.permutation(np.repeat(np.arange(len(sizes)), sizes))


# --- GroupDRO -----------------------------------------------------------------------------


def _step(dro, losses, groups):
    """One GroupDRO call on float64 per-item losses; (loss, per-item gradient, q after)."""
    per_item = torch.tensor(losses, dtype=torch.float64, requires_grad=True)
    loss = dro(per_item, {"group": torch.tensor(groups), "emotion": torch.zeros(len(groups))})
    loss.backward()
    return float(loss.detach()), per_item.grad.numpy(), dro.q.numpy().copy()


def test_groupdro_hand_computed_three_groups():
    # eta = ln 2, so exp(eta * l) = 2 ** l. q starts uniform (1/3 each).
    # Batch 1: group 0 losses 1, 3 (mean 2), group 1 loss 1 (mean 1), group 2 losses 0, 0 (mean 0)
    #   q ∝ (1/3 * 2**2, 1/3 * 2**1, 1/3 * 2**0) = (4, 2, 1) / 3  ->  q = (4/7, 2/7, 1/7)
    #   loss = 4/7 * 2 + 2/7 * 1 + 1/7 * 0 = 10/7
    #   d loss / d l_i = q_g / n_g: group 0: (4/7)/2 = 2/7, group 1: (2/7)/1, group 2: (1/7)/2
    dro = GroupDRO(3, eta=math.log(2))
    loss, grad, q = _step(dro, [1.0, 3.0, 1.0, 0.0, 0.0], [0, 0, 1, 2, 2])
    np.testing.assert_allclose(q, [4 / 7, 2 / 7, 1 / 7], rtol=1e-12)
    assert loss == pytest.approx(10 / 7, rel=1e-12)
    np.testing.assert_allclose(grad, [2 / 7, 2 / 7, 2 / 7, 1 / 14, 1 / 14], rtol=1e-12)
    # Batch 2, group 2 absent: group 0 mean 0, group 1 mean 1; q_2 is not updated
    #   q ∝ (4/7 * 2**0, 2/7 * 2**1, 1/7) = (4, 4, 1) / 7  ->  q = (4/9, 4/9, 1/9)
    #   loss = 4/9 * 0 + 4/9 * 1 = 4/9
    loss, grad, q = _step(dro, [0.0, 1.0, 0.0], [0, 1, 0])
    np.testing.assert_allclose(q, [4 / 9, 4 / 9, 1 / 9], rtol=1e-12)
    assert loss == pytest.approx(4 / 9, rel=1e-12)
    np.testing.assert_allclose(grad, [2 / 9, 4 / 9, 2 / 9], rtol=1e-12)


def test_groupdro_group_adjustment_enters_the_update_only():
    # C = 2, training counts (4, 1, 16): a_g = C / sqrt(n_g) = (1, 2, 0.5); eta = ln 2.
    # Batch 1 as above, group means (2, 1, 0): exponents l + a = (3, 3, 0.5)
    #   q ∝ (2**3, 2**3, 2**0.5) = (8, 8, √2)  ->  q = (8, 8, √2) / (16 + √2)
    #   loss = sum q_g * l_g with the unadjusted means = (16 + 8) / (16 + √2)
    dro = GroupDRO(3, eta=math.log(2), adjustment=2.0, group_counts=[4, 1, 16])
    loss, _, q = _step(dro, [1.0, 3.0, 1.0, 0.0, 0.0], [0, 0, 1, 2, 2])
    r2 = math.sqrt(2)
    np.testing.assert_allclose(q, np.array([8, 8, r2]) / (16 + r2), rtol=1e-12)
    assert loss == pytest.approx(24 / (16 + r2), rel=1e-12)


def reference_groupdro(batches, n_groups, eta, adjustment):
    """Sagawa et al.'s update in float64 with loops: for each batch, each present group's mean
    loss l_g; q_g *= exp(eta * (l_g + a_g)) for present g; q /= sum q; loss = sum q_g l_g over
    present g; d loss / d l_i = q_g(i) / n_g(i)."""
    q = np.full(n_groups, 1.0 / n_groups)
    out = []
    for losses, groups in batches:
        means, sizes = {}, {}
        for g in set(groups.tolist()):
            members = [float(l) for l, h in zip(losses, groups, strict=True) if h == g]
            means[g], sizes[g] = sum(members) / len(members), len(members)
        for g, mean in means.items():
            q[g] *= math.exp(eta * (mean + adjustment[g]))
        q /= q.sum()
        loss = sum(q[g] * mean for g, mean in means.items())
        grad = [q[g] / sizes[g] for g in groups.tolist()]
        out.append((loss, np.array(grad), q.copy()))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_groupdro_matches_a_numpy_reference_on_random_batches(seed):
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(2, 9))
    eta = float(rng.uniform(0.01, 2.0))
    adjusted = seed % 2 == 1
    counts = rng.integers(0, 50, size=n_groups)
    c = rng.uniform(0, 3, size=n_groups)
    adjustment = np.where(counts > 0, c / np.sqrt(np.maximum(counts, 1)), 0) if adjusted else None
    dro = GroupDRO(n_groups, eta, c if adjusted else None, counts if adjusted else None)
    batches = []
    for _ in range(8):
        subset = rng.choice(n_groups, size=int(rng.integers(1, n_groups + 1)), replace=False)
        size = int(rng.integers(1, 40))
        batches.append((rng.exponential(1.5, size=size), rng.choice(subset, size=size)))
    expected = reference_groupdro(
        batches, n_groups, eta, adjustment if adjusted else np.zeros(n_groups)
    )
    for (losses, groups), (ref_loss, ref_grad, ref_q) in zip(batches, expected, strict=True):
        loss, grad, q = _step(dro, losses, groups)
        np.testing.assert_allclose(q, ref_q, rtol=1e-10)
        assert loss == pytest.approx(ref_loss, rel=1e-10)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-10)
    assert not np.allclose(dro.q.numpy(), 1 / n_groups)  # q did move away from uniform


def test_groupdro_accepts_float32_losses_and_keeps_q_in_float64():
    dro = GroupDRO(3, eta=math.log(2))
    per_item = torch.tensor([1.0, 3.0, 1.0, 0.0, 0.0], requires_grad=True)
    loss = dro(per_item, {"group": torch.tensor([0, 0, 1, 2, 2])})
    assert loss.dtype == torch.float32 and dro.q.dtype == torch.float64
    assert float(loss.detach()) == pytest.approx(10 / 7, rel=1e-6)


def test_groupdro_checkpoint_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    batches = [(rng.exponential(size=12), rng.integers(0, 5, size=12)) for _ in range(5)]
    original = GroupDRO(5, eta=0.7, adjustment=1.0, group_counts=[3, 9, 27, 81, 1])
    for losses, groups in batches[:3]:
        _step(original, losses, groups)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = GroupDRO(5, eta=0.7, adjustment=1.0, group_counts=[3, 9, 27, 81, 1])
    assert not torch.equal(resumed.q, original.q)  # a fresh q differs: the load matters
    resumed.load_state_dict(torch.load(buffer))
    assert set(resumed.state_dict()) == {"q", "adjustment"}
    for losses, groups in batches[3:]:
        assert _step(resumed, losses, groups)[0] == _step(original, losses, groups)[0]
        assert torch.equal(resumed.q, original.q)


def test_groupdro_across_ranks_matches_one_process_on_the_whole_batch(monkeypatch):
    # Under torchrun each rank sees a shard of the batch; group sums and counts are summed over
    # ranks and DDP averages the gradients. Simulate two ranks by returning the whole batch's
    # sums from the all-reduce.
    rng = np.random.default_rng(5)
    losses, groups = rng.exponential(size=10), np.array([0, 1, 1, 2, 0, 0, 1, 2, 2, 0])
    _, whole_grad, whole_q = _step(GroupDRO(3, eta=0.5), losses, groups)
    whole_sums = torch.zeros(3, dtype=torch.float64).index_add(
        0, torch.tensor(groups), torch.tensor(losses)
    )
    whole_counts = torch.bincount(torch.tensor(groups), minlength=3).double()
    monkeypatch.setattr(robust, "_sum_across_ranks", lambda s, c: ((whole_sums, whole_counts), 2))
    shard_grads = np.zeros(10)
    for rank in range(2):
        part = np.arange(rank, 10, 2)
        _, grad, q = _step(GroupDRO(3, eta=0.5), losses[part], groups[part])
        np.testing.assert_allclose(q, whole_q, rtol=1e-12)  # the same q on every rank
        shard_grads[part] = grad / 2  # DDP's mean over the two ranks
    np.testing.assert_allclose(shard_grads, whole_grad, rtol=1e-12)


@pytest.mark.parametrize("eta", [0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_groupdro_rejects_eta_out_of_range(eta):
    with pytest.raises(ValueError, match=r"eta=.*expected a finite number > 0"):
        GroupDRO(4, eta)


def test_groupdro_rejects_bad_groups_and_adjustments():
    with pytest.raises(ValueError, match="n_groups"):
        GroupDRO(0, 0.1)
    with pytest.raises(ValueError, match="group_counts: needed with adjustment"):
        GroupDRO(3, 0.1, adjustment=1.0)
    with pytest.raises(ValueError, match="adjustment must be a finite number >= 0"):
        GroupDRO(3, 0.1, adjustment=-1.0, group_counts=[1, 2, 3])
    with pytest.raises(ValueError, match="group_counts must hold one count >= 0 per group"):
        GroupDRO(3, 0.1, adjustment=1.0, group_counts=[1, 2])
    dro = GroupDRO(3, 0.1)
    with pytest.raises(ValueError, match=r"labels\['group'\]; the labels hold \['emotion'\]"):
        dro(torch.ones(2), {"emotion": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match=r"labels\['group'\] must hold group ids in \[0, 3\)"):
        dro(torch.ones(2), {"group": torch.tensor([0, 3])})
    with pytest.raises(ValueError, match="integer group ids"):
        dro(torch.ones(2), {"group": torch.tensor([0.0, 1.0])})
    with pytest.raises(ValueError, match="expected one per item"):
        dro(torch.ones(3), {"group": torch.tensor([0, 1])})


# --- reweighting, subsampling, JTT --------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_group_weights_give_every_present_group_the_same_total_weight(seed):
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(2, 26))
    sizes = _random_sizes(rng, n_groups)
    groups = _shuffled_groups(rng, sizes)
    weights = group_weights(groups, n_groups)
    present = np.flatnonzero(sizes)
    totals = np.array([weights[groups == g].sum() for g in present])
    np.testing.assert_allclose(totals, len(groups) / len(present), rtol=1e-12)
    assert weights.mean() == pytest.approx(1.0, rel=1e-12)
    for g in present:  # inversely proportional to the group's size
        np.testing.assert_allclose(weights[groups == g] * sizes[g], totals[0], rtol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_capped_group_weights_are_the_uncapped_ones_clipped_at_the_cap(seed):
    rng = np.random.default_rng(seed)
    sizes = np.r_[rng.integers(1, 4, 3), rng.integers(50, 300, 4)]  # rare and common groups
    groups = _shuffled_groups(rng, sizes)
    by_hand = len(groups) / (len(sizes) * sizes[groups])  # N / (P n_g), every group present
    cap = float(rng.uniform(2, 8))
    capped = robust.group_weights(groups, len(sizes), cap=cap)
    np.testing.assert_allclose(capped, np.minimum(by_hand, cap), rtol=1e-12)
    assert (by_hand > cap).any() and capped.max() == cap  # the rare groups were capped
    np.testing.assert_array_equal(robust.group_weights(groups, len(sizes)), by_hand)
    for bad in (0, -1.0, float("nan"), True, "3"):
        with pytest.raises(ValueError, match="cap="):
            robust.group_weights(groups, len(sizes), cap=bad)


@pytest.mark.parametrize("target", [1, 7, 100, 1200, 1201])
@pytest.mark.parametrize("per_epoch", [1, 3, 9, 10, 100, 250])
def test_step_matched_epochs_come_closest_to_the_target_steps(target, per_epoch):
    # By brute force: the epoch count (at least 1) whose steps are nearest, ties to more.
    best = min(range(1, target + 2), key=lambda e: (abs(e * per_epoch - target), -e))
    assert robust.step_matched_epochs(target, per_epoch) == best
    assert abs(best * per_epoch - target) <= per_epoch / 2 or best == 1


def test_step_matched_epochs_refuses_non_counts():
    for bad in ((0, 5), (5, 0), (1.5, 2), (True, 2)):
        with pytest.raises(ValueError, match="expected an integer >= 1"):
            robust.step_matched_epochs(*bad)


@pytest.mark.parametrize("seed", range(8))
def test_balanced_subsample_keeps_the_smallest_groups_size_of_every_group(seed):
    rng = np.random.default_rng(seed)
    sizes = _random_sizes(rng, int(rng.integers(2, 26)))
    groups = _shuffled_groups(rng, sizes)
    chosen = balanced_subsample(groups, seed=seed)
    smallest = sizes[sizes > 0].min()
    expected = np.where(sizes > 0, smallest, 0)
    np.testing.assert_array_equal(np.bincount(groups[chosen], minlength=len(sizes)), expected)
    assert np.all(np.diff(chosen) > 0)  # ascending, no position twice
    np.testing.assert_array_equal(balanced_subsample(groups, seed=seed), chosen)  # seeded


def test_balanced_subsample_draws_differ_between_seeds():
    groups = np.repeat([0, 1, 2], [50, 5, 80])
    draws = {tuple(balanced_subsample(groups, seed=s)) for s in range(5)}
    assert len(draws) == 5


@pytest.mark.parametrize("seed", range(4))
def test_reweight_objective_is_the_weighted_mean_looked_up_by_corpus_position(seed):
    rng = np.random.default_rng(seed)
    corpus_size = 300
    positions = rng.choice(corpus_size, size=120, replace=False)  # the training items
    groups = rng.integers(0, 6, size=120)
    by_position = np.full(corpus_size, 7.0)  # positions outside training must not matter
    by_position[positions] = group_weights(groups, 6)
    objective = ReweightObjective(by_position)
    batch = rng.choice(120, size=32, replace=False)
    losses = rng.exponential(size=32)
    per_item = torch.tensor(losses, requires_grad=True)
    loss = objective(per_item, {}, torch.as_tensor(positions[batch]))
    loss.backward()
    w = [by_position[positions[i]] for i in batch]
    assert float(loss.detach()) == pytest.approx(np.dot(w, losses) / sum(w), rel=1e-12)
    np.testing.assert_allclose(per_item.grad.numpy(), np.array(w) / sum(w), rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_reweighted_full_batch_gives_every_group_an_equal_share(seed):
    # With the whole training set as one batch and loss 1 on the items of group g only, the
    # objective is group g's share of the total weight: 1 / (number of present groups).
    rng = np.random.default_rng(seed)
    sizes = _random_sizes(rng, 25)
    groups = _shuffled_groups(rng, sizes)
    objective = ReweightObjective(group_weights(groups, 25))
    keys = torch.arange(len(groups))
    for g in np.flatnonzero(sizes):
        share = objective(torch.tensor((groups == g).astype(float)), {}, keys)
        assert float(share) == pytest.approx(1 / np.count_nonzero(sizes), rel=1e-12)


def test_reweight_objective_rejects_bad_weights_and_keys():
    with pytest.raises(ValueError, match="weights_by_position must hold finite weights >= 0"):
        ReweightObjective([1.0, -1.0])
    with pytest.raises(ValueError, match="weights_by_position must hold finite weights >= 0"):
        ReweightObjective([1.0, float("nan")])
    objective = ReweightObjective([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="keys: ReweightObjective looks weights up"):
        objective(torch.ones(2), {}, None)
    with pytest.raises(ValueError, match=r"positions 0\.\.3, but weights_by_position has 3"):
        objective(torch.ones(2), {}, torch.tensor([0, 3]))
    # a batch whose weights are all 0 gives 0, not 0/0
    assert float(ReweightObjective([0.0, 0.0])(torch.ones(2), {}, torch.tensor([0, 1]))) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_jtt_upweights_exactly_the_misclassified_items(seed):
    rng = np.random.default_rng(seed)
    misclassified = rng.random(200) < 0.2
    lambda_up = float(rng.integers(2, 60))
    weights = jtt_upweights(misclassified, lambda_up)
    np.testing.assert_array_equal(weights[misclassified], lambda_up)
    np.testing.assert_array_equal(weights[~misclassified], 1.0)


def test_jtt_weighted_objective_equals_the_mean_over_the_upsampled_set():
    # The paper duplicates every misclassified item lambda_up times; over the whole set, the
    # weighted mean is the plain mean over that upsampled set.
    rng = np.random.default_rng(0)
    misclassified = rng.random(50) < 0.3
    losses = rng.exponential(size=50)
    upsampled = np.concatenate([losses, np.repeat(losses[misclassified], 5 - 1)])
    objective = ReweightObjective(jtt_upweights(misclassified, 5))
    loss = objective(torch.tensor(losses), {}, torch.arange(50))
    assert float(loss) == pytest.approx(upsampled.mean(), rel=1e-12)


@pytest.mark.parametrize("lambda_up", [0.5, 0, -3, float("nan"), float("inf"), "5", True])
def test_jtt_rejects_lambda_up_out_of_range(lambda_up):
    with pytest.raises(ValueError, match=r"lambda_up=.*expected a finite number >= 1"):
        jtt_upweights(np.array([True, False]), lambda_up)


def test_jtt_and_group_functions_reject_bad_arrays():
    with pytest.raises(ValueError, match="misclassified must be a 1-D boolean array"):
        jtt_upweights(np.array([0, 1]), 5)
    with pytest.raises(ValueError, match=r"groups must hold group ids in \[0, 3\)"):
        group_weights(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="n_groups"):
        group_weights(np.array([0, 1]), 0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        balanced_subsample(np.array([], dtype=int), seed=0)
    with pytest.raises(ValueError, match="integer group ids"):
        balanced_subsample(np.array([0.0, 1.0]), seed=0)


# --- DFR ----------------------------------------------------------------------------------

K, NOISE = 3, 5  # classes; noise features. Features: K core, K spurious, NOISE noise.


def spurious_problem(n, rho, rng, k=K):
    """Items whose label y is carried by noisy core features (about 80% accuracy alone) and
    whose attribute a, equal to y with probability rho + (1 - rho) / k, sits in near-noiseless
    spurious features: in training (rho 0.9) the attribute predicts y better than the core
    does; at test (rho 0) it carries no information. Group = (y, a)."""
    y = rng.integers(k, size=n)
    a = np.where(rng.random(n) < rho, y, rng.integers(k, size=n))
    core = np.eye(k)[y] + 0.6 * rng.standard_normal((n, k))
    spurious = np.eye(k)[a] + 0.1 * rng.standard_normal((n, k))
    return np.hstack([core, spurious, rng.standard_normal((n, NOISE))]), y, y * k + a


@pytest.mark.parametrize("seed", [0, 1])
def test_dfr_recovers_the_core_features_accuracy_on_a_decorrelated_test(seed):
    rng = np.random.default_rng(seed)
    x_train, y_train, _ = spurious_problem(3000, 0.9, rng)
    x_held, y_held, g_held = spurious_problem(3000, 0.9, rng)  # confounded too: DFR balances
    x_test, y_test, g_test = spurious_problem(3000, 0.0, rng)

    erm = make_pipeline(StandardScaler(), LogisticRegression()).fit(x_train, y_train)
    oracle = make_pipeline(StandardScaler(), LogisticRegression()).fit(x_train[:, :K], y_train)
    model = dfr(x_held, y_held, g_held, n_refits=10, seed=seed, n_groups=K * K)

    def accuracy(pred):
        return float(np.mean(pred == y_test))

    erm_pred, oracle_pred, dfr_pred = (
        erm.predict(x_test), oracle.predict(x_test[:, :K]), model.predict(x_test)
    )  # fmt: skip
    assert accuracy(erm_pred) < accuracy(oracle_pred) - 0.12  # the shortcut costs ERM
    assert accuracy(dfr_pred) > accuracy(oracle_pred) - 0.03  # DFR recovers the core's accuracy
    erm_worst = worst_group_accuracy(y_test, erm_pred, g_test)
    oracle_worst = worst_group_accuracy(y_test, oracle_pred, g_test)
    assert erm_worst < 0.5
    assert worst_group_accuracy(y_test, dfr_pred, g_test) > oracle_worst - 0.05
    core, spurious = np.abs(model.coef[:, :K]), np.abs(model.coef[:, K : 2 * K])
    assert spurious.max() < 0.1 * core.max()  # the refitted layer ignores the spurious features
    assert list(model.validation_scores) == list(robust.DFR_C_GRID)
    assert model.validation_scores[model.C] == max(model.validation_scores.values())


def l1_logistic_reference(z, t, C):
    """argmin ||(w, b)||_1 + C sum log(1 + exp(-t (z w + b))) for t in {-1, +1}: liblinear's
    L1 objective with its intercept as a regularised feature of value 1, solved independently
    in float64 by L-BFGS-B on the split (w, b) = u - v, u, v >= 0."""
    from scipy.optimize import minimize
    from scipy.special import expit, log1p

    a = np.hstack([z, np.ones((len(z), 1))]) * t[:, None]
    d = a.shape[1]

    def objective(uv):
        w = uv[:d] - uv[d:]
        m = a @ w
        loss = C * np.sum(np.where(m > 0, log1p(np.exp(-m)), -m + log1p(np.exp(m))))
        g = -C * a.T @ expit(-m)
        return uv.sum() + loss, np.concatenate([1 + g, 1 - g])

    uv = minimize(objective, np.zeros(2 * d), jac=True, method="L-BFGS-B",
                  bounds=[(0, None)] * (2 * d), options={"maxiter": 20000, "ftol": 1e-15,
                                                          "gtol": 1e-10}).x  # fmt: skip
    w = uv[:d] - uv[d:]
    return w[:-1], w[-1]


@pytest.mark.parametrize("k", [2, 3])
def test_dfr_with_one_refit_on_a_balanced_set_is_the_one_vs_rest_l1_logistic_optimum(k):
    # On an exactly balanced set the balanced subsample is the whole set, so one refit is the
    # L1 logistic regression of every class against the rest on the standardised set: checked
    # against an independent float64 solve of that objective, and DFRModel's probabilities
    # against their formula.
    rng = np.random.default_rng(k)
    x, y, g = spurious_problem(1200, 0.0, rng, k=k)
    keep = balanced_subsample(g, seed=0)
    x, y, g = x[keep], y[keep], g[keep]
    model = dfr(x, y, g, C_grid=[0.5], n_refits=1, seed=0, max_iter=10000)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    positives = [1] if k == 2 else range(k)  # two classes: one model, for the second class
    for row, c in enumerate(positives):
        w, b = l1_logistic_reference(z, np.where(y == c, 1.0, -1.0), 0.5)
        np.testing.assert_allclose(model.coef[row], w, atol=2e-3 * np.abs(w).max())
        assert model.intercept[row] == pytest.approx(b, abs=2e-3 * np.abs(w).max())
    x_test = spurious_problem(500, 0.0, rng, k=k)[0]
    p = 1 / (1 + np.exp(-model.decision_function(x_test)))
    expected = np.hstack([1 - p, p]) if k == 2 else p / p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(x_test), expected, rtol=1e-12)
    np.testing.assert_array_equal(model.predict(x_test), expected.argmax(axis=1))
    np.testing.assert_array_equal(model.classes, np.arange(k))


def test_dfr_small_c_zeroes_noise_coefficients_exactly():
    # L1 sets weights to exactly 0; an L2 fit (e.g. a silently ignored l1_ratio) never does.
    rng = np.random.default_rng(4)
    x, y, g = spurious_problem(2000, 0.5, rng)
    model = dfr(x, y, g, C_grid=[0.05], n_refits=3, seed=0)
    assert np.mean(model.coef[:, 2 * K :] == 0.0) > 0.5


def test_dfr_is_seeded():
    rng = np.random.default_rng(6)
    x, y, g = spurious_problem(1500, 0.9, rng)
    first, second = (dfr(x, y, g, C_grid=[1.0, 0.1], n_refits=2, seed=3) for _ in range(2))
    np.testing.assert_array_equal(first.coef, second.coef)
    assert first.validation_scores == second.validation_scores


def test_dfr_counts_fits_at_the_iteration_limit_instead_of_warning_each():
    rng = np.random.default_rng(8)
    x, y, g = spurious_problem(1500, 0.5, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a printed ConvergenceWarning fails the test
        capped = dfr(x, y, g, C_grid=[1.0, 0.1], n_refits=3, seed=0, max_iter=1)
        roomy = dfr(x, y, g, C_grid=[1.0, 0.1], n_refits=3, seed=0, max_iter=5000)
    assert capped.unconverged == 2 + 3  # every tuning fit and refit
    assert roomy.unconverged == 0


def test_dfr_rejects_a_balanced_set_too_small_for_every_group():
    rng = np.random.default_rng(7)
    x, y, g = spurious_problem(1000, 0.9, rng)
    lone = np.flatnonzero(g == 1)[0]
    keep = (g != 1) | (np.arange(len(g)) == lone)  # group 1 keeps a single item
    with pytest.raises(ValueError, match=r"groups_balanced: .* too small \(group 1 has 1 item\)"):
        dfr(x[keep], y[keep], g[keep], n_refits=1)
    absent = g != 8  # with n_groups = 9, group 8 must be there
    with pytest.raises(
        ValueError, match=r"too small \(group 8 has 0 items\); .* every one of the 9 groups"
    ):
        dfr(x[absent], y[absent], g[absent], n_refits=1, n_groups=9)


@pytest.mark.parametrize("grid", [[], [0.0], [-1.0], [float("nan")], [float("inf")], ["a"],
                                  [0.1, 0.1], None])  # fmt: skip
def test_dfr_rejects_invalid_c_values(grid):
    x, y, g = spurious_problem(300, 0.5, np.random.default_rng(8))
    with pytest.raises(ValueError, match="C_grid="):
        dfr(x, y, g, C_grid=grid, n_refits=1)


def test_dfr_rejects_bad_shapes_and_refit_counts():
    x, y, g = spurious_problem(300, 0.5, np.random.default_rng(9))
    with pytest.raises(ValueError, match="n_refits=0"):
        dfr(x, y, g, n_refits=0)
    with pytest.raises(ValueError, match="one row per item, got 300, 299 and 300"):
        dfr(x, y[:-1], g, n_refits=1)
    with pytest.raises(ValueError, match="features_balanced must be a non-empty finite"):
        dfr(np.where(np.eye(300, 11) > 0, np.nan, x), y, g, n_refits=1)
    with pytest.raises(ValueError, match="y_balanced must hold integer class indices"):
        dfr(x, y.astype(float), g, n_refits=1)


def test_dfr_rejects_groups_whose_balanced_subsample_loses_a_class():
    # class 1 is a single item inside group 1 (40 items), and group 2 has 2 items: the balanced
    # tuning subsample takes 1 item of group 1, almost never the class-1 one (seed 0: not)
    y = np.array([0] * 20 + [1] + [2] * 39 + [0, 0])
    g = np.array([0] * 20 + [1] * 40 + [2, 2])
    x = np.random.default_rng(0).standard_normal((len(y), 4))
    with pytest.raises(ValueError, match=r"y_balanced: a group-balanced subsample holds classes"):
        dfr(x, y, g, C_grid=[1.0], n_refits=1, seed=0)
