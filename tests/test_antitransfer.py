"""Anti-transfer: the AT values against float64 references, the frozen network, capture, cache."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from qat.antitransfer import AntiTransfer, at_loss, cos2_from_grams, gram_matrix, init_from
from qat.models import vgg16

MODES = [("cos2", "sample"), ("cos2", "batch"), ("cka", "sample")]


class TinyNet(nn.Module):
    """A stand-in following the qat.models tap protocol: conv taps plus "penultimate"."""

    def __init__(self, num_classes=3, widths=(4, 8, 8), quaternion=False, seed=0):
        super().__init__()
        self.quaternion = quaternion
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            c1, c2, c3 = widths
            self.features = nn.Sequential(
                OrderedDict(
                    conv1_1=self._block(1, c1),
                    conv1_2=self._block(c1, c2),
                    pool1=nn.MaxPool2d(2),
                    conv2_1=self._block(c2, c3),
                )
            )
            self.head = nn.Sequential(
                OrderedDict(
                    avgpool=nn.AdaptiveAvgPool2d(1),
                    flatten=nn.Flatten(1),
                    penultimate=nn.Sequential(nn.Linear(c3, 16), nn.ReLU()),
                    classifier=nn.Linear(16, num_classes),
                )
            )
        self.taps = ("conv1_1", "conv1_2", "conv2_1")

    @staticmethod
    def _block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        return self.head(self.features(x))

    def tap_module(self, name):
        if name == "penultimate":
            return self.head.penultimate
        if name not in self.taps:
            raise ValueError(f"unknown tap {name!r}")
        return getattr(self.features, name)

    def truncated(self, name):
        self.tap_module(name)
        front = []
        for child_name, child in [*self.features.named_children(), *self.head.named_children()]:
            front.append(child)
            if child_name == name:
                break
        return nn.Sequential(*front)


def _randn(*shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype)


# ------------------------------------------------------------------ float64 references


def _reference_cos2(current, pretrained, mode):
    """The published formula with explicit loops over items and Gram rows, in float64."""
    a = current.detach().double().numpy()
    b = pretrained.detach().double().numpy()
    if a.ndim == 2:
        a, b = a[:, :, None, None], b[:, :, None, None]
    batch, channels, height, width = a.shape
    positions = height * width
    if mode == "sample":
        grams_a, grams_b = [], []
        for i in range(batch):
            fa = a[i].reshape(channels, positions)
            fb = b[i].reshape(channels, positions)
            grams_a.append(fa @ fa.T / positions)
            grams_b.append(fb @ fb.T / positions)
    else:
        fa = a.reshape(batch * channels, positions)
        fb = b.reshape(batch * channels, positions)
        grams_a, grams_b = [fa @ fa.T / positions], [fb @ fb.T / positions]
    cosines = []
    for ga, gb in zip(grams_a, grams_b, strict=True):
        for row in range(ga.shape[0]):
            ra, rb = ga[row], gb[row]
            norms = np.linalg.norm(ra) * np.linalg.norm(rb)
            # A dead channel's all-zero row has no direction: documented to count as cos 0.
            cosines.append(abs(ra @ rb) / norms if norms > 0 else 0.0)
    return float(np.mean(cosines)) ** 2


def _reference_cka(current, pretrained):
    """Linear CKA in the feature-space form ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)."""
    x = current.detach().double().numpy().reshape(current.shape[0], -1)
    y = pretrained.detach().double().numpy().reshape(pretrained.shape[0], -1)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    numerator = np.linalg.norm(y.T @ x) ** 2
    return float(numerator / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


# --------------------------------------------------------------------------- at_loss


@pytest.mark.parametrize(("distance", "gram"), MODES)
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (6, 7)])
def test_at_loss_of_an_activation_with_itself_is_one(distance, gram, shape):
    a = _randn(*shape, seed=1)
    assert at_loss(a, a, gram=gram, distance=distance).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("distance", "gram"), MODES)
def test_at_loss_is_invariant_to_positive_scaling_of_either_input(distance, gram):
    a, b = _randn(4, 6, 5, 5, seed=2), _randn(4, 6, 5, 5, seed=3)
    base = at_loss(a, b, gram=gram, distance=distance).item()
    assert 0.0 < base < 0.999
    for scale in (1e-3, 7.5, 1e3):
        scaled_current = at_loss(scale * a, b, gram=gram, distance=distance).item()
        scaled_pretrained = at_loss(a, scale * b, gram=gram, distance=distance).item()
        assert scaled_current == pytest.approx(base, rel=1e-4)
        assert scaled_pretrained == pytest.approx(base, rel=1e-4)


@pytest.mark.parametrize("gram", ["sample", "batch"])
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (2, 8, 3, 3), (5, 9)])
def test_cos2_matches_float64_loop_reference(gram, shape):
    for seed in range(3):
        a, b = _randn(*shape, seed=seed), _randn(*shape, seed=seed + 10)
        # ReLU-like activations are non-negative: test that regime too (cosines near 1).
        for current, pretrained in ((a, b), (a.relu(), b.relu())):
            expected = _reference_cos2(current, pretrained, gram)
            got = at_loss(current, pretrained, gram=gram, distance="cos2").item()
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_gram_split_reproduces_at_loss():
    a, b = _randn(3, 5, 4, 4, seed=4), _randn(3, 5, 4, 4, seed=5)
    g_a, g_b = gram_matrix(a, "sample"), gram_matrix(b, "sample")
    assert g_a.shape == (3, 5, 5)
    assert gram_matrix(a, "batch").shape == (15, 15)
    assert cos2_from_grams(g_a, g_b).item() == pytest.approx(at_loss(a, b).item(), rel=1e-6)


def test_cka_matches_float64_feature_space_reference_with_different_widths():
    for seed in range(3):
        current = _randn(7, 4, 5, 3, seed=seed)
        pretrained = _randn(7, 6, 2, 2, seed=seed + 20) + 0.3 * current[:, :1, :2, :2]
        got = at_loss(current, pretrained, distance="cka").item()
        assert got == pytest.approx(_reference_cka(current, pretrained), rel=1e-5)


def test_cka_is_channel_permutation_invariant_and_cos2_is_not():
    a = _randn(6, 8, 4, 4, seed=6).relu()
    permuted = a[:, torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    b = _randn(6, 8, 4, 4, seed=7).relu()
    assert at_loss(a, permuted, distance="cka").item() == pytest.approx(1.0, abs=1e-5)
    assert at_loss(b, permuted, distance="cka").item() == pytest.approx(
        at_loss(b, a, distance="cka").item(), rel=1e-5
    )
    # The same information with relabelled channels no longer looks identical to cos2.
    for gram in ("sample", "batch"):
        assert at_loss(a, permuted, gram=gram).item() < 0.95
        assert at_loss(b, permuted, gram=gram).item() != pytest.approx(
            at_loss(b, a, gram=gram).item(), rel=1e-3
        )


@pytest.mark.parametrize(("distance", "gram"), MODES)
def test_at_loss_gradients_match_finite_differences(distance, gram):
    a = _randn(3, 4, 3, 3, seed=8, dtype=torch.float64).requires_grad_()
    b = _randn(3, 4, 3, 3, seed=9, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, y: at_loss(x, y, gram=gram, distance=distance), (a, b)
    )


@pytest.mark.parametrize(("distance", "gram"), MODES)
def test_dead_channels_and_single_items_give_finite_values_and_gradients(distance, gram):
    a = _randn(3, 4, 3, 3, seed=10).relu()
    a[:, 1] = 0.0  # a dead channel: all-zero Gram rows
    a.requires_grad_()
    b = _randn(3, 4, 3, 3, seed=11).relu()
    value = at_loss(a, b, gram=gram, distance=distance)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(a.grad).all()
    single = at_loss(a[:1], b[:1], gram=gram, distance=distance)
    assert torch.isfinite(single)


# ------------------------------------------------------- numerics: dtype, scale, empty batch

HALF_TYPES = [torch.float16, torch.bfloat16]


def _reference(current, pretrained, distance, gram):
    if distance == "cka":
        return _reference_cka(current, pretrained)
    return _reference_cos2(current, pretrained, gram)


@pytest.mark.parametrize(("distance", "gram"), MODES)
@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("scale", [1.0, 20.0, 300.0])
def test_half_precision_activations_are_computed_in_float32(distance, gram, dtype, scale):
    """Under mixed precision the taps are float16: their Gram products overflowed float16
    (AT of a with itself came out 0.0, or NaN at larger values)."""
    a = (scale * _randn(4, 16, 8, 8, seed=50).relu()).to(dtype)
    b = (scale * _randn(4, 16, 8, 8, seed=51)).to(dtype)
    same = at_loss(a, a, gram=gram, distance=distance)
    assert same.dtype == torch.float32
    assert same.item() == pytest.approx(1.0, abs=1e-5)
    # Against the float64 reference of the very same (rounded) half values.
    got = at_loss(a, b, gram=gram, distance=distance).item()
    assert got == pytest.approx(_reference(a, b, distance, gram), rel=1e-4)


@pytest.mark.parametrize(("distance", "gram"), MODES)
def test_half_precision_gradients_are_finite_and_match_float32(distance, gram):
    a = (100 * _randn(3, 8, 6, 6, seed=52).relu()).half().requires_grad_()
    b = (100 * _randn(3, 8, 6, 6, seed=53)).half()
    at_loss(a, b, gram=gram, distance=distance).backward()
    a32 = a.detach().float().requires_grad_()
    at_loss(a32, b.float(), gram=gram, distance=distance).backward()
    assert a.grad.dtype == torch.float16 and torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad.float(), a32.grad, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize(("distance", "gram"), MODES)
@pytest.mark.parametrize("scale", [1e10, 1e20, 1e-10, 1e-20, 1e30])
def test_float32_values_do_not_depend_on_extreme_scales(distance, gram, scale):
    """cos2 and CKA are scale-invariant; in float32 the products used to overflow (1e10 gave
    0.0, 1e20 NaN) or underflow (1e-10 gave 3e-33)."""
    a, b = _randn(4, 6, 5, 5, seed=54).relu(), _randn(4, 6, 5, 5, seed=55)
    expected = _reference(a, b, distance, gram)  # float64, unscaled
    for current, pretrained in ((scale * a, scale * b), (scale * a, b), (a, scale * b)):
        got = at_loss(current, pretrained, gram=gram, distance=distance).item()
        assert got == pytest.approx(expected, rel=1e-5)
    assert at_loss(scale * a, scale * a, gram=gram, distance=distance).item() == pytest.approx(
        1.0, abs=1e-5
    )


@pytest.mark.parametrize(("distance", "gram"), MODES)
def test_scaling_by_a_power_of_two_changes_no_bit(distance, gram):
    a, b = _randn(4, 6, 5, 5, seed=56), _randn(4, 6, 5, 5, seed=57)
    base = at_loss(a, b, gram=gram, distance=distance)
    for k in (-30, 1, 40):
        scaled = at_loss(a * 2.0**k, b * 2.0 ** (-k // 2), gram=gram, distance=distance)
        assert scaled.item() == base.item()


@pytest.mark.parametrize(("distance", "gram"), MODES)
@pytest.mark.parametrize("scale", [1e10, 1e-10, 1e20, 1e-20])
def test_gradients_follow_the_chain_rule_at_extreme_scales(distance, gram, scale):
    """d/da AT(s a, b) = d/da AT(a, b), since AT(s a, b) = AT(a, b) for every s > 0."""
    a = _randn(3, 4, 4, 4, seed=58).requires_grad_()
    b = _randn(3, 4, 4, 4, seed=59)
    at_loss(a, b, gram=gram, distance=distance).backward()
    plain = a.grad.clone()
    a.grad = None
    at_loss(scale * a, b, gram=gram, distance=distance).backward()
    torch.testing.assert_close(a.grad, plain, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("distance", "gram"), MODES)
@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (0, 7)])
def test_an_empty_batch_is_a_clear_error(distance, gram, shape):
    """An empty batch used to give NaN (cos2) or an internal reshape error (cka)."""
    empty = torch.zeros(shape)
    with pytest.raises(ValueError, match=r"at_loss needs a non-empty batch, got batch size 0"):
        at_loss(empty, empty, gram=gram, distance=distance)


def test_empty_inputs_are_clear_errors_everywhere():
    a = _randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match=r"pretrained of shape \(2, 0, 4, 4\) has no elements"):
        at_loss(a, _randn(2, 0, 4, 4), distance="cka")
    with pytest.raises(ValueError, match="cos2_from_grams needs a non-empty batch"):
        cos2_from_grams(torch.zeros(0, 8, 8), torch.zeros(0, 8, 8))
    with pytest.raises(ValueError, match="gram_matrix needs a non-empty batch"):
        gram_matrix(a[:0])
    model = TinyNet(seed=1).eval()
    for distance in ("cos2", "cka"):
        at = AntiTransfer(TinyNet(seed=2), "conv1_1", distance=distance, cache_budget_mb=1)
        with at.capture(model) as captured:
            model(_randn(0, 1, 8, 8))
        with pytest.raises(ValueError, match="term at tap 'conv1_1' needs a non-empty batch"):
            at.term(captured, _randn(0, 1, 8, 8), keys=torch.arange(0))
        with pytest.raises(ValueError, match="targets needs a non-empty batch"):
            at.targets(_randn(0, 1, 8, 8), keys=torch.arange(0))


def test_cka_of_identical_items_is_zero_not_rounding_noise():
    """Centring a batch of identical items leaves only the mean's rounding error; normalising
    it would turn noise into a random CKA value."""
    item = 3.7 * _randn(1, 5, 3, 3, seed=60) + 1.3
    same = item.expand(6, -1, -1, -1)
    other = _randn(6, 5, 3, 3, seed=61)
    assert at_loss(same, other, distance="cka").item() == 0.0
    assert at_loss(other, same, distance="cka").item() == 0.0


def test_gram_matrix_normalize_keeps_row_directions_and_bounds_entries():
    a = 1e20 * _randn(3, 5, 4, 4, seed=62)
    for mode in ("sample", "batch"):
        scaled = gram_matrix(a, mode, normalize=True)
        assert torch.isfinite(scaled).all() and scaled.abs().max() <= 1.0
        exact = gram_matrix(a.double(), mode)  # float64 holds the true Gram of 1e20 values
        cos = torch.nn.functional.cosine_similarity(scaled.double(), exact, dim=-1)
        torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-6)


def test_at_loss_rejects_bad_arguments_with_clear_messages():
    a = _randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match=r"gram must be one of \['sample', 'batch'\], got 'x'"):
        at_loss(a, a, gram="x")
    with pytest.raises(ValueError, match=r"distance must be one of \['cos2', 'cka'\]"):
        at_loss(a, a, distance="l2")
    with pytest.raises(ValueError, match=r"C \(dim 1\): 8 vs 16"):
        at_loss(a, _randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"H \(dim 2\): 4 vs 5, W \(dim 3\): 4 vs 5"):
        at_loss(a, _randn(2, 8, 5, 5))
    with pytest.raises(ValueError, match="different ranks"):
        at_loss(a, _randn(2, 8))
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 4\)"):
        at_loss(_randn(2, 8, 4), _randn(2, 8, 4))
    with pytest.raises(ValueError, match="same batch size"):
        at_loss(a, _randn(3, 8, 4, 4), distance="cka")
    with pytest.raises(ValueError, match="Gram matrices must have the same shape"):
        cos2_from_grams(gram_matrix(a), gram_matrix(_randn(2, 4, 4, 4)))


# -------------------------------------------------------------------- AntiTransfer


def _independent_term(model, orthogonal, taps, x, distance, gram):
    """The AT value from hook-free truncated forwards of both networks."""
    orthogonal.eval()
    total = 0.0
    for tap in taps:
        with torch.no_grad():
            frozen = orthogonal.truncated(tap)(x)
        total += at_loss(model.truncated(tap)(x), frozen, gram=gram, distance=distance).item()
    return total


@pytest.mark.parametrize(("distance", "gram"), MODES)
@pytest.mark.parametrize("taps", [["conv1_2"], ["conv1_1", "conv2_1"], ["conv2_1", "penultimate"]])
def test_term_equals_at_loss_of_both_networks_summed_over_taps(distance, gram, taps):
    model, orthogonal = TinyNet(seed=1).eval(), TinyNet(num_classes=5, seed=2)
    x = _randn(4, 1, 8, 8, seed=12)
    at = AntiTransfer(orthogonal, taps, distance=distance, gram=gram)
    with at.capture(model) as captured:
        model(x)
    expected = _independent_term(model, orthogonal, taps, x, distance, gram)
    assert at.term(captured, x).item() == pytest.approx(expected, rel=1e-5)


def test_capture_collects_the_same_tensor_as_a_hook_free_truncated_forward():
    model = TinyNet(seed=1).eval()
    x = _randn(3, 1, 8, 8, seed=13)
    at = AntiTransfer(TinyNet(seed=2), ["conv1_1", "conv2_1", "penultimate"])
    with at.capture(model) as captured:
        logits = model(x)
    assert logits.shape == (3, 3)
    for tap in at.taps:
        torch.testing.assert_close(captured[tap], model.truncated(tap)(x), rtol=0, atol=0)
        assert not model.tap_module(tap)._forward_hooks  # removed on exit


def test_capture_refuses_a_second_forward_in_one_block():
    model = TinyNet(seed=1)
    at = AntiTransfer(TinyNet(seed=2), "conv1_1")
    x = _randn(2, 1, 8, 8)
    with pytest.raises(RuntimeError, match="captured twice"), at.capture(model):
        model(x)
        model(x)
    assert not model.tap_module("conv1_1")._forward_hooks


def test_frozen_network_gets_no_gradient_and_keeps_weights_and_running_stats():
    model, orthogonal = TinyNet(seed=1), TinyNet(num_classes=5, seed=2)
    # Non-trivial running statistics, so that a train-mode pass would visibly move them.
    for module in orthogonal.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    at = AntiTransfer(orthogonal, ["conv1_2", "conv2_1"])
    before = {k: v.clone() for k, v in at.orthogonal.state_dict().items()}
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        if step == 1:
            at.orthogonal.train()  # a careless caller; term() must still run it in eval mode
        x, y = _randn(4, 1, 8, 8, seed=20 + step), torch.tensor([0, 1, 2, 1])
        optimizer.zero_grad()
        with at.capture(model) as captured:
            logits = model(x)
        term = at.term(captured, x)
        (nn.functional.cross_entropy(logits, y) + 0.5 * term).backward()
        assert model.features.conv1_1[0].weight.grad.abs().sum() > 0
        optimizer.step()
    assert all(p.grad is None for p in at.orthogonal.parameters())
    assert all(not p.requires_grad for p in at.orthogonal.parameters())
    for name, value in at.orthogonal.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    assert at.orthogonal is not orthogonal  # a private frozen copy


def test_frozen_network_runs_only_up_to_the_deepest_tap():
    at = AntiTransfer(TinyNet(seed=2), ["conv1_2", "conv1_1"])
    ran = []
    at.orthogonal.tap_module("conv2_1").register_forward_hook(lambda *args: ran.append(1))
    model = TinyNet(seed=1)
    x = _randn(2, 1, 8, 8)
    with at.capture(model) as captured:
        model(x)
    at.term(captured, x)
    assert ran == []


def test_at_term_back_propagates_into_the_trained_model_only_through_taps():
    model = TinyNet(seed=1)
    at = AntiTransfer(TinyNet(seed=2), "conv1_2")
    x = _randn(4, 1, 8, 8)
    with at.capture(model) as captured:
        model(x)
    at.term(captured, x).backward()
    assert model.features.conv1_1[0].weight.grad.abs().sum() > 0
    assert model.features.conv2_1[0].weight.grad is None  # after the tap: untouched


def _epoch_terms(at, model, data, order, batch_size=4, cached=True):
    values = []
    for start in range(0, len(order), batch_size):
        keys = order[start : start + batch_size]
        x = data[keys]
        with at.capture(model) as captured:
            model(x)
        values.append(at.term(captured, x, keys=keys if cached else None).item())
    return values


@pytest.mark.parametrize("distance", ["cos2", "cka"])
def test_cached_and_uncached_terms_agree_over_two_epochs(distance):
    model = TinyNet(seed=1).eval()
    data = _randn(12, 1, 8, 8, seed=30)
    taps = ["conv1_1", "conv2_1"]
    cached = AntiTransfer(TinyNet(seed=2), taps, distance=distance, cache_budget_mb=1)
    plain = AntiTransfer(TinyNet(seed=2), taps, distance=distance)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(2):
        order = torch.randperm(12, generator=gen)
        got = _epoch_terms(cached, model, data, order)
        expected = _epoch_terms(plain, model, data, order, cached=False)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        stats = cached.cache_stats
        assert (stats["misses"], stats["hits"]) == (12, 12 * epoch)
    assert cached.cache_stats["entries"] == 12


def test_cache_respects_its_budget_without_evicting():
    model = TinyNet(seed=1).eval()
    data = _randn(12, 1, 8, 8, seed=31)
    taps = ["conv1_2", "conv2_1"]
    entry_bytes = (8 * 8 + 8 * 8) * 4  # one float32 (C, C) Gram per tap, C = 8 at both taps
    budget_mb = 5.5 * entry_bytes / 2**20  # room for exactly five items
    at = AntiTransfer(TinyNet(seed=2), taps, cache_budget_mb=budget_mb)
    plain = AntiTransfer(TinyNet(seed=2), taps)
    order = torch.arange(12)
    first = _epoch_terms(at, model, data, order)
    assert at.cache_stats["entries"] == 5
    assert at.cache_stats["bytes"] == 5 * entry_bytes <= at.cache_stats["budget_bytes"]
    second = _epoch_terms(at, model, data, order.flip(0))
    stats = at.cache_stats
    assert (stats["hits"], stats["misses"], stats["entries"]) == (5, 12 + 7, 5)
    np.testing.assert_allclose(first, _epoch_terms(plain, model, data, order, cached=False), 1e-5)
    np.testing.assert_allclose(
        second, _epoch_terms(plain, model, data, order.flip(0), cached=False), 1e-5
    )
    at.clear_cache()
    assert at.cache_stats == {
        "hits": 0,
        "misses": 0,
        "entries": 0,
        "bytes": 0,
        "budget_bytes": at.cache_stats["budget_bytes"],
    }


def test_antitransfer_rejects_bad_configuration():
    orthogonal = TinyNet(seed=2)
    with pytest.raises(ValueError, match=r"unknown tap\(s\) \['conv9_9'\]; valid taps: \["):
        AntiTransfer(orthogonal, ["conv1_1", "conv9_9"])
    with pytest.raises(ValueError, match="penultimate"):
        AntiTransfer(orthogonal, "conv0")
    with pytest.raises(ValueError, match="at least one tap"):
        AntiTransfer(orthogonal, [])
    with pytest.raises(ValueError, match="must not repeat"):
        AntiTransfer(orthogonal, ["conv1_1", "conv1_1"])
    with pytest.raises(ValueError, match="cross-sample"):
        AntiTransfer(orthogonal, "conv1_1", gram="batch", cache_budget_mb=1)
    with pytest.raises(ValueError, match="cache_budget_mb must be >= 0"):
        AntiTransfer(orthogonal, "conv1_1", cache_budget_mb=-1)
    with pytest.raises(ValueError, match="distance must be one of"):
        AntiTransfer(orthogonal, "conv1_1", distance="mse")
    with pytest.raises(ValueError, match="has no 'taps'"):
        AntiTransfer(nn.Linear(2, 2), "conv1_1")


def test_term_rejects_missing_taps_and_bad_keys():
    model = TinyNet(seed=1)
    at = AntiTransfer(TinyNet(seed=2), ["conv1_1", "conv1_2"], cache_budget_mb=1)
    x = _randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"no activation for tap\(s\) \['conv1_2'\]"):
        at.term({"conv1_1": model.truncated("conv1_1")(x)}, x)
    with at.capture(model) as captured:
        model(x)
    with pytest.raises(ValueError, match="keys has 3 entries but the batch has 2"):
        at.term(captured, x, keys=torch.arange(3))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        at.term(captured, x, keys=torch.zeros(2))


def test_check_compatible_says_what_differs_at_each_tap():
    at = AntiTransfer(TinyNet(seed=2), ["conv1_1", "conv2_1"])
    at.check_compatible(TinyNet(num_classes=7, seed=3))  # only the head differs: fine
    other = TinyNet(widths=(4, 8, 12), quaternion=True)
    with pytest.raises(ValueError) as info:
        at.check_compatible(other, example=_randn(2, 1, 8, 8))
    message = str(info.value)
    assert "the trained model is quaternion, the orthogonal network is real" in message
    assert "tap 'conv2_1': 12 channels in the trained model vs 8" in message
    assert "activation shape (2, 12, 4, 4) in the trained model vs (2, 8, 4, 4)" in message
    assert "conv1_1'" not in message
    # CKA compares representations of any width.
    AntiTransfer(TinyNet(seed=2), "conv2_1", distance="cka").check_compatible(
        TinyNet(widths=(4, 8, 12)), example=_randn(2, 1, 8, 8)
    )


def test_init_from_copies_everything_but_the_mismatched_head():
    model, orthogonal = TinyNet(num_classes=3, seed=1), TinyNet(num_classes=5, seed=2)
    head_before = model.head.classifier.weight.clone()
    copied = init_from(model, orthogonal)
    assert "features.conv1_1.0.weight" in copied
    assert "features.conv1_1.1.running_var" in copied
    assert not any(name.startswith("head.classifier") for name in copied)
    source = orthogonal.state_dict()
    for name in copied:
        torch.testing.assert_close(model.state_dict()[name], source[name], rtol=0, atol=0)
    torch.testing.assert_close(model.head.classifier.weight, head_before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no parameter of the orthogonal network"):
        init_from(model, nn.Linear(3, 3))


# ------------------------------------------------------------------ with qat.models.vgg16


def test_antitransfer_on_real_vgg16():
    model = vgg16(num_classes=5, width=1 / 16)
    orthogonal = vgg16(num_classes=7, width=1 / 16)
    x = _randn(4, 1, 32, 32, seed=40)
    taps = ["conv1_2", "conv3_1", "penultimate"]
    for distance, gram in MODES:
        at = AntiTransfer(orthogonal, taps, distance=distance, gram=gram)
        at.check_compatible(model, example=x)
        model.eval()  # deterministic (dropout off) so the independent value is comparable
        with at.capture(model) as captured:
            logits = model(x)
        assert logits.shape == (4, 5)
        term = at.term(captured, x)
        expected = _independent_term(model, orthogonal, taps, x, distance, gram)
        assert term.item() == pytest.approx(expected, rel=1e-5)
    model.train()
    with at.capture(model) as captured:
        logits = model(x)
    (logits.sum() + at.term(captured, x)).backward()
    assert all(p.grad is None for p in at.orthogonal.parameters())


def test_check_compatible_rejects_real_orthogonal_for_quaternion_vgg16():
    real = vgg16(num_classes=5, in_channels=4, width=1 / 16)
    quaternion = vgg16(num_classes=5, in_channels=4, quaternion=True, width=1 / 16)
    at = AntiTransfer(real, "conv2_1")
    with pytest.raises(ValueError, match="the trained model is quaternion, the orthogonal"):
        at.check_compatible(quaternion)
    AntiTransfer(quaternion, "conv2_1").check_compatible(
        vgg16(num_classes=3, in_channels=4, quaternion=True, width=1 / 16)
    )


@pytest.mark.parametrize("pre", [None, 0.25])
@pytest.mark.parametrize("shape", [(3, 4, 5), (6, 5)])
def test_gram_function_gradients_match_finite_differences(pre, shape):
    """The Gram's hand-written backward, with and without the pre-product scaling used at
    extreme scales (float64, so every path can be checked with finite differences)."""
    from qat.antitransfer import _ScaledGram

    flat = _randn(*shape, seed=63, dtype=torch.float64).requires_grad_()
    dims = (1,) * len(shape)
    post = torch.full(dims, 0.2, dtype=torch.float64)
    scale = None if pre is None else torch.full(dims, pre, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: _ScaledGram.apply(f, scale, post), (flat,))


# ----------------------------------------------------------------- bf16 autocast (issue 35)

BF16_AUTOCAST = torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize(("distance", "gram"), MODES)
def test_under_bf16_autocast_the_at_value_is_the_float32_one_bit_for_bit(distance, gram):
    """Autocast runs matmuls in bfloat16 even on float32 inputs: the Gram and CKA products came
    out with 8 bits of mantissa. They are computed outside it, in float32."""
    a, b = _randn(4, 16, 6, 6, seed=60).relu(), _randn(4, 16, 6, 6, seed=61)
    plain = at_loss(a, b, gram=gram, distance=distance)
    with BF16_AUTOCAST:
        mixed = at_loss(a, b, gram=gram, distance=distance)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)


@pytest.mark.parametrize(("distance", "gram"), MODES)
def test_bf16_activations_under_autocast_match_the_float64_formula(distance, gram):
    a = _randn(4, 16, 6, 6, seed=62).relu().bfloat16().requires_grad_()
    b = _randn(4, 16, 6, 6, seed=63).bfloat16()
    with BF16_AUTOCAST:
        value = at_loss(a, b, gram=gram, distance=distance)
    assert value.item() == pytest.approx(_reference(a, b, distance, gram), rel=1e-5)
    value.backward()
    assert a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad.float()).all()


@pytest.mark.parametrize(("distance", "gram"), MODES)
def test_a_training_step_under_bf16_autocast_keeps_the_term_in_float32(distance, gram):
    model, orthogonal = TinyNet(seed=1), TinyNet(num_classes=5, seed=2)
    x = _randn(4, 1, 8, 8, seed=64)
    taps = ["conv1_2", "penultimate"]
    at = AntiTransfer(orthogonal, taps, distance=distance, gram=gram)
    with BF16_AUTOCAST, at.capture(model) as captured:
        logits = model(x)
        term = at.term(captured, x)
        frozen = at._frozen_activations(x)  # as the term's frozen side saw them: bf16
    assert logits.dtype == frozen["conv1_2"].dtype == torch.bfloat16  # the networks ran in bf16
    assert term.dtype == torch.float32
    expected = sum(_reference(captured[t], frozen[t], distance, gram) for t in taps)
    assert term.item() == pytest.approx(expected, rel=1e-5)
    term.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
