"""VGG16 (real and quaternion) and RH-emo: shapes, taps, truncation, parameter counts, errors."""

import math

import pytest
import torch
from torch import nn

from qat.models import RHEmo, vgg16
from qat.nn import (
    QuaternionBatchNorm2d,
    QuaternionConv2d,
    QuaternionLinear,
    QuaternionTransposeConv2d,
)

WIDTH = 1 / 8
# VGG16 conv widths at width 1/8 (round(c/8) to a multiple of 4), stage of each conv.
WIDTHS = [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
STAGES = [1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
TAPS = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)  # fmt: skip
HIDDEN = 512  # round(4096 / 8)


def _model(quaternion, in_channels=None, **kw):
    channels = in_channels or (4 if quaternion else 1)
    torch.manual_seed(0)
    return vgg16(5, in_channels=channels, quaternion=quaternion, width=WIDTH, **kw)


def _count(module):
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- VGG16


@pytest.mark.parametrize("quaternion", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (64, 48), (128, 128)])
def test_vgg16_logits_and_tap_shapes(quaternion, size):
    model = _model(quaternion).eval()
    assert model.taps == TAPS and model.quaternion is quaternion
    captured = {}
    for tap in (*TAPS, "penultimate"):
        model.tap_module(tap).register_forward_hook(
            lambda _m, _i, out, tap=tap: captured.__setitem__(tap, out)
        )
    x = torch.randn(2, model.in_channels, *size)
    assert model(x).shape == (2, 5)
    h, w = size
    for tap, channels, stage in zip(TAPS, WIDTHS, STAGES, strict=True):
        scale = 2 ** (stage - 1)
        assert captured[tap].shape == (2, channels, h // scale, w // scale), tap
    assert captured["penultimate"].shape == (2, HIDDEN)


@pytest.mark.parametrize("quaternion", [False, True])
def test_truncated_network_returns_the_hooked_tap_activation(quaternion):
    model = _model(quaternion).eval()
    x = torch.randn(2, model.in_channels, 40, 36)
    captured = {}
    for tap in (*TAPS, "penultimate"):
        model.tap_module(tap).register_forward_hook(
            lambda _m, _i, out, tap=tap: captured.__setitem__(tap, out)
        )
    with torch.no_grad():
        model(x)
        # The truncated fronts share the hooked modules, so their runs re-fire the hooks:
        # compare against a snapshot of the full forward's activations.
        full = dict(captured)
        for tap in (*TAPS, "penultimate"):
            front = model.truncated(tap)(x)
            assert front is not full[tap]
            torch.testing.assert_close(front, full[tap], rtol=0, atol=0)


def test_truncated_network_shares_parameters_and_stops_at_the_tap():
    model = _model(False)
    front = model.truncated("conv2_1")
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    front_params = list(front.parameters())
    assert front_params and all(p.data_ptr() in model_ptrs for p in front_params)
    names = [name for name, _ in front.layers.named_children()]
    assert names == ["conv1_1", "conv1_2", "pool1", "conv2_1"]
    with torch.no_grad():
        model.features.conv1_1.conv.weight.mul_(2)  # a change in the model shows in the front
    assert torch.equal(front.layers.conv1_1.conv.weight, model.features.conv1_1.conv.weight)


@pytest.mark.parametrize("quaternion", [False, True])
def test_embed_feeds_the_real_classifier(quaternion):
    model = _model(quaternion).eval()
    x = torch.randn(3, model.in_channels, 32, 48)
    with torch.no_grad():
        features = model.embed(x)
        assert features.shape == (3, HIDDEN)
        torch.testing.assert_close(model.head.classifier(features), model(x))
    assert type(model.head.classifier) is nn.Linear


def test_quaternion_vgg16_uses_quaternion_layers_except_the_classifier():
    model = _model(True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | QuaternionConv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | QuaternionBatchNorm2d)]
    assert len(convs) == 13 and all(isinstance(m, QuaternionConv2d) for m in convs)
    assert len(bns) == 13 and all(isinstance(m, QuaternionBatchNorm2d) for m in bns)
    assert isinstance(model.head.fc1.linear, QuaternionLinear)
    assert isinstance(model.head.penultimate.linear, QuaternionLinear)
    real = _model(False, in_channels=4)
    assert not any(
        isinstance(m, QuaternionConv2d | QuaternionBatchNorm2d | QuaternionLinear)
        for m in real.modules()
    )


def test_quaternion_vgg16_has_about_a_quarter_of_the_parameters():
    real, quat = _model(False, in_channels=4), _model(True, in_channels=4)
    pairs = list(zip([4, *WIDTHS[:-1]], WIDTHS, strict=True))
    classifier = HIDDEN * 5 + 5
    # real: bias-free 3x3 convs, BN (weight + bias), two hidden linears with bias
    expected_real = sum(9 * a * b + 2 * b for a, b in pairs)
    expected_real += 64 * HIDDEN + HIDDEN + HIDDEN * HIDDEN + HIDDEN + classifier
    # quaternion: a quarter of every conv/linear weight, BN gamma (C/4) + beta (C), full biases
    expected_quat = sum(9 * a * b // 4 + b // 4 + b for a, b in pairs)
    expected_quat += 64 * HIDDEN // 4 + HIDDEN + HIDDEN * HIDDEN // 4 + HIDDEN + classifier
    assert _count(real) == expected_real == 529_669
    assert _count(quat) == expected_quat == 135_505
    assert _count(quat) / _count(real) == pytest.approx(0.2558, abs=1e-4)


def test_width_and_hidden_rounding():
    model = vgg16(3, width=0.3)  # 64*0.3 = 19.2 -> 20, 512*0.3 = 153.6 -> 152
    assert model.features.conv1_1.conv.out_channels == 20
    assert model.features.conv5_3.conv.out_channels == 152
    assert model.hidden == 1228  # round(4096 * 0.3 / 4) * 4
    assert vgg16(3, width=0.01).features.conv1_1.conv.out_channels == 4  # never below 4
    assert vgg16(3, width=WIDTH, hidden=20).embed(torch.randn(1, 1, 32, 32)).shape == (1, 20)


def test_vgg16_without_batch_norm_has_conv_bias_and_no_bn():
    model = vgg16(2, width=WIDTH, batch_norm=False)
    block = model.features.conv1_1
    assert [name for name, _ in block.named_children()] == ["conv", "relu"]
    assert block.conv.bias is not None
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2)


def test_vgg16_rejects_bad_arguments_and_inputs():
    model = _model(False)
    with pytest.raises(ValueError, match=r"input shape \(2, 3, 64, 64\).*\(B, 1, H, W\)"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"input shape \(2, 1, 31, 64\).*at least 32x32"):
        model(torch.randn(2, 1, 31, 64))
    with pytest.raises(ValueError, match="at least 32x32"):
        model.truncated("conv1_1")(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"tap='conv6_1'.*conv1_1, conv1_2.*conv5_3, penultimate"):
        model.tap_module("conv6_1")
    with pytest.raises(ValueError, match="tap='fc'"):
        model.truncated("fc")
    with pytest.raises(ValueError, match="width=0"):
        vgg16(5, width=0)
    with pytest.raises(ValueError, match="width=-1"):
        vgg16(5, width=-1.0)
    with pytest.raises(ValueError, match="num_classes=0"):
        vgg16(0)
    with pytest.raises(ValueError, match="in_channels=1 with quaternion=True"):
        vgg16(5, in_channels=1, quaternion=True)
    with pytest.raises(ValueError, match="hidden=30"):
        vgg16(5, in_channels=4, quaternion=True, hidden=30)
    with pytest.raises(ValueError, match=r"dropout=1\.5"):
        vgg16(5, dropout=1.5)


# --------------------------------------------------------------------------- RH-emo


def test_rhemo_shapes_at_paper_size():
    torch.manual_seed(0)
    model = RHEmo(num_emotions=4)
    x = torch.randn(1, 1, 512, 128)
    out = model(x)
    assert set(out) == {"embedding", "reconstruction", "emotion", "valence", "arousal", "dominance"}
    assert out["embedding"].shape == (1, 4, 64, 64)
    assert out["reconstruction"].shape == (1, 4, 512, 128)
    assert out["reconstruction"].shape == RHEmo.reconstruction_target(x).shape
    assert out["emotion"].shape == (1, 4)
    for name in ("valence", "arousal", "dominance"):
        assert out[name].shape == (1, 2)


def test_rhemo_default_pools_on_square_input_and_custom_pools():
    torch.manual_seed(0)
    model = RHEmo(num_emotions=5)
    out = model(torch.randn(2, 1, 128, 128))
    assert out["embedding"].shape == (2, 4, 16, 64)
    assert out["reconstruction"].shape == (2, 4, 128, 128)
    assert out["emotion"].shape == (2, 5)
    small = RHEmo(3, pools=((2, 2), (2, 2), (1, 1)))
    assert small.encode(torch.randn(1, 1, 32, 16)).shape == (1, 4, 8, 4)


def test_rhemo_reconstruction_target_repeats_the_input_four_times():
    x = torch.randn(2, 1, 8, 8)
    target = RHEmo.reconstruction_target(x)
    assert target.shape == (2, 4, 8, 8)
    for c in range(4):
        assert torch.equal(target[:, c], x[:, 0])


def test_rhemo_heads_read_their_own_embedding_channel():
    torch.manual_seed(0)
    model = RHEmo(num_emotions=4).eval()
    z = torch.randn(2, 4, 16, 64)
    z_changed = z.clone()
    z_changed[:, 0] += 1.0  # only the emotion channel changes
    for name, channel in zip(RHEmo.HEADS, range(4), strict=True):
        a = model.heads[name](z[:, channel : channel + 1])
        b = model.heads[name](z_changed[:, channel : channel + 1])
        assert torch.equal(a, b) == (name != "emotion")


def test_rhemo_all_parameters_receive_gradients_and_encoder_is_small():
    torch.manual_seed(0)
    model = RHEmo(num_emotions=4)
    out = model(torch.randn(2, 1, 64, 32))
    sum(v.square().mean() for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    assert _count(model.encoder) < 5000
    encoder_convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in encoder_convs] == [(1, 2), (2, 4), (4, 4)]
    decoder_convs = [m for m in model.decoder.modules() if isinstance(m, QuaternionTransposeConv2d)]
    assert len(decoder_convs) == 3 and decoder_convs[-1].out_channels == 4


def test_rhemo_rejects_indivisible_input_and_bad_arguments():
    model = RHEmo(num_emotions=4)
    with pytest.raises(ValueError, match=r"input shape \(1, 1, 100, 128\).*multiple of 8"):
        model(torch.randn(1, 1, 100, 128))
    with pytest.raises(ValueError, match=r"F a multiple of 2"):
        model(torch.randn(1, 1, 128, 127))
    with pytest.raises(ValueError, match=r"\(B, 1, T, F\)"):
        model(torch.randn(1, 2, 128, 128))
    with pytest.raises(ValueError, match="pools="):
        RHEmo(4, pools=((2, 2), (2, 1)))
    with pytest.raises(ValueError, match="pools="):
        RHEmo(4, pools=((2, 0), (2, 1), (2, 1)))
    with pytest.raises(ValueError, match="num_emotions=0"):
        RHEmo(0)


def test_real_vgg_runs_channels_last_and_computes_what_the_default_layout_does():
    torch.manual_seed(0)
    net = vgg16(5, width=1 / 16).double().eval()
    x = torch.randn(3, 1, 40, 36, dtype=torch.float64)
    conv = net.features.conv2_1.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fast, tapped = net(x), net.truncated("conv3_2")(x)
    assert tapped.is_contiguous(memory_format=torch.channels_last)
    net.set_layout(torch.contiguous_format)
    assert net.features.conv2_1.conv.weight.is_contiguous()
    torch.testing.assert_close(fast, net(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tapped, net.truncated("conv3_2")(x), rtol=1e-10, atol=1e-12)
    quaternion = vgg16(5, in_channels=4, quaternion=True, width=1 / 16)
    assert quaternion.layout == torch.contiguous_format


def test_rhemo_encoders_build_their_channels_and_pools():
    from qat.models import ENCODERS

    profile_pools = ((2, 2), (2, 1), (1, 1))
    x = torch.randn(2, 1, 32, 16)
    for name, encoder in ENCODERS.items():
        net = encoder.build(3, profile_pools)
        pools = encoder.pools or profile_pools
        assert net.channels == encoder.channels and net.pools == tuple(map(tuple, pools)), name
        t = 32 // math.prod(p[0] for p in pools)
        f = 16 // math.prod(p[1] for p in pools)
        assert net.encode(x).shape == (2, 4, t, f), name
    assert ENCODERS["uncompressed"].describe() == "1 -> 2 -> 4 -> 4, pools (2, 1),(1, 1),(1, 1)"
