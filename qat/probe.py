"""Invariance probe: how much orthogonal-task information (word, speaker) a tap still holds.

Anti-transfer is meant to make the SER network's representation carry less word or speaker
information. The direct measure is a linear probe: pool the trained network's activations at
a tap, fit a multinomial logistic regression for the orthogonal label on some items and
score it on held-out items (held-out speakers for words, for instance). High probe accuracy
means the tap still encodes the orthogonal factor linearly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from qat.antitransfer import capture
from qat.progress import tqdm


def _pool(act: Tensor, tap: str) -> Tensor:
    """Mean over positions for conv taps; (B, D) features pass through."""
    if act.ndim == 4:
        return act.mean(dim=(2, 3))
    if act.ndim == 2:
        return act
    raise ValueError(
        f"tap {tap!r} produced shape {tuple(act.shape)}, expected (B, C, H, W) or (B, D)"
    )


def pooled_activations(
    model: nn.Module,
    tap: str,
    x: Tensor | np.ndarray,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """(N, C) activations of ``model`` at ``tap`` for the N inputs ``x``, mean-pooled over H, W.

    The model runs truncated at the tap, in eval mode and under no_grad, in batches; its
    previous train/eval mode is restored afterwards.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    inputs = torch.as_tensor(x)
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ValueError(
            f"x must be a non-empty batch of inputs (N, ...), got shape {tuple(inputs.shape)}"
        )
    runner = model.truncated(tap)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else inputs.device
    dtype = parameter.dtype if parameter is not None else inputs.dtype
    was_training = model.training
    model.eval()
    pooled = []
    try:
        with torch.no_grad():
            starts = range(0, inputs.shape[0], batch_size)
            for start in tqdm(starts, desc=f"probe {tap}", disable=not progress):
                batch = inputs[start : start + batch_size].to(device=device, dtype=dtype)
                pooled.append(_pool(runner(batch), tap).cpu())
    finally:
        model.train(was_training)
    return torch.cat(pooled).numpy()


def pooled_at_taps(
    model: nn.Module, taps: list[str], x: Tensor | np.ndarray, batch_size: int = 128
) -> dict[str, np.ndarray]:
    """{tap: (N, C) mean-pooled activations} for several taps from ONE forward per batch
    (forward hooks), in eval mode under no_grad; the model's mode is restored afterwards.
    The same values as `pooled_activations` tap by tap, at the cost of one pass."""
    inputs = torch.as_tensor(x)
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ValueError(
            f"x must be a non-empty batch of inputs (N, ...), got shape {tuple(inputs.shape)}"
        )
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    pooled: dict[str, list[Tensor]] = {tap: [] for tap in taps}
    try:
        with torch.no_grad():
            for start in range(0, inputs.shape[0], batch_size):
                batch = inputs[start : start + batch_size].to(parameter.device, parameter.dtype)
                with capture(model, taps) as acts:
                    model(batch)
                for tap in taps:
                    pooled[tap].append(_pool(acts[tap], tap).cpu())
    finally:
        model.train(was_training)
    return {tap: torch.cat(parts).numpy() for tap, parts in pooled.items()}


def _features_and_labels(feats: Any, labels: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    labels = np.asarray(labels)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"{name}_feats must be a non-empty (N, C) array, got shape {feats.shape}")
    if labels.shape != (feats.shape[0],):
        raise ValueError(
            f"{name}_labels must be 1-D with one label per row of {name}_feats "
            f"({feats.shape[0]}), got shape {labels.shape}"
        )
    if not np.isfinite(feats).all():
        raise ValueError(f"{name}_feats contains NaN or infinite values")
    return feats, labels


def probe_accuracy(
    train_feats: Any,
    train_labels: Any,
    test_feats: Any,
    test_labels: Any,
) -> float:
    """Held-out accuracy of a linear probe (standardised features + multinomial logistic
    regression, `fit_logistic`) fitted on the training items.

    A test item whose label never occurs in training cannot be predicted, so it counts as
    an error: the probe is scored on what it could learn, not on a filtered test set.
    Labels may be ints or strings.
    """
    train_feats, train_labels = _features_and_labels(train_feats, train_labels, "train")
    test_feats, test_labels = _features_and_labels(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"train_feats has {train_feats.shape[1]} features per item, test_feats "
            f"{test_feats.shape[1]}: they must come from the same tap"
        )
    if np.unique(train_labels).size < 2:
        raise ValueError("train_labels must contain at least two classes to fit a probe")
    classes, y = np.unique(train_labels, return_inverse=True)
    weight, bias, mean, scale = fit_logistic(train_feats, y, len(classes))
    with torch.no_grad():
        x = (torch.as_tensor(test_feats, dtype=torch.float32) - mean) / scale
        predicted = classes[(x @ weight + bias).argmax(1).numpy()]
    return float(np.mean(predicted == test_labels))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, n_classes: int, c: float = 1.0, max_iter: int = 300,
    tol: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Standardised multinomial logistic regression with scikit-learn's objective (mean
    cross-entropy + ||W||^2 / (2 C n), intercept unpenalised), solved by full-batch L-BFGS in
    float32: scikit-learn's LogisticRegression(C, max_iter=300, tol=1e-3) gives the same
    predictions, several times slower (`python -m qat.bench probe` measures both).
    Returns (weight (D, K), bias (K,), mean (D,), scale (D,))."""
    feats = torch.as_tensor(x, dtype=torch.float32)
    mean = feats.mean(0)
    scale = feats.std(0, unbiased=False)
    scale[scale == 0] = 1.0  # as StandardScaler: a constant feature is only centred
    feats = (feats - mean) / scale
    target = torch.as_tensor(y, dtype=torch.long)
    weight = torch.zeros(feats.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    solver = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=tol,
                               tolerance_change=0.0, line_search_fn="strong_wolfe")  # fmt: skip
    penalty = 1.0 / (2.0 * c * len(target))

    def objective():
        solver.zero_grad()
        loss = F.cross_entropy(feats @ weight + bias, target) + penalty * (weight * weight).sum()
        loss.backward()
        return loss

    solver.step(objective)
    return weight.detach(), bias.detach(), mean, scale
