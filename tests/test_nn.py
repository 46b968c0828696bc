"""Quaternion algebra and layers against independent float64 references.

The references below write the Hamilton product out term by term (`_qmul`) and are checked
themselves against the 2x2 complex-matrix representation of quaternions, so no test relies
on qat's block-weight helper to validate qat's layers.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from qat.nn import (
    QuaternionBatchNorm2d,
    QuaternionConv2d,
    QuaternionLinear,
    QuaternionTransposeConv2d,
    hamilton_product,
    quaternion_block_weight,
    quaternion_init_,
)

# --------------------------------------------------------------------------- references


def _qmul(w, x, contract):
    """Sum of Hamilton products w (x) x, written out by hand; `contract(a, b)` is the bilinear
    contraction (einsum) applied to each pair of components."""
    wr, wi, wj, wk = w
    xr, xi, xj, xk = x
    c = contract
    r = c(wr, xr) - c(wi, xi) - c(wj, xj) - c(wk, xk)
    i = c(wr, xi) + c(wi, xr) + c(wj, xk) - c(wk, xj)
    j = c(wr, xj) - c(wi, xk) + c(wj, xr) + c(wk, xi)
    k = c(wr, xk) + c(wi, xj) - c(wj, xi) + c(wk, xr)
    return r, i, j, k


def _as_complex_matrix(q):
    """q = a + bi + cj + dk as the 2x2 complex matrix [[a+bi, c+di], [-c+di, a-bi]]; the map is
    an algebra homomorphism, so products of quaternions become matrix products."""
    a, b, c, d = q
    return np.array([[a + 1j * b, c + 1j * d], [-c + 1j * d, a - 1j * b]])


def _from_complex_matrix(m):
    return np.array([m[0, 0].real, m[0, 0].imag, m[0, 1].real, m[0, 1].imag])


def _split(x, axis=1):
    """(…, 4Q, …) -> four (…, Q, …) component arrays (r|i|j|k blocks)."""
    return tuple(torch.chunk(x, 4, dim=axis))


def _components64(layer):
    return tuple(t.detach().double() for t in layer.components())


def _reference_conv2d(x, w, bias, stride, padding, dilation):
    """Quaternion conv by looping over kernel offsets and contracting channels with einsum."""
    xr = torch.nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    q_out, _, kh, kw = w[0].shape
    b, _, hp, wp = xr.shape
    h_out = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = [torch.zeros(b, q_out, h_out, w_out, dtype=torch.float64) for _ in range(4)]
    for di in range(kh):
        for dj in range(kw):
            h0, w0 = di * dilation[0], dj * dilation[1]
            patch = xr[
                :,
                :,
                h0 : h0 + stride[0] * (h_out - 1) + 1 : stride[0],
                w0 : w0 + stride[1] * (w_out - 1) + 1 : stride[1],
            ]
            w_at = tuple(t[:, :, di, dj] for t in w)
            terms = _qmul(w_at, _split(patch), lambda a, v: torch.einsum("oc,bchw->bohw", a, v))
            out = [o + t for o, t in zip(out, terms, strict=True)]
    y = torch.cat(out, dim=1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


def _reference_conv_transpose2d(x, w, bias, stride, padding, output_padding, dilation):
    """Quaternion transposed conv by scattering W[c, o] (x) x[c] to every kernel offset."""
    _, q_out, kh, kw = w[0].shape
    b, _, h, wd = x.shape
    full_h = (h - 1) * stride[0] + dilation[0] * (kh - 1) + 1 + output_padding[0]
    full_w = (wd - 1) * stride[1] + dilation[1] * (kw - 1) + 1 + output_padding[1]
    out = [torch.zeros(b, q_out, full_h, full_w, dtype=torch.float64) for _ in range(4)]
    xs = _split(x)
    for di in range(kh):
        for dj in range(kw):
            w_at = tuple(t[:, :, di, dj] for t in w)
            terms = _qmul(w_at, xs, lambda a, v: torch.einsum("co,bchw->bohw", a, v))
            h0, w0 = di * dilation[0], dj * dilation[1]
            rows = slice(h0, h0 + stride[0] * (h - 1) + 1, stride[0])
            cols = slice(w0, w0 + stride[1] * (wd - 1) + 1, stride[1])
            for o, t in zip(out, terms, strict=True):
                o[:, :, rows, cols] += t
    h_out = (h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    w_out = (wd - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    y = torch.cat(out, dim=1)[
        :, :, padding[0] : padding[0] + h_out, padding[1] : padding[1] + w_out
    ]
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


# --------------------------------------------------------------------------- algebra


def test_reference_product_matches_complex_matrix_representation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.normal(size=4), rng.normal(size=4)
        expected = _from_complex_matrix(_as_complex_matrix(p) @ _as_complex_matrix(q))
        mine = np.array(_qmul(tuple(p), tuple(q), lambda a, b: a * b))
        np.testing.assert_allclose(mine, expected, rtol=1e-12, atol=1e-12)


def test_hamilton_product_matches_complex_matrices_on_random_batches():
    rng = np.random.default_rng(1)
    p, q = rng.normal(size=(5, 3, 4)), rng.normal(size=(5, 3, 4))
    got = hamilton_product(torch.from_numpy(p), torch.from_numpy(q)).numpy()
    for a in range(5):
        for b in range(3):
            m = _as_complex_matrix(p[a, b]) @ _as_complex_matrix(q[a, b])
            np.testing.assert_allclose(got[a, b], _from_complex_matrix(m), rtol=1e-12, atol=1e-12)


def test_hamilton_product_unit_table_and_component_axis():
    one, i, j, k = torch.eye(4, dtype=torch.float64)
    assert torch.equal(hamilton_product(i, j), k)
    assert torch.equal(hamilton_product(j, k), i)
    assert torch.equal(hamilton_product(k, i), j)
    assert torch.equal(hamilton_product(j, i), -k)
    assert torch.equal(hamilton_product(i, i), -one)
    p, q = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    along_1 = hamilton_product(p, q, dim=1)
    trailing = hamilton_product(p.transpose(1, 2), q.transpose(1, 2))
    torch.testing.assert_close(along_1, trailing.transpose(1, 2))
    with pytest.raises(ValueError, match="size 4"):
        hamilton_product(torch.randn(3), torch.randn(3))


def test_block_weight_transposed_layout_is_the_transpose_of_the_block_matrix():
    r, i, j, k = (torch.randn(3, 5, dtype=torch.float64) for _ in range(4))
    straight = quaternion_block_weight(r, i, j, k)
    transposed = quaternion_block_weight(r.T, i.T, j.T, k.T, transposed=True)
    assert straight.shape == (12, 20)
    torch.testing.assert_close(transposed, straight.T)


# --------------------------------------------------------------------------- layers vs reference


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [(1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, (2, 1), (0, 2), 1), (3, 1, 2, 2)],
)
def test_conv_equals_explicit_hamilton_products(kernel, stride, padding, dilation):
    torch.manual_seed(0)
    layer = QuaternionConv2d(8, 12, kernel, stride=stride, padding=padding, dilation=dilation)
    layer = layer.double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    expected = _reference_conv2d(
        x, _components64(layer), layer.bias.detach(), layer.stride, layer.padding, layer.dilation
    )
    got = layer(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "output_padding", "dilation"),
    [(1, 1, 0, 0, 1), (3, 1, 1, 0, 1), (3, 2, 1, 1, 1), (3, (2, 1), (1, 0), (1, 0), 1),
     (2, 2, 0, 0, 2)],
)  # fmt: skip
def test_transpose_conv_equals_explicit_scatter_of_hamilton_products(
    kernel, stride, padding, output_padding, dilation
):
    torch.manual_seed(1)
    layer = QuaternionTransposeConv2d(
        8, 4, kernel, stride, padding, output_padding, dilation=dilation
    ).double()
    with torch.no_grad():
        layer.bias.normal_()
    assert layer.r_weight.shape[:2] == (2, 1)  # (in/4, out/4, kh, kw)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    expected = _reference_conv_transpose2d(
        x,
        _components64(layer),
        layer.bias.detach(),
        layer.stride,
        layer.padding,
        layer.output_padding,
        layer.dilation,
    )
    got = layer(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_linear_equals_explicit_hamilton_products():
    torch.manual_seed(2)
    layer = QuaternionLinear(12, 8).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 5, 12, dtype=torch.float64)  # extra leading dims are allowed
    w = _components64(layer)
    terms = _qmul(w, _split(x, axis=-1), lambda a, v: torch.einsum("oc,...c->...o", a, v))
    expected = torch.cat(terms, dim=-1) + layer.bias.detach()
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_single_quaternion_linear_map_preserves_norms():
    torch.manual_seed(3)
    layer = QuaternionLinear(4, 4, bias=False).double()
    w_norm = torch.sqrt(sum(t.detach().square() for t in layer.components())).item()
    q = torch.randn(50, 4, dtype=torch.float64)
    out = layer(q)
    torch.testing.assert_close(out.norm(dim=1), w_norm * q.norm(dim=1), rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- gradients


def _gradcheck_module(module, x):
    module = module.double()
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().normal_().requires_grad_() for p in module.parameters())

    def fn(inp, *ps):
        return functional_call(module, dict(zip(names, ps, strict=True)), (inp,))

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), *params), eps=1e-6, atol=1e-5)


def test_gradcheck_conv():
    _gradcheck_module(
        QuaternionConv2d(8, 4, 3, stride=2, padding=1), torch.randn(1, 8, 5, 5).double()
    )


def test_gradcheck_linear():
    _gradcheck_module(QuaternionLinear(8, 4), torch.randn(3, 8).double())


def test_gradcheck_transpose_conv():
    layer = QuaternionTransposeConv2d(4, 8, 3, stride=2, padding=1, output_padding=1)
    _gradcheck_module(layer, torch.randn(1, 4, 3, 3).double())


def test_gradcheck_batch_norm_train_mode():
    _gradcheck_module(QuaternionBatchNorm2d(8), torch.randn(3, 8, 2, 3).double())


# --------------------------------------------------------------------------- parameter counts


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_are_a_quarter_of_the_real_weights_plus_bias():
    pairs = [
        (QuaternionConv2d(16, 32, 3), nn.Conv2d(16, 32, 3)),
        (QuaternionLinear(16, 32), nn.Linear(16, 32)),
        (QuaternionTransposeConv2d(16, 32, 3), nn.ConvTranspose2d(16, 32, 3)),
    ]
    for quaternion, real in pairs:
        assert _count(quaternion) == real.weight.numel() // 4 + real.bias.numel()
        assert quaternion.block_weight().shape == real.weight.shape
    # no bias: exactly one quarter
    assert _count(QuaternionConv2d(16, 32, 3, bias=False)) * 4 == _count(
        nn.Conv2d(16, 32, 3, bias=False)
    )
    # batch norm: gamma per quaternion channel + beta per real channel
    assert _count(QuaternionBatchNorm2d(32)) == 8 + 32


# --------------------------------------------------------------------------- batch norm


def _shifted_input(seed=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 12, 5, 4, generator=g, dtype=torch.float64)
    return x * torch.rand(1, 12, 1, 1, generator=g, dtype=torch.float64) * 3 + torch.randn(
        1, 12, 1, 1, generator=g, dtype=torch.float64
    )


def test_batch_norm_train_mode_zero_mean_unit_squared_modulus():
    bn = QuaternionBatchNorm2d(12).double()
    x = _shifted_input()
    y = bn(x).reshape(6, 4, 3, 5, 4)
    means = y.mean(dim=(0, 3, 4))
    torch.testing.assert_close(means, torch.zeros_like(means), atol=1e-12, rtol=0)
    sq_modulus = y.square().sum(dim=1).mean(dim=(0, 2, 3))
    torch.testing.assert_close(sq_modulus, torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_batch_norm_train_mode_matches_hand_computation_with_affine():
    bn = QuaternionBatchNorm2d(12, eps=1e-3).double()
    with torch.no_grad():
        bn.gamma.uniform_(0.5, 2.0)
        bn.beta.normal_()
    x = _shifted_input(5)
    xn = x.numpy()
    expected = np.empty_like(xn)
    for c in range(3):
        comps = [xn[:, comp * 3 + c] for comp in range(4)]
        mus = [v.mean() for v in comps]
        var = np.mean(sum((v - m) ** 2 for v, m in zip(comps, mus, strict=True)))
        for comp in range(4):
            ch = comp * 3 + c
            expected[:, ch] = (
                bn.gamma[c].item() * (xn[:, ch] - mus[comp]) / math.sqrt(var + 1e-3)
                + bn.beta[ch].item()
            )
    np.testing.assert_allclose(bn(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_batch_norm_eval_uses_hand_computed_running_averages_and_round_trips():
    momentum, eps = 0.3, 1e-5
    bn = QuaternionBatchNorm2d(8, eps=eps, momentum=momentum).double()
    with torch.no_grad():
        bn.gamma.uniform_(0.5, 2.0)
        bn.beta.normal_()
    batches = [torch.randn(4, 8, 3, 3, dtype=torch.float64) * 2 + 1 for _ in range(2)]
    run_mean, run_var = np.zeros(8), np.ones(2)
    for xb in batches:
        bn(xb)
        xn = xb.numpy()
        n = xn.shape[0] * xn.shape[2] * xn.shape[3]
        mean = xn.mean(axis=(0, 2, 3))
        centered = xn - mean[None, :, None, None]
        var = np.array(
            [np.sum([centered[:, comp * 2 + c] ** 2 for comp in range(4)]) / n for c in range(2)]
        )
        run_mean = (1 - momentum) * run_mean + momentum * mean
        run_var = (1 - momentum) * run_var + momentum * var * n / (n - 1)
    np.testing.assert_allclose(bn.running_mean.numpy(), run_mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), run_var, rtol=1e-12)

    bn.eval()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    shared_var = np.repeat(run_var[None, :], 4, axis=0).reshape(8)  # quaternion c -> channels
    gamma = np.tile(bn.gamma.detach().numpy(), 4)
    expected = (x.numpy() - run_mean[None, :, None, None]) / np.sqrt(
        shared_var[None, :, None, None] + eps
    ) * gamma[None, :, None, None] + bn.beta.detach().numpy()[None, :, None, None]
    got = bn(x)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    before = bn.running_mean.clone()
    bn(x)
    assert torch.equal(bn.running_mean, before)  # eval does not update the statistics

    clone = QuaternionBatchNorm2d(8, eps=eps, momentum=momentum).double()
    clone.load_state_dict(bn.state_dict())
    clone.eval()
    assert set(bn.state_dict()) == {"gamma", "beta", "running_mean", "running_var"}
    torch.testing.assert_close(clone(x), got, rtol=0, atol=0)


# --------------------------------------------------------------------------- init


@pytest.mark.parametrize("criterion", ["glorot", "he"])
def test_init_variance_matches_real_glorot_and_he_targets(criterion):
    q_in, q_out, kernel = 48, 80, 3  # 34,560 draws per component
    layer = QuaternionConv2d(
        4 * q_in, 4 * q_out, kernel, init=criterion, generator=torch.Generator().manual_seed(0)
    )
    rf = kernel * kernel
    fan_in_real, fan_out_real = 4 * q_in * rf, 4 * q_out * rf
    target = 2 / (fan_in_real + fan_out_real) if criterion == "glorot" else 2 / fan_in_real
    w = layer.block_weight().detach().double()
    assert abs(w.var().item() / target - 1) < 0.05
    assert abs(w.mean().item()) < 0.05 * math.sqrt(target)
    # per component: Var(r) = 2 sigma^2 and Var(i/j/k) = 2 sigma^2 / 3, with sigma^2 = target
    r, i, j, k = (t.detach().double() for t in layer.components())
    assert abs(r.var().item() / (2 * target) - 1) < 0.05
    for t in (i, j, k):
        assert abs(t.var().item() / (2 * target / 3) - 1) < 0.05
    # modulus ~ sigma * chi(4): E|w| = sigma * sqrt(2) * Gamma(5/2) / Gamma(2)
    modulus = torch.sqrt(r.square() + i.square() + j.square() + k.square())
    chi4_mean = math.sqrt(2) * math.gamma(2.5) / math.gamma(2.0)
    assert abs(modulus.mean().item() / (math.sqrt(target) * chi4_mean) - 1) < 0.05


def test_init_is_reproducible_by_generator_and_global_seed():
    def draw(seed=None, generator=None):
        if seed is not None:
            torch.manual_seed(seed)
        return QuaternionConv2d(8, 8, 3, generator=generator).block_weight().detach()

    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(draw(generator=g1), draw(generator=g2))
    assert torch.equal(draw(seed=11), draw(seed=11))
    assert not torch.equal(draw(seed=11), draw(seed=12))
    g3 = torch.Generator().manual_seed(8)
    assert not torch.equal(draw(generator=torch.Generator().manual_seed(7)), draw(generator=g3))


def test_init_rejects_bad_arguments():
    t = [torch.empty(2, 2) for _ in range(4)]
    with pytest.raises(ValueError, match="criterion='xavier'"):
        quaternion_init_(*t, fan_in=2, fan_out=2, criterion="xavier")
    with pytest.raises(ValueError, match="fan_in=0"):
        quaternion_init_(*t, fan_in=0, fan_out=2)
    with pytest.raises(ValueError, match="init='kaiming'"):
        QuaternionLinear(4, 4, init="kaiming")


# --------------------------------------------------------------------------- bad input


def test_channel_counts_must_be_multiples_of_four():
    with pytest.raises(ValueError, match="in_channels=6"):
        QuaternionConv2d(6, 8, 3)
    with pytest.raises(ValueError, match="out_channels=10"):
        QuaternionTransposeConv2d(8, 10, 3)
    with pytest.raises(ValueError, match="out_features=3"):
        QuaternionLinear(8, 3)
    with pytest.raises(ValueError, match="num_channels=2"):
        QuaternionBatchNorm2d(2)


def test_input_with_wrong_channel_count_is_rejected():
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 5\).*expected \(B, 8, H, W\)"):
        QuaternionConv2d(8, 8, 3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"input shape \(8, 5, 5\)"):
        QuaternionConv2d(8, 8, 3)(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match="in_channels=8"):
        QuaternionTransposeConv2d(8, 8, 3)(torch.randn(2, 12, 5, 5))
    with pytest.raises(ValueError, match="in_features=8"):
        QuaternionLinear(8, 8)(torch.randn(2, 12))
    with pytest.raises(ValueError, match="num_channels=8"):
        QuaternionBatchNorm2d(8)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="B\\*H\\*W >= 2"):
        QuaternionBatchNorm2d(8)(torch.randn(1, 8, 1, 1))
