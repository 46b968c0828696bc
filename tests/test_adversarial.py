"""Gradient reversal, the DANN lambda schedule and the (class-conditional) adversary."""

import itertools
import math

import numpy as np
import pytest
import torch

from qat.adversarial import Adversary, ganin_lambda, grad_reverse


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("lambda_", [0.0, 0.3, 1.0, 2.5])
def test_grad_reverse_is_identity_forward_and_flips_and_scales_the_gradient(lambda_):
    x = _randn(5, 7, seed=1).requires_grad_()
    reference = x.detach().clone().requires_grad_()
    upstream = _randn(5, 7, seed=2)
    y = grad_reverse(x, lambda_)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    y.backward(upstream)
    reference.view_as(reference).backward(upstream)  # autograd of the plain identity
    torch.testing.assert_close(x.grad, -lambda_ * reference.grad, rtol=0, atol=0)


def test_grad_reverse_inside_a_nonlinear_loss():
    x = _randn(4, 3, seed=3).requires_grad_()
    (grad_reverse(x, 0.5) ** 3).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * 3 * x.detach() ** 2)


def test_grad_reverse_rejects_negative_or_nan_lambda():
    x = _randn(2, 2)
    with pytest.raises(ValueError, match=r"lambda_ must be a finite number >= 0, got -1.0"):
        grad_reverse(x, -1)
    with pytest.raises(ValueError, match="lambda_"):
        grad_reverse(x, float("nan"))


def test_ganin_lambda_endpoints_values_and_monotonicity():
    assert ganin_lambda(0.0) == 0.0
    assert ganin_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert ganin_lambda(1.0, lambda_max=0.3, gamma=5.0) == pytest.approx(
        0.3 * (2 / (1 + math.exp(-5)) - 1)
    )
    assert ganin_lambda(0.25, gamma=10.0) == pytest.approx(2 / (1 + math.exp(-2.5)) - 1)
    values = [ganin_lambda(p, lambda_max=0.7) for p in np.linspace(0, 1, 101)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert max(values) < 0.7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"progress": -0.1}, r"progress must be in \[0, 1\]"),
        ({"progress": 1.5}, r"progress must be in \[0, 1\]"),
        ({"progress": 0.5, "lambda_max": -1.0}, "lambda_max"),
        ({"progress": 0.5, "gamma": 0.0}, "gamma must be a finite number > 0"),
    ],
)
def test_ganin_lambda_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ganin_lambda(**kwargs)


def test_unconditional_adversary_reverses_only_the_feature_gradient():
    torch.manual_seed(0)
    adversary = Adversary(6, num_domains=4, hidden=8).double()
    features = _randn(5, 6, seed=4).requires_grad_()
    domains = torch.tensor([0, 1, 2, 3, 1])
    logits = adversary(features, lambda_=0.4)
    assert logits.shape == (5, 4)
    torch.nn.functional.cross_entropy(logits, domains).backward()
    reversed_grad = features.grad.clone()
    params_grad = [p.grad.clone() for p in adversary.parameters()]

    # The same network without reversal: the adversary's own gradients are identical and
    # the encoder-side gradient is exactly -lambda times the plain one.
    adversary.zero_grad()
    plain = features.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(adversary.net(plain), domains).backward()
    torch.testing.assert_close(reversed_grad, -0.4 * plain.grad)
    for got, expected in zip(params_grad, adversary.parameters(), strict=True):
        torch.testing.assert_close(got, expected.grad)


def test_conditional_adversary_sees_the_emotion_and_needs_it():
    torch.manual_seed(0)
    adversary = Adversary(6, num_domains=3, num_classes=4, hidden=8).double()
    features = _randn(3, 6, seed=5).requires_grad_()
    a = adversary(features, 1.0, emotion=torch.tensor([0, 1, 2]))
    b = adversary(features, 1.0, emotion=torch.tensor([3, 1, 2]))
    assert a.shape == (3, 3)
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1:], b[1:])
    # The emotion enters as a one-hot next to the features.
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2]), 4).double()
    torch.testing.assert_close(a, adversary.net(torch.cat([features, one_hot], dim=1)))
    with pytest.raises(ValueError, match=r"class-conditional \(num_classes=4\).*emotion="):
        adversary(features, 1.0)
    with pytest.raises(ValueError, match=r"integer labels in \[0, 4\)"):
        adversary(features, 1.0, emotion=torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match=r"emotion must have shape \(3,\)"):
        adversary(features, 1.0, emotion=torch.tensor([0, 1]))


def test_adversary_rejects_bad_construction_and_inputs():
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        Adversary(0, 3)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        Adversary(4, 3, num_classes=-2)
    with pytest.raises(ValueError, match="dropout"):
        Adversary(4, 3, dropout=1.0)
    adversary = Adversary(4, 3)
    with pytest.raises(ValueError, match=r"features must have shape \(B, 4\), got \(2, 5\)"):
        adversary(torch.zeros(2, 5), 1.0)
    with pytest.raises(ValueError, match="unconditional Adversary"):
        adversary(torch.zeros(2, 4), 1.0, emotion=torch.tensor([0, 1]))
