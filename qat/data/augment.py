"""Gain and noise augmentation of training batches, in the feature domain (the run setting
`augment`).

The training items are cached features normalised by one global normaliser, so a batch is
augmented where it lies, without going back to the audio:

- gain: a waveform scaled by g dB has its power scaled by 10**(g/10) in every STFT and mel bin.
  Log-mel features (log(max(mel power, log_floor))) move by the constant g * ln(10) / 10, and
  normalised ones ((raw - mean_b) / std_b) by g * ln(10) / (10 * std_b) in bin b. The shift is
  exact wherever the mel power is above the floor before and after the gain; entries at the
  floor (digital silence, the padding around a short utterance) stay there, and an entry the
  gain lowers past the floor stops at it, as compute_features would give. (An entry below the
  floor that a positive gain would lift above it, i.e. mel power in (floor / 10**(g/10),
  floor), is left at the floor: such power is digital silence in practice.) Linear STFT and
  uncompressed features are scaled in their power domain instead, which is as exact.
- noise: noise is added in the features' power domain (mel power, or STFT magnitude squared),
  then the features are recompressed. This approximates adding noise to the waveform: it drops
  the cross term between signal and noise in each STFT bin (zero on average) and the noise's
  own spectral shape is flat in the power domain with exponentially distributed entries (the
  periodogram of white Gaussian noise, mel weighting ignored). What it guarantees exactly is
  the SNR in that power domain: the item's total feature power (every frame and bin, the
  padding included) over the added noise's total is 10**(snr/10).

Ranges are module constants; every draw comes from a generator the training loop seeds from
the run's seed and the epoch (qat.train.fit), so runs are reproducible and resume on the same
path. Validation and test items are never augmented: fit applies this to training batches only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # annotations only: reading the settings (qat.config) imports no librosa
    from qat.data.dataset import Normalizer
    from qat.data.features import FeatureConfig

AUGMENTS = ("none", "gain", "gain+noise")
GAIN_DB = 12.0  # gain drawn uniformly in [-GAIN_DB, GAIN_DB] dB per item
SNR_DB = (5.0, 30.0)  # "gain+noise": SNR drawn uniformly in this range (dB) per noised item
NOISE_PROBABILITY = 0.5  # "gain+noise": share of the items that get noise (the others: gain only)
# What a run's record key holds of the ranges (with the mode): editing one reruns its runs.
RANGES = {"gain_db": GAIN_DB, "snr_db": list(SNR_DB), "noise_probability": NOISE_PROBABILITY}
FLOOR_TOLERANCE = 1e-3  # log units: a log-mel entry this close to log(log_floor) is at the floor

DB_TO_NEPER_POWER = math.log(10) / 10  # ln of the power ratio per dB


def gain_shift(normalizer: Normalizer, gain_db) -> torch.Tensor:
    """The per-bin shift of normalised log-mel features that a waveform gain of `gain_db`
    dB makes (above the floor): gain_db * ln(10) / 10 / std_b. `gain_db` a number or an (N,)
    tensor; the result is (bins,) or (N, bins), float64."""
    std = torch.as_tensor(normalizer.std, dtype=torch.float64)
    gain = torch.as_tensor(gain_db, dtype=torch.float64)
    return gain[..., None] * DB_TO_NEPER_POWER / std


class Augmenter:
    """The `augment` setting applied to a batch of normalised features.

    mode: "gain" (each item scaled by a gain drawn uniformly in +-GAIN_DB dB) or "gain+noise"
    (the gain, then, for a NOISE_PROBABILITY share of the items, noise at an SNR drawn uniformly
    in SNR_DB); config: the features' FeatureConfig; normalizer: the run's training
    normaliser. `augmenter(x, generator)` draws and applies; `draw` and `apply` split the two
    (the tests check each)."""

    def __init__(self, mode: str, config: FeatureConfig, normalizer: Normalizer):
        if mode not in AUGMENTS or mode == "none":
            raise ValueError(f"augment={mode!r}: expected one of {', '.join(AUGMENTS[1:])}")
        self.mode, self.config, self.normalizer = mode, config, normalizer
        self.mean = torch.as_tensor(normalizer.mean, dtype=torch.float64)
        self.std = torch.as_tensor(normalizer.std, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        gains, snrs = self.draw(len(x), generator)
        return self.apply(x, gains, snrs, generator)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(gains in dB, SNRs in dB, NaN where an item gets no noise) for n items."""
        gains = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * GAIN_DB
        snrs = torch.full((n,), math.nan, dtype=torch.float64)
        if self.mode == "gain+noise":
            low, high = SNR_DB
            drawn = low + torch.rand(n, generator=generator, dtype=torch.float64) * (high - low)
            noised = torch.rand(n, generator=generator, dtype=torch.float64) < NOISE_PROBABILITY
            snrs = torch.where(noised, drawn, snrs)
        return gains, snrs

    def apply(self, x: torch.Tensor, gains_db, snrs_db=None, generator=None) -> torch.Tensor:
        """x (N, ..., bins) normalised features with each item's gain (dB) and, where its SNR
        (dB) is not NaN, noise at that SNR; same shape and dtype as x."""
        shape = (len(x),) + (1,) * (x.dim() - 1)
        raw = x.double() * self.std + self.mean
        gains = torch.as_tensor(gains_db, dtype=torch.float64)
        if self._log_mel:
            log_floor = math.log(self.config.log_floor)
            at_floor = raw <= log_floor + FLOOR_TOLERANCE
            shifted = (raw + gains.reshape(shape) * DB_TO_NEPER_POWER).clamp_min(log_floor)
            raw = torch.where(at_floor, raw, shifted)
        else:
            raw = self._from_power(self._to_power(raw) * 10 ** (gains.reshape(shape) / 10))
        if snrs_db is not None:
            snrs = torch.as_tensor(snrs_db, dtype=torch.float64)
            noised = ~torch.isnan(snrs)
            if noised.any():
                power = self._to_power(raw[noised])
                noisy = add_noise(power, snrs[noised], generator)
                raw[noised] = self._from_power(noisy)
        return ((raw - self.mean) / self.std).to(x.dtype)

    @property
    def _log_mel(self) -> bool:
        return self.config.kind == "logmel" and self.config.compression == "log"

    def _to_power(self, raw: torch.Tensor) -> torch.Tensor:
        """The features' power: mel power, or STFT magnitude squared."""
        c = self.config
        if c.kind == "logmel":
            return raw.exp() if c.compression == "log" else raw.clamp_min(0)
        magnitude = raw.expm1() if c.compression == "log" else raw
        return magnitude.clamp_min(0) ** 2

    def _from_power(self, power: torch.Tensor) -> torch.Tensor:
        """Features from their power, as compute_features compresses them."""
        c = self.config
        if c.kind == "logmel":
            return power.clamp_min(c.log_floor).log() if c.compression == "log" else power
        magnitude = power.sqrt()
        return magnitude.log1p() if c.compression == "log" else magnitude


def add_noise(power: torch.Tensor, snr_db, generator: torch.Generator | None) -> torch.Tensor:
    """`power` (N, ...: each item's feature power, non-negative) plus noise at `snr_db` (a
    number or (N,)) per item: exponentially distributed entries scaled so that, for every item,
    sum(power) / sum(noise) == 10**(snr_db / 10) exactly (up to rounding). An item of zero
    power gets no noise."""
    n = len(power)
    snr = torch.as_tensor(snr_db, dtype=torch.float64).expand(n)
    noise = torch.empty(power.shape, dtype=torch.float64).exponential_(generator=generator)
    dims = tuple(range(1, power.dim()))
    signal = power.double().sum(dim=dims)
    scale = signal / 10 ** (snr / 10) / noise.sum(dim=dims)
    return (power.double() + noise * scale.reshape((n,) + (1,) * (power.dim() - 1))).to(power.dtype)


def snr_db(clean_power, noisy_power) -> np.ndarray:
    """Per item: 10 log10(sum(clean) / sum(noisy - clean)), the SNR in the power domain (what
    add_noise guarantees); an independent measure for the tests and reports."""
    clean = np.asarray(clean_power, dtype=np.float64).reshape(len(clean_power), -1)
    noisy = np.asarray(noisy_power, dtype=np.float64).reshape(len(noisy_power), -1)
    return 10 * np.log10(clean.sum(1) / (noisy - clean).sum(1))
