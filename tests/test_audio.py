"""Audio that must not pass for what it is not: a dead microphone's constant offset is silence,
channels that cancel in the mono mix are an error naming the file, and the one resampler."""

import math

import numpy as np
import pytest
import soundfile as sf

from qat.data.audio import AudioError, is_near_silent, load_audio, resample
from qat.data.features import FeatureConfig, extract_features
from qat.data.records import Utterance

SR = 16000


def speech_like(n=SR, seed=0, amplitude=0.3):
    """A loud, zero-mean test signal: a 220 Hz tone under a slow envelope, plus some noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    tone = np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t / t[-1])
    return amplitude * (0.9 * tone + 0.1 * rng.uniform(-1, 1, n))


@pytest.mark.parametrize("offset", [0.5, -0.25, 0.002])
def test_a_constant_offset_is_silence(offset):
    dead = np.full(SR, offset)  # a dead microphone on a biased input
    assert is_near_silent(dead)
    assert is_near_silent(dead + np.random.default_rng(0).uniform(-2e-4, 2e-4, SR))
    assert not is_near_silent(dead + speech_like())  # speech on an offset is still speech
    click = dead.copy()
    click[SR // 2] += 0.01  # one short sound on the offset is not silence either
    assert not is_near_silent(click)


def test_a_dead_microphone_file_is_flagged_silent_by_feature_extraction(tmp_path):
    paths = [tmp_path / "dead.wav", tmp_path / "speech.wav"]
    sf.write(paths[0], np.full(8000, 0.4), 8000, subtype="PCM_16")
    sf.write(paths[1], speech_like(8000), 8000, subtype="PCM_16")
    records = [Utterance(str(p), "t", "sad", "s", "w") for p in paths]
    config = FeatureConfig(sample_rate=8000, segment_seconds=0.5)
    feats = extract_features(records, config, tmp_path / "cache", workers=1, progress=False)
    assert feats.silent.tolist() == [True, False]


def write_stereo(path, left, right):
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")


@pytest.mark.parametrize("gain", [1.0, 0.9])
def test_channels_that_cancel_in_the_mix_are_an_error_naming_the_file(tmp_path, gain):
    y = speech_like()
    path = tmp_path / "anti-phase.wav"
    write_stereo(path, y, -gain * y)
    with pytest.raises(AudioError, match=r"anti-phase\.wav: its 2 channels cancel.*polarity"):
        load_audio(path)
    records = [Utterance(str(path), "t", "angry", "s", "w")]
    with pytest.raises(AudioError, match=r"anti-phase\.wav"):  # never dropped as silent
        extract_features(records, FeatureConfig(), tmp_path / "cache", workers=1, progress=False)


@pytest.mark.parametrize(
    ("name", "right"),
    [
        ("in phase", lambda y: 0.5 * y),
        ("one live channel", lambda y: np.zeros_like(y)),
        ("independent channels", lambda y: speech_like(len(y), seed=1)),
        ("partly inverted", lambda y: -0.5 * y),  # the mix is 12 dB down: kept
    ],
)
def test_stereo_that_does_not_cancel_is_the_channel_mean(tmp_path, name, right):
    left = speech_like()
    path = tmp_path / "stereo.wav"
    write_stereo(path, left, right(left))
    expected = (left.astype(np.float32) + right(left).astype(np.float32)) / 2
    np.testing.assert_allclose(load_audio(path), expected, atol=1e-7)


def test_silent_stereo_is_not_an_error(tmp_path):
    path = tmp_path / "quiet.wav"
    noise = np.random.default_rng(0).uniform(-1e-4, 1e-4, SR)
    write_stereo(path, noise, -noise)  # cancels, but there is nothing to lose
    assert is_near_silent(load_audio(path))


@pytest.mark.parametrize(("orig", "target", "n"), [(22050, 16000, 11025), (8000, 16000, 2001)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resample_matches_an_analytic_sine_and_keeps_the_dtype(orig, target, n, dtype):
    y = (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / orig)).astype(dtype)
    out = resample(y, orig, target)
    assert out.dtype == dtype and len(out) == math.ceil(n * target / orig)
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(out)) / target)
    middle = slice(300, len(out) - 300)
    np.testing.assert_allclose(out[middle], expected[middle], atol=2e-3)
    assert resample(y, orig, orig) is y
