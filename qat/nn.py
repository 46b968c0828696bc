"""Quaternion algebra and layers.

A quaternion layer holds one quaternion weight W = R + iI + jJ + kK per (input, output)
quaternion-channel pair and maps an input quaternion x to the Hamilton product W (x) x.
Writing that product as a real matrix acting on (x_r, x_i, x_j, x_k) gives the block weight

    [ R  -I  -J  -K ]     rows: output components r, i, j, k
    [ I   R  -K   J ]     columns: input components r, i, j, k
    [ J   K   R  -I ]
    [ K  -J   I   R ]

so every layer assembles that real weight once per call and makes ONE ordinary
F.conv2d / F.linear / F.conv_transpose2d call: the four components share their weights,
which is where the 1/4 parameter count comes from.

Channel layout everywhere: channel counts are REAL counts (multiples of 4), split into four
contiguous blocks r | i | j | k along dim 1 (the last dim for QuaternionLinear).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "QuaternionBatchNorm2d",
    "QuaternionConv2d",
    "QuaternionLinear",
    "QuaternionTransposeConv2d",
    "hamilton_product",
    "quaternion_block_weight",
    "quaternion_init_",
]

INIT_CRITERIA = ("glorot", "he")


# --------------------------------------------------------------------------- algebra


def hamilton_product(p: Tensor, q: Tensor, dim: int = -1) -> Tensor:
    """Hamilton product p (x) q of quaternions stored along axis `dim` (size 4, order r, i, j, k).

    The component axis is the trailing one by default; pass `dim=1` for (B, 4, ...) tensors.
    The other axes broadcast as in ordinary elementwise arithmetic.
    """
    if p.shape[dim] != 4 or q.shape[dim] != 4:
        raise ValueError(
            f"hamilton_product: p and q need size 4 along dim={dim} (components r, i, j, k), "
            f"got p.shape={tuple(p.shape)}, q.shape={tuple(q.shape)}"
        )
    a1, b1, c1, d1 = p.unbind(dim)
    a2, b2, c2, d2 = q.unbind(dim)
    r = a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2
    i = a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2
    j = a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2
    k = a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2
    return torch.stack((r, i, j, k), dim=dim)


def quaternion_block_weight(
    r: Tensor, i: Tensor, j: Tensor, k: Tensor, transposed: bool = False
) -> Tensor:
    """The real weight of the map x -> W (x) x, from the four component tensors of W.

    `transposed=False`: components of shape (out/4, in/4, *kernel) (conv / linear layout);
    returns (out, in, *kernel) with the block matrix of the module docstring.
    `transposed=True`: components of shape (in/4, out/4, *kernel) (conv_transpose layout);
    returns (in, out, *kernel), i.e. the same block matrix with block rows and columns swapped
    (each block keeps its own (in/4, out/4) orientation).

    Built with two levels of torch.cat (cheap next to the convolution; see
    qat/bench/layers.py for the measurement).
    """
    shapes = {tuple(t.shape) for t in (r, i, j, k)}
    if len(shapes) != 1:
        raise ValueError(
            "quaternion_block_weight: r, i, j, k must share one shape, got "
            f"{[tuple(t.shape) for t in (r, i, j, k)]}"
        )
    if r.dim() < 2:
        raise ValueError(
            f"quaternion_block_weight: components need at least 2 dims, got shape {tuple(r.shape)}"
        )
    ni, nj, nk = -i, -j, -k
    # rows[a][b]: block mapping input component b to output component a.
    rows = (
        (r, ni, nj, nk),
        (i, r, nk, j),
        (j, k, r, ni),
        (k, nj, i, r),
    )
    if transposed:
        rows = tuple(zip(*rows, strict=True))
    return torch.cat([torch.cat(row, dim=1) for row in rows], dim=0)


# --------------------------------------------------------------------------- init


def quaternion_init_(
    r: Tensor,
    i: Tensor,
    j: Tensor,
    k: Tensor,
    fan_in: int,
    fan_out: int,
    criterion: str = "glorot",
    generator: torch.Generator | None = None,
) -> None:
    """Parcollet et al.'s quaternion initialisation, in place and fully vectorised.

    Each weight w = |w| (cos(theta) + u sin(theta)) with
      |w| ~ sigma * chi(4 degrees of freedom),
      u   a unit pure quaternion uniform on the 2-sphere,
      theta ~ U(-pi, pi),
    sigma = 1/sqrt(2 (fan_in + fan_out)) ("glorot") or 1/sqrt(2 fan_in) ("he"), with fan counts
    in QUATERNION channels times the receptive field (kernel elements).

    Resulting variances (all means are 0): E|w|^2 = 4 sigma^2, split as
      Var(r) = 2 sigma^2 and Var(i) = Var(j) = Var(k) = 2 sigma^2 / 3.
    Each component fills 4 of the 16 blocks of the assembled real weight, so an entry of the
    real weight drawn at a uniformly random position has variance
      (2 + 3 * 2/3) sigma^2 / 4 = sigma^2,
    which is exactly the real-layer target: with real fans 4*fan_in and 4*fan_out,
    Glorot 2/(4 fan_in + 4 fan_out) = sigma^2 and He 2/(4 fan_in) = sigma^2.

    Draws from `generator` when given, else from the global RNG (so torch.manual_seed
    reproduces). Draws happen on the generator's device (CPU by default) and are copied into
    the parameters, so the same seed gives the same weights on any device.
    """
    if criterion not in INIT_CRITERIA:
        raise ValueError(f"criterion={criterion!r}: expected one of {INIT_CRITERIA}")
    for name, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
        if not isinstance(fan, int) or fan < 1:
            raise ValueError(f"{name}={fan!r}: expected a positive int")
    shapes = {tuple(t.shape) for t in (r, i, j, k)}
    if len(shapes) != 1:
        raise ValueError(
            "quaternion_init_: r, i, j, k must share one shape, got "
            f"{[tuple(t.shape) for t in (r, i, j, k)]}"
        )
    if criterion == "glorot":
        sigma = 1.0 / math.sqrt(2.0 * (fan_in + fan_out))
    else:
        sigma = 1.0 / math.sqrt(2.0 * fan_in)

    shape = r.shape
    device = generator.device if generator is not None else torch.device("cpu")
    opts = {"generator": generator, "device": device, "dtype": torch.float64}
    # chi(4) = norm of 4 iid standard normals; a normalised 3-d Gaussian is uniform on the sphere.
    modulus = sigma * torch.randn((4, *shape), **opts).norm(dim=0)
    axis = torch.randn((3, *shape), **opts)
    axis = axis / axis.norm(dim=0).clamp_min(1e-12)
    phase = (torch.rand(shape, **opts) * 2.0 - 1.0) * math.pi
    real = modulus * torch.cos(phase)
    imag = modulus * torch.sin(phase)
    with torch.no_grad():
        r.copy_(real)
        i.copy_(imag * axis[0])
        j.copy_(imag * axis[1])
        k.copy_(imag * axis[2])


# --------------------------------------------------------------------------- layers


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name}={value!r}: expected an int or a pair of ints")
    return pair  # type: ignore[return-value]


def _check_quaternion_count(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 4 or value % 4:
        raise ValueError(
            f"{name}={value!r}: expected a positive multiple of 4 (real channels, r|i|j|k blocks)"
        )


class _QuaternionWeights(nn.Module):
    """Four component parameters, their init, and the assembled real weight.

    Component shape: (out/4, in/4, *kernel), or (in/4, out/4, *kernel) when `transposed`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        bias: bool,
        init: str,
        generator: torch.Generator | None,
        transposed: bool = False,
        in_name: str = "in_channels",
        out_name: str = "out_channels",
    ) -> None:
        super().__init__()
        _check_quaternion_count(in_name, in_channels)
        _check_quaternion_count(out_name, out_channels)
        if init not in INIT_CRITERIA:
            raise ValueError(f"init={init!r}: expected one of {INIT_CRITERIA}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.transposed = transposed
        self.init = init
        q_in, q_out = in_channels // 4, out_channels // 4
        shape = (q_in, q_out) if transposed else (q_out, q_in)
        shape = (*shape, *kernel_size)
        self.r_weight = nn.Parameter(torch.empty(shape))
        self.i_weight = nn.Parameter(torch.empty(shape))
        self.j_weight = nn.Parameter(torch.empty(shape))
        self.k_weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        receptive_field = math.prod(self.r_weight.shape[2:])
        quaternion_init_(
            *self.components(),
            fan_in=(self.in_channels // 4) * receptive_field,
            fan_out=(self.out_channels // 4) * receptive_field,
            criterion=self.init,
            generator=generator,
        )
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def components(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.r_weight, self.i_weight, self.j_weight, self.k_weight)

    def block_weight(self) -> Tensor:
        """The real weight the forward pass uses (differentiable w.r.t. the components)."""
        return quaternion_block_weight(*self.components(), transposed=self.transposed)

    def _check_image_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: input shape {tuple(x.shape)}: expected "
                f"(B, {self.in_channels}, H, W), in_channels={self.in_channels} in r|i|j|k blocks"
            )


class QuaternionConv2d(_QuaternionWeights):
    """2-d quaternion convolution: out = W (*) x with Hamilton products, as ONE F.conv2d."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        bias: bool = True,
        dilation: int | Sequence[int] = 1,
        init: str = "he",
        generator: torch.Generator | None = None,
    ) -> None:
        kernel = _pair(kernel_size, "kernel_size")
        super().__init__(in_channels, out_channels, kernel, bias, init, generator)
        self.kernel_size = kernel
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")

    def forward(self, x: Tensor) -> Tensor:
        self._check_image_input(x)
        return F.conv2d(x, self.block_weight(), self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, init={self.init!r}"
        )


class QuaternionLinear(_QuaternionWeights):
    """Quaternion fully connected layer on (..., in_features); r|i|j|k blocks on the last dim."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: str = "glorot",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            (),
            bias,
            init,
            generator,
            in_name="in_features",
            out_name="out_features",
        )

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"QuaternionLinear: input shape {tuple(x.shape)}: expected last dim "
                f"in_features={self.in_features} (r|i|j|k blocks)"
            )
        return F.linear(x, self.block_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, init={self.init!r}"
        )


class QuaternionTransposeConv2d(_QuaternionWeights):
    """2-d quaternion transposed convolution (the adjoint-shaped upsampling layer), as ONE
    F.conv_transpose2d. Components have the conv_transpose layout (in/4, out/4, kh, kw); the
    quaternion map is still out = W (x) x summed over input channels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        output_padding: int | Sequence[int] = 0,
        bias: bool = True,
        dilation: int | Sequence[int] = 1,
        init: str = "he",
        generator: torch.Generator | None = None,
    ) -> None:
        kernel = _pair(kernel_size, "kernel_size")
        super().__init__(in_channels, out_channels, kernel, bias, init, generator, transposed=True)
        self.kernel_size = kernel
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.output_padding = _pair(output_padding, "output_padding")
        self.dilation = _pair(dilation, "dilation")
        for op, s, d in zip(self.output_padding, self.stride, self.dilation, strict=True):
            if op >= max(s, d):
                raise ValueError(
                    f"output_padding={self.output_padding}: each entry must be smaller than "
                    f"stride={self.stride} or dilation={self.dilation}"
                )

    def forward(self, x: Tensor) -> Tensor:
        self._check_image_input(x)
        return F.conv_transpose2d(
            x,
            self.block_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            1,
            self.dilation,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, "
            f"output_padding={self.output_padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, init={self.init!r}"
        )


class QuaternionBatchNorm2d(nn.Module):
    """Quaternion batch norm on (B, C, H, W), C = 4Q real channels in r|i|j|k blocks.

    Per quaternion channel: a mean per component, and ONE shared variance
    var = mean over (B, H, W) of |q - mu|^2 (the four squared components summed), so the
    normalised quaternion has zero mean per component and unit mean squared modulus; the
    quaternion's direction is not distorted the way four independent real BNs would.
    Then y = gamma * (q - mu) / sqrt(var + eps) + beta, gamma per quaternion channel (init 1,
    shape (Q,)), beta per component i.e. per real channel (init 0, shape (C,)).

    Running statistics (for eval) follow nn.BatchNorm2d: running = (1-momentum) * running
    + momentum * batch, with the variance made unbiased by n/(n-1), n = B*H*W. running_mean
    starts at 0 (shape (C,)) and running_var at 1 (shape (Q,)).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        _check_quaternion_count("num_channels", num_channels)
        if not eps > 0:
            raise ValueError(f"eps={eps!r}: expected a positive float")
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum={momentum!r}: expected a float in (0, 1]")
        self.num_channels = num_channels
        self.eps = eps
        self.momentum = momentum
        q = num_channels // 4
        self.gamma = nn.Parameter(torch.ones(q))
        self.beta = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(q))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"QuaternionBatchNorm2d: input shape {tuple(x.shape)}: expected "
                f"(B, {self.num_channels}, H, W) with num_channels={self.num_channels}"
            )
        b, c, h, w = x.shape
        q = c // 4
        xq = x.reshape(b, 4, q, h, w)
        if self.training:
            n = b * h * w
            if n < 2:
                raise ValueError(
                    f"QuaternionBatchNorm2d: input shape {tuple(x.shape)} gives one value per "
                    "channel in training mode; expected B*H*W >= 2"
                )
            mean = xq.mean(dim=(0, 3, 4))  # (4, Q)
            centered = xq - mean[None, :, :, None, None]
            var = centered.square().sum(dim=1).mean(dim=(0, 2, 3))  # (Q,)
            with torch.no_grad():
                self.running_mean.lerp_(mean.reshape(-1).to(self.running_mean), self.momentum)
                unbiased = var * (n / (n - 1))
                self.running_var.lerp_(unbiased.to(self.running_var), self.momentum)
        else:
            mean = self.running_mean.view(4, q)
            centered = xq - mean[None, :, :, None, None]
            var = self.running_var
        scale = self.gamma / torch.sqrt(var + self.eps)  # (Q,)
        out = centered * scale[None, None, :, None, None]
        out = out + self.beta.view(4, q)[None, :, :, None, None]
        return out.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}"
