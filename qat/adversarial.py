"""Adversarial invariance (DANN, Ganin & Lempitsky 2015) against an orthogonal factor.

An adversary tries to predict the word (or speaker) from the SER network's penultimate
features; a gradient-reversal layer between them makes the SER network learn features from
which the adversary fails. Training minimises CE(emotion) + CE(domain) with the reversal
scaled by lambda, usually ramped up with :func:`ganin_lambda`.

Words and emotions are correlated in a confounded corpus, so removing ALL word information
can also remove emotion information. The class-conditional adversary (``num_classes`` given)
also sees the one-hot emotion label: the word information it can exploit, and that the
reversal removes, is then only what goes beyond what the emotion already implies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class _GradReverse(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by -lambda."""

    @staticmethod
    def forward(ctx, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        return -ctx.lambda_ * grad_output, None


def grad_reverse(x: Tensor, lambda_: float) -> Tensor:
    """``x`` unchanged, with its gradient multiplied by ``-lambda_`` on the way back."""
    lambda_ = float(lambda_)
    if not (math.isfinite(lambda_) and lambda_ >= 0):
        raise ValueError(f"lambda_ must be a finite number >= 0, got {lambda_!r}")
    return _GradReverse.apply(x, lambda_)


def ganin_lambda(progress: float, lambda_max: float = 1.0, gamma: float = 10.0) -> float:
    """DANN schedule lambda_max * (2 / (1 + exp(-gamma * p)) - 1), p = training progress.

    Starts at 0 (the adversary's early, noisy gradients do not disturb the encoder) and
    rises smoothly towards ``lambda_max`` (reached up to 2 exp(-gamma) at p = 1).
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(
            f"progress must be in [0, 1] (fraction of training done), got {progress!r}"
        )
    if not (math.isfinite(lambda_max) and lambda_max >= 0):
        raise ValueError(f"lambda_max must be a finite number >= 0, got {lambda_max!r}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    return lambda_max * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Adversary(nn.Module):
    """An MLP domain (word or speaker) classifier behind a gradient-reversal layer.

    ``forward(features, lambda_, emotion=None)`` returns (B, num_domains) logits; train it
    with cross-entropy on the domain labels. With ``num_classes`` the adversary is
    class-conditional and requires ``emotion`` (B,) integer labels; without it, passing
    ``emotion`` is an error rather than silently ignored.
    """

    def __init__(
        self,
        in_features: int,
        num_domains: int,
        num_classes: int | None = None,
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.num_domains = _positive_int(num_domains, "num_domains")
        self.num_classes = (
            None if num_classes is None else _positive_int(num_classes, "num_classes")
        )
        _positive_int(hidden, "hidden")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        extra = self.num_classes or 0
        self.net = nn.Sequential(
            nn.Linear(self.in_features + extra, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.num_domains),
        )

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def forward(self, features: Tensor, lambda_: float, emotion: Tensor | None = None) -> Tensor:
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"features must have shape (B, {self.in_features}), got {tuple(features.shape)}"
            )
        reversed_features = grad_reverse(features, lambda_)
        if not self.conditional:
            if emotion is not None:
                raise ValueError(
                    "emotion was given to an unconditional Adversary; build it with "
                    "num_classes=... to condition on the emotion label"
                )
            return self.net(reversed_features)
        return self.net(torch.cat([reversed_features, self._one_hot(emotion, features)], dim=1))

    def _one_hot(self, emotion: Tensor | None, features: Tensor) -> Tensor:
        """The emotion label as a one-hot input: a label, so no gradient flows into it."""
        if emotion is None:
            raise ValueError(
                f"this Adversary is class-conditional (num_classes={self.num_classes}): "
                "forward() needs emotion=(B,) integer emotion labels"
            )
        if emotion.ndim != 1 or emotion.shape[0] != features.shape[0]:
            raise ValueError(
                f"emotion must have shape ({features.shape[0]},), got {tuple(emotion.shape)}"
            )
        if (
            emotion.dtype.is_floating_point
            or emotion.min() < 0
            or emotion.max() >= self.num_classes
        ):
            raise ValueError(
                f"emotion must hold integer labels in [0, {self.num_classes}), got "
                f"{emotion.dtype} values {emotion.min().item()}..{emotion.max().item()}"
            )
        one_hot = nn.functional.one_hot(emotion.long(), self.num_classes)
        return one_hot.to(dtype=features.dtype, device=features.device)
