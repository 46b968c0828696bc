"""Models: VGG16 (real and quaternion, one builder) with named anti-transfer taps, and RH-emo.

VGG16 follows Simonyan & Zisserman's configuration D with batch norm, adapted to spectrograms:
a global average pool before the classifier so any input of at least 32x32 works, and widths
scalable by `width` so CPU runs stay small. The real and the quaternion network come from the
same cfg list and differ only in the layer factory.

Taps: each 3x3 conv block is an nn.Sequential(conv, bn, relu) named "conv{stage}_{index}"; its
output is the tap the AT loss compares. `tap_module(name)` returns the module to hook,
`truncated(name)` a network that stops there (what the frozen orthogonal network runs).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from qat.nn import (
    QuaternionBatchNorm2d,
    QuaternionConv2d,
    QuaternionLinear,
    QuaternionTransposeConv2d,
)

__all__ = ["VGG", "VGG16_CFG", "VGG16_TAPS", "RHEmo", "vgg16"]

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

PENULTIMATE = "penultimate"


def _conv_names(cfg) -> tuple[str, ...]:
    """ "conv<block>_<index>" for every conv of a cfg list; "M" (a pool) ends a block."""
    names, block, index = [], 1, 0
    for item in cfg:
        if item == "M":
            block, index = block + 1, 0
        else:
            index += 1
            names.append(f"conv{block}_{index}")
    return tuple(names)


VGG16_TAPS = _conv_names(VGG16_CFG)  # the 13 anti-transfer taps, in order


# --------------------------------------------------------------------------- layer factory


class _LayerFactory(NamedTuple):
    """Constructors with matching signatures, so the builder never branches on the domain."""

    conv3x3: Callable[[int, int, bool], nn.Module]  # (in_channels, out_channels, bias)
    batch_norm: Callable[[int], nn.Module]  # (num_channels)
    linear: Callable[[int, int], nn.Module]  # (in_features, out_features)


def _real_conv3x3(in_channels: int, out_channels: int, bias: bool) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
    # He init, as the quaternion convs use, so real vs quaternion compares layers, not inits.
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def _real_linear(in_features: int, out_features: int) -> nn.Module:
    linear = nn.Linear(in_features, out_features)
    nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(linear.bias)
    return linear


def _quaternion_conv3x3(in_channels: int, out_channels: int, bias: bool) -> nn.Module:
    return QuaternionConv2d(in_channels, out_channels, 3, padding=1, bias=bias, init="he")


def _quaternion_linear(in_features: int, out_features: int) -> nn.Module:
    return QuaternionLinear(in_features, out_features, init="he")


def _layer_factory(quaternion: bool) -> _LayerFactory:
    if quaternion:
        return _LayerFactory(_quaternion_conv3x3, QuaternionBatchNorm2d, _quaternion_linear)
    return _LayerFactory(_real_conv3x3, nn.BatchNorm2d, _real_linear)


def _scaled_width(channels: int, width: float) -> int:
    """round(channels * width) to the nearest multiple of 4, at least 4 (a whole quaternion)."""
    return max(4, 4 * round(channels * width / 4))


# --------------------------------------------------------------------------- VGG


def _check_image_input(x: Tensor, in_channels: int, min_size: int, who: str) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{who}: input shape {tuple(x.shape)}: expected (B, {in_channels}, H, W) with "
            f"in_channels={in_channels}"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{who}: input shape {tuple(x.shape)}: spatial size must be at least "
            f"{min_size}x{min_size} (one pixel left after every max-pool)"
        )


# The real VGG16 keeps its activations and conv weights channels-last: oneDNN's CPU
# convolutions run faster in that layout (`python -m qat.bench layout` measures both side by
# side). The quaternion one showed no consistent gain there and keeps the default layout.
REAL_LAYOUT = torch.channels_last


class TruncatedVGG(nn.Module):
    """The front of a VGG up to and including one tap; shares the parent's modules (no copy),
    so putting it in eval mode also puts those modules of the parent in eval mode."""

    def __init__(
        self,
        layers: nn.Sequential,
        tap: str,
        in_channels: int,
        min_size: int,
        layout: torch.memory_format,
    ) -> None:
        super().__init__()
        self.layers = layers
        self.tap = tap
        self.in_channels = in_channels
        self.min_size = min_size
        self.layout = layout

    def forward(self, x: Tensor) -> Tensor:
        _check_image_input(x, self.in_channels, self.min_size, f"TruncatedVGG({self.tap})")
        return self.layers(x.contiguous(memory_format=self.layout))


class VGG(nn.Module):
    """A VGG built from a cfg list (ints = 3x3 conv widths, "M" = 2x2 max-pool).

    Children: `features` (conv blocks "conv1_1", ... and pools "pool1", ...) and `head`
    (avgpool, flatten, fc1, penultimate, classifier). Only the final classifier is always real.
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int,
        in_channels: int = 1,
        quaternion: bool = False,
        width: float = 1.0,
        batch_norm: bool = True,
        hidden: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_vgg_args(num_classes, in_channels, quaternion, width, hidden, dropout)
        if hidden is None:
            hidden = _scaled_width(4096, width)
        layers = _layer_factory(quaternion)
        self.cfg = tuple(cfg)
        self.quaternion = quaternion
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.hidden = hidden

        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        self.taps = _conv_names(self.cfg)
        names = iter(self.taps)
        channels, stage = in_channels, 1
        for item in self.cfg:
            if item == "M":
                blocks[f"pool{stage}"] = nn.MaxPool2d(2)
                stage += 1
                continue
            out = _scaled_width(int(item), width)
            # With batch norm right after, a conv bias is redundant (BN's beta absorbs it).
            block = [("conv", layers.conv3x3(channels, out, not batch_norm))]
            if batch_norm:
                block.append(("bn", layers.batch_norm(out)))
            block.append(("relu", nn.ReLU()))
            blocks[next(names)] = nn.Sequential(OrderedDict(block))
            channels = out
        self.features = nn.Sequential(blocks)
        self.min_size = 2 ** self.cfg.count("M")

        self.head = nn.Sequential(
            OrderedDict(
                avgpool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                fc1=_hidden_block(layers.linear(channels, hidden), dropout),
                penultimate=_hidden_block(layers.linear(hidden, hidden), dropout),
                classifier=nn.Linear(hidden, num_classes),
            )
        )

        self.set_layout(torch.contiguous_format if quaternion else REAL_LAYOUT)

    def set_layout(self, layout: torch.memory_format) -> VGG:
        """Keep conv weights and activations in `layout` (channels_last or contiguous_format)."""
        self.layout = layout
        return self.to(memory_format=layout)

    def forward(self, x: Tensor) -> Tensor:
        _check_image_input(x, self.in_channels, self.min_size, "VGG")
        return self.head(self.features(x.contiguous(memory_format=self.layout)))

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features (B, hidden): the input of the final real classifier."""
        _check_image_input(x, self.in_channels, self.min_size, "VGG.embed")
        h = self.features(x.contiguous(memory_format=self.layout))
        for name, module in self.head.named_children():
            if name == "classifier":
                break
            h = module(h)
        return h

    def tap_module(self, name: str) -> nn.Module:
        """The module whose forward output is the tap `name` (a conv block or "penultimate")."""
        self._check_tap(name)
        if name == PENULTIMATE:
            return self.head.penultimate
        return getattr(self.features, name)

    def truncated(self, tap: str) -> TruncatedVGG:
        """A module running this network up to `tap` and returning the tap activation.
        Shares parameters with this network (no copy)."""
        self._check_tap(tap)
        front: list[tuple[str, nn.Module]] = []
        for name, module in self.features.named_children():
            front.append((name, module))
            if name == tap:
                break
        if tap == PENULTIMATE:
            for name, module in self.head.named_children():
                front.append((name, module))
                if name == PENULTIMATE:
                    break
        layers = nn.Sequential(OrderedDict(front))
        return TruncatedVGG(layers, tap, self.in_channels, self.min_size, self.layout)

    def _check_tap(self, name: str) -> None:
        valid = (*self.taps, PENULTIMATE)
        if name not in valid:
            raise ValueError(f"tap={name!r}: expected one of {', '.join(valid)}")


def _hidden_block(linear: nn.Module, dropout: float) -> nn.Sequential:
    return nn.Sequential(OrderedDict(linear=linear, relu=nn.ReLU(), dropout=nn.Dropout(dropout)))


def _check_vgg_args(
    num_classes: int,
    in_channels: int,
    quaternion: bool,
    width: float,
    hidden: int | None,
    dropout: float,
) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: expected an int >= 1")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels={in_channels!r}: expected an int >= 1")
    if quaternion and in_channels % 4:
        raise ValueError(
            f"in_channels={in_channels} with quaternion=True: expected a multiple of 4 "
            "(r|i|j|k blocks, e.g. the 4-channel RH-emo embedding)"
        )
    if not isinstance(width, int | float) or not 0 < width < math.inf:
        raise ValueError(f"width={width!r}: expected a finite number > 0")
    if hidden is not None and (
        not isinstance(hidden, int) or hidden < 1 or (quaternion and hidden % 4)
    ):
        need = "a positive multiple of 4 (quaternion=True)" if quaternion else "a positive int"
        raise ValueError(f"hidden={hidden!r}: expected {need}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r}: expected a probability in [0, 1)")


def vgg16(
    num_classes: int,
    in_channels: int = 1,
    quaternion: bool = False,
    width: float = 1.0,
    batch_norm: bool = True,
    hidden: int | None = None,
    dropout: float = 0.5,
) -> VGG:
    """VGG16 (13 conv taps "conv1_1" ... "conv5_3"), real or quaternion.

    Channel widths are round(c * width) to a multiple of 4 (min 4); `hidden` (the two hidden
    fully connected layers) defaults to round(4096 * width), also a multiple of 4. The
    quaternion network makes every conv, batch norm and hidden linear layer quaternion (about
    1/4 of the parameters at the same real widths) and keeps the final classifier real.
    """
    return VGG(VGG16_CFG, num_classes, in_channels, quaternion, width, batch_norm, hidden, dropout)


# --------------------------------------------------------------------------- RH-emo


class Encoder(NamedTuple):
    """An RH-emo encoder: its channels (input first) and pools (None: the profile's)."""

    channels: tuple[int, ...]
    pools: tuple[tuple[int, int], ...] | None = None

    def build(self, num_emotions: int, profile_pools) -> RHEmo:
        """An untrained RH-emo with this encoder (pools: its own, else `profile_pools`)."""
        return RHEmo(num_emotions, pools=self.pools or profile_pools, channels=self.channels)

    def describe(self) -> str:
        pools = "" if self.pools is None else ", pools " + ",".join(map(str, self.pools))
        return " -> ".join(map(str, self.channels)) + pools


# RH-emo's encoders, diagnosed in reports/instrument.md (section 7): as published; wider; and
# the published channels without its compression (pools (2,1),(1,1),(1,1)).
ENCODERS = {
    "published": Encoder((1, 2, 4, 4)),
    "wide": Encoder((1, 8, 16, 4)),
    "uncompressed": Encoder((1, 2, 4, 4), pools=((2, 1), (1, 1), (1, 1))),
}
ENCODER_CHANNELS = ENCODERS["published"].channels


class RHEmo(nn.Module):
    """RH-emo (Guizzo et al., TASLP 2023): real spectrogram (B, 1, T, F) -> quaternion
    embedding (B, 4, T', F'), trained to reconstruct the input and to predict emotion and
    valence/arousal/dominance, one embedding channel (quaternion component) per task.

    - encoder (real): three 3x3 conv + BN + ReLU + max-pool blocks, 1 -> 2 -> 4 -> 4 channels
      (`channels`); with the default pools a 512x128 spectrogram becomes 4x64x64.
    - decoder (quaternion): transposed convs that undo each pool (kernel 3, stride = the pool),
      4 -> `decoder_channels` -> `decoder_channels` -> 4 real channels. It reads the whole
      quaternion and outputs one quaternion per pixel whose FOUR components each reconstruct
      the spectrogram: the reconstruction target is the input repeated 4x along channels
      (`RHEmo.reconstruction_target`).
    - heads (real, one per embedding channel): channel 0 -> categorical emotion logits
      (num_emotions), 1 -> valence, 2 -> arousal, 3 -> dominance, each of the last three a
      2-class logit (low/high, the paper's binarisation of the ratings).
    """

    HEADS = ("emotion", "valence", "arousal", "dominance")

    def __init__(
        self,
        num_emotions: int,
        pools: Sequence[Sequence[int]] = ((2, 2), (2, 1), (2, 1)),
        hidden: int = 16,
        decoder_channels: int = 8,
        channels: Sequence[int] = ENCODER_CHANNELS,
    ) -> None:
        super().__init__()
        if not isinstance(num_emotions, int) or num_emotions < 1:
            raise ValueError(f"num_emotions={num_emotions!r}: expected an int >= 1")
        self.pools = _check_pools(pools)
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden={hidden!r}: expected a positive int")
        if not isinstance(decoder_channels, int) or decoder_channels < 4 or decoder_channels % 4:
            raise ValueError(f"decoder_channels={decoder_channels!r}: expected a multiple of 4")
        channels = tuple(channels)
        if (len(channels) != 4 or channels[0] != 1 or channels[-1] != 4
                or not all(isinstance(c, int) and c >= 1 for c in channels)):  # fmt: skip
            raise ValueError(
                f"channels={channels!r}: expected four positive ints 1, a, b, 4 (the encoder "
                "reads one spectrogram channel and writes one quaternion)"
            )
        self.num_emotions = num_emotions
        self.channels = channels
        self.encoder = _rhemo_encoder(self.pools, channels)
        self.decoder = _rhemo_decoder(self.pools, decoder_channels)
        out_sizes = {"emotion": num_emotions, "valence": 2, "arousal": 2, "dominance": 2}
        self.heads = nn.ModuleDict(
            {name: _rhemo_head(hidden, out_sizes[name]) for name in self.HEADS}
        )

    @property
    def divisor(self) -> tuple[int, int]:
        """What T and F must be multiples of: the product of the pools along each axis."""
        t = f = 1
        for pt, pf in self.pools:
            t, f = t * pt, f * pf
        return t, f

    def encode(self, x: Tensor) -> Tensor:
        """(B, 1, T, F) spectrogram -> (B, 4, T', F') quaternion embedding (r|i|j|k channels)."""
        dt, df = self.divisor
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] % dt or x.shape[3] % df or 0 in x.shape:
            raise ValueError(
                f"RHEmo: input shape {tuple(x.shape)}: expected (B, 1, T, F) with T a multiple "
                f"of {dt} and F a multiple of {df} (pools={self.pools})"
            )
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """(B, 4, T', F') embedding -> (B, 4, T, F): four reconstructions of the input."""
        return self.decoder(z)

    @staticmethod
    def reconstruction_target(x: Tensor) -> Tensor:
        """The input repeated 4x along channels (a broadcast view), matching `decode`'s output."""
        return x.expand(-1, 4, -1, -1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.encode(x)
        out = {"embedding": z, "reconstruction": self.decode(z)}
        for channel, name in enumerate(self.HEADS):
            out[name] = self.heads[name](z[:, channel : channel + 1])
        return out


def _check_pools(pools: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    error = ValueError(
        f"pools={pools!r}: expected three (time, frequency) pairs of positive ints, "
        "one per encoder block"
    )
    try:
        parsed = tuple(tuple(pair) for pair in pools)
    except TypeError:
        raise error from None
    if len(parsed) != 3 or any(
        len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair) for pair in parsed
    ):
        raise error
    return parsed  # type: ignore[return-value]


def _rhemo_encoder(pools: tuple[tuple[int, int], ...], channels: tuple[int, ...]) -> nn.Sequential:
    blocks = OrderedDict()
    for n, pool in enumerate(pools):
        blocks[f"block{n + 1}"] = nn.Sequential(
            nn.Conv2d(channels[n], channels[n + 1], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[n + 1]),
            nn.ReLU(),
            nn.MaxPool2d(pool),
        )
    return nn.Sequential(blocks)


def _rhemo_decoder(pools: tuple[tuple[int, int], ...], width: int) -> nn.Sequential:
    channels = (4, width, width, 4)
    layers: list[nn.Module] = []
    for n, pool in enumerate(reversed(pools)):
        last = n == len(pools) - 1
        # kernel 3, padding 1, output_padding = stride - 1 maps size s to exactly s * stride.
        layers.append(
            QuaternionTransposeConv2d(
                channels[n],
                channels[n + 1],
                3,
                stride=pool,
                padding=1,
                output_padding=(pool[0] - 1, pool[1] - 1),
                bias=last,
            )
        )
        if not last:
            layers += [QuaternionBatchNorm2d(channels[n + 1]), nn.ReLU()]
    return nn.Sequential(*layers)


def _rhemo_head(hidden: int, num_outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(hidden, num_outputs),
    )
