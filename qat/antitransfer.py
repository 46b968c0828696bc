"""Anti-transfer (AT): penalise similarity to a frozen network trained on an orthogonal task.

    L = CE(y, f(x)) + beta * AT(F_L(x), P_L(x))

F_L is the activation of the network being trained at tap L, P_L that of the frozen
orthogonal network (word or speaker recognition) at the same tap. Two AT values exist:

- ``distance="cos2"``, the published term (Guizzo et al., Neural Networks 2021): Gram
  matrices over channels, G(F) = F_flat F_flat^T / (H W), then the squared mean absolute
  cosine similarity between matching Gram rows. ``gram="sample"`` builds one (C, C) Gram per
  item (batch-independent, cacheable, the default); ``gram="batch"`` folds batch and
  channels into one (B*C, B*C) Gram as the published code does (cross-sample terms).
- ``distance="cka"``, linear CKA (Kornblith et al., ICML 2019) between the flattened
  activations. Row i of one Gram matrix is only comparable with row i of the other if the
  two networks' channels correspond, which two independently trained networks' do not;
  CKA is invariant to channel permutations (and to width), so it measures shared
  information rather than channel alignment.

:class:`AntiTransfer` avoids the published implementation's defects: the trained model's
taps are captured by hooks during its ONE normal forward, the frozen network runs truncated
at the deepest tap, in eval mode, under no_grad, and beta is left to the caller (applied once).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

GRAM_MODES = ("sample", "batch")
DISTANCES = ("cos2", "cka")
PENULTIMATE = "penultimate"

# Gram rows (and CKA kernels) whose norm is below this count as zero: a dead channel (all-zero
# Gram row) then contributes a cosine of 0 instead of 0/0 = NaN, and its gradient is 0. The AT
# paths normalise each item's Gram (the batch's, for gram="batch" and CKA) to a largest entry
# near 1 first, so there the threshold is relative and does not depend on the scale.
_EPS = 1e-12
# CKA: a batch whose centred activations are this close to zero, relative to the activations
# themselves (in units of the compute dtype's epsilon), has no variation to compare: what is
# left after centring is the rounding error of the mean, and the CKA value is 0 (no signal).
_CKA_ROUNDING = 64


def _check_choice(value: object, name: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _as_4d(act: Tensor, name: str) -> Tensor:
    """View (B, D) features as (B, D, 1, 1) so penultimate features share the conv formulas."""
    if not isinstance(act, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(act).__name__}")
    if act.ndim == 2:
        return act[:, :, None, None]
    if act.ndim == 4:
        return act
    raise ValueError(
        f"{name} must be a (B, C, H, W) activation or (B, D) features, got shape {tuple(act.shape)}"
    )


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype the AT terms are computed in: float64 stays float64, anything else (float16
    and bfloat16 activations under mixed precision, float32) is computed in float32, whose
    range holds the normalised Gram products of any input."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


@contextmanager
def _autocast_off() -> Iterator[None]:
    """Autocast (bf16/fp16 mixed precision) switched off where it is on: it would run the Gram
    and CKA products in the low precision even on float32 copies of their inputs."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _in_float32(function):
    """`function` computed outside autocast: the AT terms stay in float32 (float64 for float64
    inputs) under mixed precision, whatever dtype the activations come in."""

    @functools.wraps(function)
    def outside_autocast(*args, **kwargs):
        with _autocast_off():
            return function(*args, **kwargs)

    return outside_autocast


def _pow2_scale(peak: Tensor) -> Tensor:
    """A power of two s with peak * s in [0.5, 1), elementwise (s = 1 for a peak of 0).

    Multiplying by a power of two never rounds, so normalising by s changes nothing but the
    exponent: the AT values of x and 2^k x are bitwise equal. The exponent is clamped to the
    dtype's normal range, so s is always finite and non-zero.
    """
    info = torch.finfo(peak.dtype)
    lowest, highest = math.log2(info.tiny), math.floor(math.log2(info.max))
    exponent = torch.floor(torch.log2(peak)).clamp(lowest, highest)
    exponent = torch.where(peak > 0, exponent, torch.full_like(exponent, -1.0))
    return torch.exp2(-exponent - 1)


def _peak(rows: Tensor) -> Tensor:
    """max |x| along the last dim (keepdim), in two reductions without an abs() copy."""
    return torch.maximum(rows.amax(dim=-1, keepdim=True), -rows.amin(dim=-1, keepdim=True))


# A Gram (or CKA kernel) product is exact to float32 rounding when its largest diagonal
# entry (the largest squared norm it sums) is finite and at least 2^-80: no partial sum
# overflowed and no product that matters fell below float32's normal range (2^-126). That is
# the case for activations between about 1e-12 and 1e17, and then the product is formed from
# the activations as they are and normalised afterwards, on the small (C, C) or (B, B)
# result: no copy of the activation, no pass over it. Otherwise (extreme scales) it is
# recomputed from activations divided by a power of two near their largest value.
_SMALLEST_ACCURATE = 2.0**-80


def _diagonal_peak(square: Tensor) -> Tensor:
    """The largest diagonal entry of each (..., N, N) matrix, shaped (..., 1, 1)."""
    diagonal = square.detach().diagonal(dim1=-2, dim2=-1)
    return diagonal.amax(dim=-1, keepdim=True).unsqueeze(-1)


def _accurate(peak: Tensor) -> bool:
    """Whether products whose largest diagonal entries are `peak` can be trusted (see above);
    an all-zero item is exact."""
    ok = torch.isfinite(peak) & ((peak == 0) | (peak >= _SMALLEST_ACCURATE))
    return bool(ok.all())


def _require_items(what: str, **tensors: Tensor) -> None:
    """An AT value needs at least one item with at least one element: say which is empty."""
    for name, tensor in tensors.items():
        if tensor.ndim == 0 or tensor.shape[0] == 0:
            shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in tensors.items())
            raise ValueError(
                f"{what} needs a non-empty batch, got batch size 0 ({shapes}); an AT value "
                "over no items is undefined: skip the term for an empty batch"
            )
        if tensor.numel() == 0:
            raise ValueError(
                f"{what}: {name} of shape {tuple(tensor.shape)} has no elements (a zero-sized "
                "channel or spatial dimension)"
            )


def _normalised(square: Tensor) -> Tensor:
    """Each (..., N, N) Gram or kernel divided by a power of two near its largest diagonal
    entry (a Gram's largest entry), so that its entries are at most 1 in magnitude: the row
    directions are unchanged and no norm of a row can overflow or underflow. A Gram already
    normalised so is returned as it is (all its scales are exactly 1)."""
    scale = _pow2_scale(_diagonal_peak(square))
    return square if bool((scale == 1).all()) else square * scale


def _inverse_norms(rows: Tensor) -> Tensor:
    """1 / the norm of each row (last dim) of a normalised Gram (entries at most about 1), and
    0 for rows of norm below _EPS: they have no direction and count as a cosine of 0."""
    norm = torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
    return torch.where(norm < _EPS, torch.zeros_like(norm), 1 / norm.clamp_min(_EPS))


class _ScaledGram(torch.autograd.Function):
    """G = post * (pre F)(pre F)^T for F of shape (..., N, P), computed in post's dtype.

    ``pre`` (None, or broadcastable to (..., 1, 1)) scales the activation before the product,
    ``post`` (broadcastable to (..., 1, 1)) the Gram after it; neither gets a gradient. A
    custom function so that only F itself (alive anyway: it is the tap activation) is saved
    for backward, never a scaled or float32 copy, and the backward makes one product,
    (dG + dG^T) F, where autograd's would make two.
    """

    @staticmethod
    @_in_float32
    def forward(ctx, flat: Tensor, pre: Tensor | None, post: Tensor) -> Tensor:
        x = flat.to(post.dtype)
        if pre is not None:
            x = x * pre
        ctx.save_for_backward(flat, pre, post)
        return (x @ x.transpose(-1, -2)).mul_(post)

    @staticmethod
    @_in_float32
    def backward(ctx, grad: Tensor):
        flat, pre, post = ctx.saved_tensors
        x = flat.to(post.dtype)
        if pre is not None:
            x = x * pre
        grad_x = ((grad + grad.transpose(-1, -2)) * post) @ x
        if pre is not None:
            grad_x = grad_x * pre
        return grad_x.to(flat.dtype), None, None


@_in_float32
def gram_matrix(act: Tensor, mode: str = "sample", normalize: bool = False) -> Tensor:
    """Channel Gram matrix of an activation, normalised by the number of positions H*W.

    ``mode="sample"``: (B, C, C), one Gram per item. ``mode="batch"``: (B*C, B*C), the
    activation reshaped to (B*C, H*W) first, as in the published code. (B, D) features are
    treated as (B, D, 1, 1). Computed in float32 (float64 for float64 input).

    ``normalize=True`` divides each item's Gram (sample) or the whole batch's (batch) by a
    power of two near its largest diagonal entry; for activations of extreme scale (where
    the product itself would overflow or underflow float32) the activation is divided by a
    power of two near its largest value before the product instead. The Gram rows keep their
    directions, so every cosine is unchanged, but the entries lie in [-1, 1] whatever the
    activations' scale (1e20, 1e-20, float16 inputs included). The AT terms use this form.
    """
    _check_choice(mode, "gram", GRAM_MODES)
    act = _as_4d(act, "act")
    _require_items("gram_matrix", act=act)
    batch, channels, height, width = act.shape
    positions = height * width
    dtype = _compute_dtype(act)
    rows = batch if mode == "sample" else 1  # the items normalised separately
    flat = (
        act.reshape(batch, channels, positions) if mode == "sample" else act.reshape(-1, positions)
    )
    inverse_positions = torch.full(
        (1,) * flat.ndim, 1.0 / positions, dtype=dtype, device=act.device
    )
    gram = _ScaledGram.apply(flat, None, inverse_positions)
    if not normalize:
        return gram
    peak = _diagonal_peak(gram)  # the largest mean square of a channel: >= max|act|^2 / (H*W)
    if _accurate(peak):
        return gram * _pow2_scale(peak)
    peak = _peak(act.detach().reshape(rows, -1).to(dtype)).reshape((-1,) + (1,) * (flat.ndim - 1))
    return _ScaledGram.apply(flat, _pow2_scale(peak), inverse_positions)


@_in_float32
def cos2_from_grams(g_cur: Tensor, g_pre: Tensor) -> Tensor:
    """The published AT value from two Gram matrices: (mean_rows |cos(row_cur, row_pre)|)^2.

    Takes Grams rather than activations so that the frozen side's per-sample Grams can be
    cached. Rows are the last dimension; every row of every item counts once in the mean.
    Computed in float32 (float64 for float64 input), each item's Gram divided by a power of
    two near its largest diagonal entry first, so the value of any finite Grams lies in [0, 1]
    and does not depend on their scale (the row norms cannot overflow or underflow).
    """
    if g_cur.shape != g_pre.shape:
        raise ValueError(
            f"Gram matrices must have the same shape, got current {tuple(g_cur.shape)} and "
            f"pretrained {tuple(g_pre.shape)}"
        )
    _require_items("cos2_from_grams", current=g_cur, pretrained=g_pre)
    dtype = torch.promote_types(_compute_dtype(g_cur), _compute_dtype(g_pre))
    current, pretrained = _normalised(g_cur.to(dtype)), _normalised(g_pre.to(dtype))
    # cos = <u, v> / (|u| |v|), as one product of the rows and two (B, C, 1) factors.
    cosine = (current * pretrained).sum(dim=-1, keepdim=True)
    return (cosine * _inverse_norms(current) * _inverse_norms(pretrained)).abs().mean() ** 2


def _norm(vector: Tensor) -> Tensor:
    """The Euclidean norm of a whole tensor, without overflow or underflow in the squares."""
    scale = _pow2_scale(_peak(vector.reshape(1, -1))).squeeze()
    return torch.linalg.vector_norm(vector * scale) / scale


def _kernel(features: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The linear kernel K = X X^T of (B, D) features centred over the batch, divided by a
    power of two near its largest entry (CKA is invariant to a common scale of X, not to
    per-item scales), and whether the batch varies at all.

    The centring and the product use the features as they are, and only K (B x B) is
    rescaled, unless the product over- or underflowed (see _accurate): then the features are
    scaled before centring (so the mean's sum stays finite) and again after it (so that
    small variations around a large offset reach unit range before the product).
    """
    x = features.to(dtype)
    mean = x.mean(dim=0, keepdim=True)
    centred = x - mean
    kernel = centred @ centred.T
    peak = _diagonal_peak(kernel)  # the largest squared norm of a centred item
    if _accurate(peak):
        # The largest centred item against the size of the items themselves (at most
        # ||mean|| + that): what the mean's rounding leaves behind is no signal.
        spread = peak.sqrt().squeeze()
        varies = spread > _CKA_ROUNDING * torch.finfo(dtype).eps * (_norm(mean.detach()) + spread)
        return kernel * _pow2_scale(peak), varies
    raw_peak = _peak(x.detach().reshape(1, -1))
    x = x * _pow2_scale(raw_peak)
    x = x - x.mean(dim=0, keepdim=True)
    centred_peak = _peak(x.detach().reshape(1, -1))
    varies = (centred_peak > _CKA_ROUNDING * torch.finfo(dtype).eps).squeeze()
    x = x * _pow2_scale(centred_peak)
    return _normalised(x @ x.T), varies


@_in_float32
def _linear_cka(current: Tensor, pretrained: Tensor) -> Tensor:
    """Linear CKA in the B x B kernel form, which costs O(B^2 D) instead of O(D^2).

    With column-centred X (B, Dx) and Y (B, Dy): K = X X^T, L = Y Y^T and
    CKA = <K, L>_F / (||K||_F ||L||_F). A batch of one item (or of identical items) has no
    variance to compare and gives 0 (no signal) rather than NaN. X and Y are normalised
    before (or, in the safe range, right after) the kernel products and computed in float32
    (float64 for float64 input), so the value does not depend on the activations' scale.
    """
    _require_items("cka", current=current, pretrained=pretrained)
    if current.shape[0] != pretrained.shape[0]:
        raise ValueError(
            f"cka needs the same batch size on both sides, got current {current.shape[0]} and "
            f"pretrained {pretrained.shape[0]}"
        )
    dtype = torch.promote_types(_compute_dtype(current), _compute_dtype(pretrained))
    k, k_varies = _kernel(current.reshape(current.shape[0], -1), dtype)
    ell, ell_varies = _kernel(pretrained.reshape(pretrained.shape[0], -1), dtype)
    k, ell = k.reshape(1, -1), ell.reshape(1, -1)
    cka = (k * ell).sum() * _inverse_norms(k) * _inverse_norms(ell)
    return cka.squeeze() * (k_varies & ell_varies)


_DIM_NAMES = {2: ("B", "D"), 4: ("B", "C", "H", "W")}


def _require_same_shape(current: Tensor, pretrained: Tensor) -> None:
    """cos2 compares channel i with channel i: shapes must agree, say which dims do not."""
    if current.shape == pretrained.shape:
        return
    if current.ndim != pretrained.ndim:
        raise ValueError(
            f"distance='cos2' needs activations of the same shape, got current "
            f"{tuple(current.shape)} and pretrained {tuple(pretrained.shape)} (different ranks)"
        )
    names = _DIM_NAMES[current.ndim]
    differing = ", ".join(
        f"{names[i]} (dim {i}): {a} vs {b}"
        for i, (a, b) in enumerate(zip(current.shape, pretrained.shape, strict=True))
        if a != b
    )
    raise ValueError(
        f"distance='cos2' needs activations of the same shape, got current "
        f"{tuple(current.shape)} and pretrained {tuple(pretrained.shape)}; differing: "
        f"{differing}"
    )


def at_loss(
    current: Tensor, pretrained: Tensor, gram: str = "sample", distance: str = "cos2"
) -> Tensor:
    """The AT value (without beta) for two (B, C, H, W) activations or (B, D) features.

    Both distances lie in [0, 1] and equal 1 for identical inputs; minimising them pushes
    the trained network's representation away from the orthogonal one. ``gram`` is used by
    ``distance="cos2"`` only. For cos2 the shapes must match; for cka only the batch size
    must (channel counts and spatial sizes may differ). An empty batch is a ValueError.

    Computed in float32 (float64 for float64 inputs) whatever the activations' dtype, with
    each Gram (or CKA kernel) normalised by a power of two, so float16 activations under mixed
    precision and activations of any scale (1e-20 to 1e20) give the value of the formula;
    the result is float32 (float64 for float64 inputs).
    """
    _check_choice(gram, "gram", GRAM_MODES)
    _check_choice(distance, "distance", DISTANCES)
    current_4d = _as_4d(current, "current")
    pretrained_4d = _as_4d(pretrained, "pretrained")
    _require_items("at_loss", current=current_4d, pretrained=pretrained_4d)
    if distance == "cka":
        return _linear_cka(current_4d, pretrained_4d)
    _require_same_shape(current, pretrained)
    return cos2_from_grams(
        gram_matrix(current_4d, gram, normalize=True),
        gram_matrix(pretrained_4d, gram, normalize=True),
    )


def _ordered_taps(network: nn.Module) -> list[str]:
    """All tap names of a qat model, shallow to deep; the penultimate features come last."""
    for attribute in ("taps", "tap_module", "truncated"):
        if not hasattr(network, attribute):
            raise ValueError(
                f"the orthogonal network ({type(network).__name__}) has no {attribute!r}: "
                "expected a qat.models network exposing taps, tap_module() and truncated()"
            )
    return [*network.taps, PENULTIMATE]


def _validate_taps(taps: str | Sequence[str], valid: list[str]) -> tuple[str, ...]:
    if not isinstance(taps, str | list | tuple):
        raise ValueError(
            f"taps={taps!r}: expected a tap name or a list of them; valid taps: {valid}"
        )
    chosen = (taps,) if isinstance(taps, str) else tuple(taps)
    if not chosen:
        raise ValueError(f"taps must name at least one tap, valid taps: {valid}")
    unknown = [t for t in chosen if t not in valid]
    if unknown:
        raise ValueError(f"unknown tap(s) {unknown}; valid taps: {valid}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"taps must not repeat (the AT value sums over taps), got {list(chosen)}")
    return chosen


def _output_width(module: nn.Module) -> int | None:
    """Channel count a tap block emits, read from its last layer that declares one."""
    for layer in reversed(list(module.modules())):
        for attribute in ("out_channels", "out_features", "num_features", "num_channels"):
            value = getattr(layer, attribute, None)
            if isinstance(value, int):
                return value
    return None


@contextmanager
def capture(model: nn.Module, taps: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Collect a model's tap activations during its own forward pass.

    Yields a dict filled by forward hooks on ``model.tap_module(tap)``; the activations keep
    their autograd graph, so a loss on them back-propagates into the model. A second forward
    inside the same block raises (the published code ran the model twice). Hooks are removed
    on exit.
    """
    captured: dict[str, Tensor] = {}
    handles = []
    try:
        for tap in taps:
            handles.append(
                model.tap_module(tap).register_forward_hook(_capture_hook(captured, tap))
            )
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _capture_hook(store: dict[str, Tensor], tap: str):
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if not isinstance(output, Tensor):
            raise ValueError(
                f"tap {tap!r}: the tap module returned {type(output).__name__}, expected a Tensor"
            )
        if tap in store:
            raise RuntimeError(
                f"tap {tap!r} was captured twice inside one capture() block: the model ran "
                "a second forward; compute logits and taps in one pass"
            )
        store[tap] = output

    return hook


class AntiTransfer:
    """The frozen orthogonal network and the AT term between it and a trained model.

    Typical training step (one forward of the trained model, beta applied once)::

        at = AntiTransfer(word_net, taps="conv2_1")
        at.check_compatible(model)
        with at.capture(model) as taps:
            logits = model(x)
        loss = ce(logits, y) + beta * at.term(taps, x, keys=indices)

    The orthogonal network is deep-copied, frozen (requires_grad False) and kept in eval
    mode; it is deliberately not an ``nn.Module`` attribute of anything trainable, so a
    parent's ``.train()`` cannot reach it, and :meth:`term` re-asserts eval mode anyway.
    With several taps the AT value is the sum over taps.

    Cache (``cache_budget_mb > 0``): with ``keys`` (dataset positions) passed to
    :meth:`term`, the frozen side's per-sample Grams (cos2, gram="sample") or tap features
    (cka) are kept per key, so later epochs skip the frozen forward for cached items. The
    cache is only valid when an item's input is the same at every epoch: do not use it with
    random augmentation, random crops or changing normalisation. Once the budget is full,
    new items are recomputed every time and nothing is evicted (eviction would thrash on
    shuffled epochs). ``gram="batch"`` cannot be cached: its Gram mixes items of one batch.
    """

    def __init__(
        self,
        orthogonal: nn.Module,
        taps: str | Sequence[str],
        distance: str = "cos2",
        gram: str = "sample",
        cache_budget_mb: float = 0,
    ) -> None:
        _check_choice(distance, "distance", DISTANCES)
        _check_choice(gram, "gram", GRAM_MODES)
        ordered = _ordered_taps(orthogonal)
        self.taps = _validate_taps(taps, ordered)
        if (
            isinstance(cache_budget_mb, bool)
            or not isinstance(cache_budget_mb, int | float)
            or not 0 <= cache_budget_mb < math.inf
        ):
            raise ValueError(f"cache_budget_mb must be >= 0, got {cache_budget_mb!r}")
        if cache_budget_mb > 0 and distance == "cos2" and gram == "batch":
            raise ValueError(
                "cache_budget_mb > 0 with gram='batch': the batch Gram mixes the items of a "
                "batch (cross-sample terms), so it depends on which items share a batch and "
                "cannot be stored per item; use gram='sample' or cache_budget_mb=0"
            )
        self.distance = distance
        self.gram = gram
        self._frozen = copy.deepcopy(orthogonal)
        self._frozen.requires_grad_(False)
        self._frozen.eval()
        deepest = max(self.taps, key=ordered.index)
        self._runner = self._frozen.truncated(deepest)
        self._budget_bytes = int(cache_budget_mb * 2**20)
        self.clear_cache()

    @property
    def orthogonal(self) -> nn.Module:
        """The frozen copy of the orthogonal network (for inspection; do not train it)."""
        return self._frozen

    # ----------------------------------------------------------------- cache bookkeeping
    def clear_cache(self) -> None:
        """Drop every cached entry and reset the hit/miss counters."""
        self._cache: dict[int, tuple[Tensor, ...]] = {}
        self._cache_bytes = 0
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def cache_stats(self) -> dict[str, int]:
        """Per-item hits and misses since the last clear, entries and bytes held, budget."""
        return {
            "hits": self.cache_hits,
            "misses": self.cache_misses,
            "entries": len(self._cache),
            "bytes": self._cache_bytes,
            "budget_bytes": self._budget_bytes,
        }

    # ------------------------------------------------------------------------- checks
    def check_compatible(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Raise ValueError listing every difference that makes AT between them meaningless.

        Checks the number system (real vs quaternion), that each tap exists in ``model`` and,
        for cos2, the channel count at each tap (read from the tap block's layers). With an
        ``example`` input batch it also runs both networks (eval, no_grad) and compares the
        actual tap shapes.
        """
        problems = []
        model_q = bool(getattr(model, "quaternion", False))
        frozen_q = bool(getattr(self._frozen, "quaternion", False))
        if model_q != frozen_q:
            kinds = {True: "quaternion", False: "real"}
            problems.append(
                f"the trained model is {kinds[model_q]}, the orthogonal network is "
                f"{kinds[frozen_q]}"
            )
        present = []
        for tap in self.taps:
            try:
                module = model.tap_module(tap)
            except (ValueError, KeyError, AttributeError) as error:
                problems.append(f"tap {tap!r}: not available in the trained model ({error})")
                continue
            present.append(tap)
            if self.distance == "cos2":
                ours = _output_width(module)
                theirs = _output_width(self._frozen.tap_module(tap))
                if ours is not None and theirs is not None and ours != theirs:
                    problems.append(
                        f"tap {tap!r}: {ours} channels in the trained model vs {theirs} in the "
                        "orthogonal network (cos2 compares Gram rows channel by channel; "
                        "distance='cka' allows different widths)"
                    )
        if example is not None and present:
            problems += self._compare_shapes(model, example, present)
        if problems:
            raise ValueError(
                "trained model and orthogonal network do not match for anti-transfer:\n  "
                + "\n  ".join(problems)
            )

    def _compare_shapes(self, model: nn.Module, example: Tensor, taps: list[str]) -> list[str]:
        """Run both networks on ``example`` and report tap shapes that cos2/cka cannot pair."""
        frozen = self._frozen_activations(example)
        was_training = model.training
        model.eval()
        problems = []
        try:
            with torch.no_grad():
                for tap in taps:
                    ours = tuple(model.truncated(tap)(example).shape)
                    theirs = tuple(frozen[tap].shape)
                    bad = ours != theirs if self.distance == "cos2" else ours[0] != theirs[0]
                    if bad:
                        problems.append(
                            f"tap {tap!r}: activation shape {ours} in the trained model vs "
                            f"{theirs} in the orthogonal network"
                        )
        finally:
            model.train(was_training)
        return problems

    # ------------------------------------------------------------------ trained side
    def capture(self, model: nn.Module):
        """`capture(model, self.taps)`: the trained model's taps during its own forward."""
        return capture(model, self.taps)

    # ------------------------------------------------------------------- frozen side
    def _frozen_activations(self, x: Tensor) -> dict[str, Tensor]:
        """All requested taps of the frozen network in one truncated, no_grad, eval pass."""
        self._frozen.eval()  # in case anyone switched the copy to train mode
        self._move_to(x.device)
        with capture(self._frozen, self.taps) as store, torch.no_grad():
            self._runner(x)
        missing = [tap for tap in self.taps if tap not in store]
        if missing:
            raise RuntimeError(
                f"the truncated orthogonal network never ran tap_module({missing}): its "
                "truncated() must reuse the tap modules"
            )
        return store

    def _move_to(self, device: torch.device) -> None:
        parameter = next(self._frozen.parameters(), None)
        if parameter is not None and parameter.device != device:
            self._frozen.to(device)

    def _represent(self, act: Tensor) -> Tensor:
        """What the AT value needs from the frozen side, per item where possible."""
        if self.distance == "cka":
            return act.reshape(act.shape[0], -1)
        if self.gram == "sample":
            return gram_matrix(act, "sample", normalize=True)
        return act

    def _frozen_representations(self, x: Tensor) -> dict[str, Tensor]:
        activations = self._frozen_activations(x)
        return {tap: self._represent(activations[tap]) for tap in self.taps}

    def _cached_representations(self, x: Tensor, keys: Tensor) -> dict[str, Tensor]:
        """Frozen-side representations, running the frozen net only on uncached items.

        Valid because the frozen network is in eval mode: each item's output does not
        depend on the other items of the batch.
        """
        key_list = _validate_keys(keys, x.shape[0])
        missing = [i for i, key in enumerate(key_list) if key not in self._cache]
        self.cache_misses += len(missing)
        self.cache_hits += len(key_list) - len(missing)
        computed = self._frozen_representations(x[missing]) if missing else {}
        fresh: dict[int, tuple[Tensor, ...]] = {}
        for row, i in enumerate(missing):
            entry = tuple(computed[tap][row] for tap in self.taps)
            fresh[key_list[i]] = entry
            self._store(key_list[i], entry)
        rows = [fresh[key] if key in fresh else self._cache[key] for key in key_list]
        return {
            tap: torch.stack([row[t].to(x.device) for row in rows])
            for t, tap in enumerate(self.taps)
        }

    def _store(self, key: int, entry: tuple[Tensor, ...]) -> None:
        """Keep ``entry`` if it fits in the budget; a full cache stays as it is."""
        if key in self._cache:
            return
        size = sum(part.numel() * part.element_size() for part in entry)
        if self._cache_bytes + size > self._budget_bytes:
            return
        # clone: a row view would keep its whole batch tensor alive and break the budget.
        self._cache[key] = tuple(part.clone() for part in entry)
        self._cache_bytes += size

    # -------------------------------------------------------------------------- term
    def targets(self, x: Tensor, keys: Tensor | None = None) -> dict[str, Tensor]:
        """The frozen side for a batch: per-tap Grams (or features for CKA), from the cache
        when ``keys`` (a 1-D integer tensor of dataset positions) are given and it is on.
        Computing them BEFORE the trained network's forward keeps the frozen activations out
        of the step's peak memory (they are gone before the trained side's are saved)."""
        _require_items("AntiTransfer.targets", x=x)
        if keys is not None and self._budget_bytes > 0:
            return self._cached_representations(x, keys)
        return self._frozen_representations(x)

    def term(
        self,
        captured: dict[str, Tensor],
        x: Tensor | None = None,
        keys: Tensor | None = None,
        targets: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """The AT value summed over taps, without beta (the caller multiplies by beta once).

        ``captured`` comes from :meth:`capture`; pass either ``targets`` (from
        :meth:`targets`, computed before the forward) or the batch ``x`` the model saw (and
        optionally its ``keys``).
        """
        missing = [tap for tap in self.taps if tap not in captured]
        if missing:
            raise ValueError(
                f"captured has no activation for tap(s) {missing} (has {sorted(captured)}): "
                "run the model's forward inside AntiTransfer.capture(model)"
            )
        for tap in self.taps:
            _require_items(f"AntiTransfer.term at tap {tap!r}", current=captured[tap])
        frozen = targets if targets is not None else self.targets(x, keys)
        values = [self._tap_value(captured[tap], frozen[tap]) for tap in self.taps]
        return torch.stack(values).sum()

    def _tap_value(self, current: Tensor, frozen: Tensor) -> Tensor:
        if self.distance == "cka":
            return _linear_cka(_as_4d(current, "current"), frozen)
        if self.gram == "sample":
            return cos2_from_grams(gram_matrix(current, "sample", normalize=True), frozen)
        return at_loss(current, frozen, gram="batch", distance="cos2")


def _validate_keys(keys: Tensor, batch_size: int) -> list[int]:
    """Dataset positions as Python ints, one per item of the batch."""
    if not isinstance(keys, Tensor) or keys.ndim != 1 or keys.dtype.is_floating_point:
        got = f"{keys.dtype} of shape {tuple(keys.shape)}" if isinstance(keys, Tensor) else keys
        raise ValueError(f"keys must be a 1-D integer tensor of dataset positions, got {got!r}")
    if keys.shape[0] != batch_size:
        raise ValueError(f"keys has {keys.shape[0]} entries but the batch has {batch_size} items")
    return keys.tolist()


def init_from(model: nn.Module, orthogonal: nn.Module) -> list[str]:
    """Copy the orthogonal network's weights into ``model`` where name and shape match.

    The published "dual" variant starts the SER network from the orthogonal one; the
    classifier heads differ in size and are skipped. Buffers (BatchNorm running statistics)
    are copied along with their weights. Returns the copied state-dict names.
    """
    target = model.state_dict()
    copied = []
    with torch.no_grad():
        for name, value in orthogonal.state_dict().items():
            if name in target and target[name].shape == value.shape:
                target[name].copy_(value)  # state_dict tensors share storage with the model
                copied.append(name)
    if not copied:
        raise ValueError(
            f"init_from: no parameter of the orthogonal network ({type(orthogonal).__name__}) "
            f"matches the model ({type(model).__name__}) in name and shape"
        )
    return copied
