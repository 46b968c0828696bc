"""The recording chain a model meets outside SynthEmo: a declared perturbation applied to a
waveform, reproducibly from a seed (issue 38).

The declared set, `PERTURBATIONS`: gain -20, -10 and +6 dB; additive white, pink and babble
noise at 20, 10 and 5 dB SNR; a simulated room at RT60 0.3 and 0.6 s; a round trip through
8 kHz. Every perturbation keeps the length, the sample rate and the dtype of its input.

Which library does what, and why:

- rooms: pyroomacoustics (`ShoeBox`, the image-source method in C++, with
  `inverse_sabine` for the walls' absorption as its documentation shows, and
  `experimental.measure_rt60` for the correction below). Hand-written image sources would
  be a second, untested room simulator.
- pink noise: colorednoise (`powerlaw_psd_gaussian`, Timmer and König's method, numpy
  only). audiomentations (`AddColorNoise`) would do it too, but it requires soxr < 1, and
  installing it would downgrade the soxr behind the kit's one resampler (and SynthEmo's
  bytes) under every run's feet.
- the 8 kHz round trip: qat.data.audio.resample, the kit's one resampler (libsoxr).
- gain, white noise, babble and mixing at an SNR are one line of numpy each; a library
  call would hide the definition the tests measure (SNR = the clean signal's mean power
  over the added noise's, over the whole utterance).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import colorednoise
import numpy as np
import pyroomacoustics as pra
from scipy.signal import fftconvolve

from qat.data.audio import is_near_silent, resample

NOISES = ("white", "pink", "babble")
KINDS = ("gain", *NOISES, "room", "narrowband")

# A living-room-sized shoebox, its sides varied by the seed. Sources and microphones keep
# 0.5 m from the walls and 1 m from each other, so the direct sound does not swamp the tail.
ROOM_SIDES_M = (4.5, 4.0, 3.2)
ROOM_JITTER = 0.1
WALL_CLEARANCE_M = 0.5
SOURCE_MIC_MIN_M = 1.0
# Sabine's inverse alone lands the image-source response's measured RT60 at 0.88-0.99 of
# 0.3 s and 0.99-1.11 of 0.6 s over 24 seeded rooms (ISM decay is not Sabine's diffuse
# field), so the absorption is corrected from the measured T30 until within this tolerance.
RT60_TOLERANCE = 0.03
RT60_CORRECTIONS = 5


def _signal(y) -> np.ndarray:
    x = np.asarray(y)
    if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"y: expected a non-empty 1-D float waveform, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("y: expected finite samples, got NaN or infinite ones")
    return x


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: expected a finite number")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive int")


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an int >= 0")
    return int(seed)


@dataclass(frozen=True)
class Perturbation:
    """One declared perturbation: `kind` (gain, white, pink, babble, room, narrowband) and its
    `value` (gain in dB, SNR in dB, RT60 in seconds, the round trip's rate in Hz)."""

    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {', '.join(KINDS)}")
        _finite("value", self.value)

    @property
    def name(self) -> str:
        """A short label: gain-10dB, gain+6dB, pink-5dB, rt60-0.6s, 8kHz."""
        if self.kind == "gain":
            return f"gain{self.value:+g}dB"
        if self.kind in NOISES:
            return f"{self.kind}-{self.value:g}dB"
        if self.kind == "room":
            return f"rt60-{self.value:g}s"
        return f"{self.value / 1000:g}kHz"


PERTURBATIONS: tuple[Perturbation, ...] = (
    *(Perturbation("gain", db) for db in (-20.0, -10.0, 6.0)),
    *(Perturbation(noise, snr) for noise in NOISES for snr in (20.0, 10.0, 5.0)),
    *(Perturbation("room", rt60) for rt60 in (0.3, 0.6)),
    Perturbation("narrowband", 8000),
)


def perturb(
    y: np.ndarray,
    sample_rate: int,
    perturbation: Perturbation,
    seed: int = 0,
    babble_sources=None,
) -> np.ndarray:
    """`y` under `perturbation`; the same (y, perturbation, seed, sources) give the same
    samples. `babble_sources` (other speakers' waveforms) are needed for babble only."""
    kind, value = perturbation.kind, perturbation.value
    if kind == "gain":
        return apply_gain(y, value)
    if kind == "room":
        return reverberate(y, sample_rate, value, seed)
    if kind == "narrowband":
        return round_trip(y, sample_rate, int(value))
    if kind == "babble":
        if babble_sources is None:
            raise ValueError("babble_sources=None: expected other speakers' waveforms")
        noise = babble(babble_sources, len(_signal(y)), seed)
    else:
        noise = coloured_noise(kind, len(_signal(y)), seed)
    return mix_at_snr(y, noise, value)


def apply_gain(y: np.ndarray, gain_db: float) -> np.ndarray:
    """`y` scaled by `gain_db`. No clipping: the kit's features read float samples, and a
    clipped +6 dB would mix two perturbations into one number."""
    x = _signal(y)
    _finite("gain_db", gain_db)
    return (x.astype(np.float64) * 10 ** (gain_db / 20)).astype(x.dtype)


def coloured_noise(colour: str, length: int, seed: int) -> np.ndarray:
    """Unit-variance Gaussian noise, `white` (flat) or `pink` (power falling as 1/f, -3 dB
    per octave), float64."""
    _positive_int("length", length)
    rng = np.random.default_rng(_seed(seed))
    if colour == "white":
        return rng.standard_normal(length)
    if colour == "pink":
        return colorednoise.powerlaw_psd_gaussian(1.0, length, random_state=rng)
    raise ValueError(f"colour={colour!r}: expected white or pink")


def babble(sources, length: int, seed: int) -> np.ndarray:
    """Babble of `length` samples: every source (another speaker's utterance) at the same RMS,
    each looped to the length from a start the seed picks, summed (float64). The caller
    chooses the sources: other speakers than the target's, as many talkers as it wants."""
    _positive_int("length", length)
    sources = [_signal(s) for s in sources]
    if not sources:
        raise ValueError("babble_sources=[]: expected one or more waveforms")
    if any(is_near_silent(s) for s in sources):
        raise ValueError("babble_sources: expected sounding waveforms, got a silent one")
    rng = np.random.default_rng(_seed(seed))
    mix = np.zeros(length)
    for source in sources:
        start = int(rng.integers(len(source)))
        looped = np.take(source.astype(np.float64), np.arange(start, start + length), mode="wrap")
        mix += looped / _rms(looped)
    return mix


def mix_at_snr(y: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`y` plus `noise` scaled so that y's mean power over the added noise's is `snr_db`
    (both over the whole utterance, silences included)."""
    x = _signal(y)
    _finite("snr_db", snr_db)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.shape != x.shape:
        raise ValueError(f"noise shape {noise.shape}: expected the signal's {x.shape}")
    if is_near_silent(x) or _rms(noise) == 0:
        raise ValueError("y, noise: expected sounding waveforms, got a silent one (no SNR)")
    scale = _rms(x) / (_rms(noise) * 10 ** (snr_db / 20))
    return (x.astype(np.float64) + scale * noise).astype(x.dtype)


def reverberate(y: np.ndarray, sample_rate: int, rt60: float, seed: int) -> np.ndarray:
    """`y` in a simulated room of reverberation time `rt60` (seconds), whose size and source
    and microphone positions the seed picks. The response starts at its direct path (the
    speech is not delayed), and the result has y's RMS: level is the gain perturbations'
    job, and a reverberant copy is louder by its reflections."""
    x = _signal(y)
    response = room_impulse_response(rt60, sample_rate, seed)
    if is_near_silent(x):
        return x.copy()
    direct = int(np.argmax(np.abs(response)))
    wet = fftconvolve(x.astype(np.float64), response[direct:])[: len(x)]
    return (wet * (_rms(x) / _rms(wet))).astype(x.dtype)


@functools.lru_cache(maxsize=32)
def room_impulse_response(rt60: float, sample_rate: int, seed: int) -> np.ndarray:
    """A shoebox room's impulse response (read-only float64), from pyroomacoustics' image
    sources. The walls' absorption starts at Sabine's inverse for `rt60` (pyroomacoustics'
    `inverse_sabine`) and is corrected from the response's measured T30 (absorption
    inversely proportional to RT60, Sabine's law) until within RT60_TOLERANCE."""
    _finite("rt60", rt60)
    if rt60 <= 0:
        raise ValueError(f"rt60={rt60!r}: expected seconds > 0")
    _positive_int("sample_rate", sample_rate)
    rng = np.random.default_rng(_seed(seed))
    sides = np.array(ROOM_SIDES_M) * rng.uniform(1 - ROOM_JITTER, 1 + ROOM_JITTER, 3)
    source, mic = _positions(sides, rng)
    absorption, max_order = pra.inverse_sabine(rt60, sides)
    for _ in range(RT60_CORRECTIONS):
        response = _shoebox_response(sides, source, mic, absorption, max_order, sample_rate)
        measured = pra.experimental.measure_rt60(response, fs=sample_rate, decay_db=30)
        if abs(measured / rt60 - 1) <= RT60_TOLERANCE:
            break
        absorption = min(absorption * measured / rt60, 1.0)
    response.setflags(write=False)  # cached: one caller must not change another's room
    return response


def _positions(sides: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        source = rng.uniform(WALL_CLEARANCE_M, sides - WALL_CLEARANCE_M)
        mic = rng.uniform(WALL_CLEARANCE_M, sides - WALL_CLEARANCE_M)
        if np.linalg.norm(source - mic) >= SOURCE_MIC_MIN_M:
            return source, mic


def _shoebox_response(sides, source, mic, absorption, max_order, sample_rate) -> np.ndarray:
    room = pra.ShoeBox(
        sides, fs=sample_rate, materials=pra.Material(absorption), max_order=max_order
    )
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    return np.array(room.rir[0][0], dtype=np.float64)


def round_trip(y: np.ndarray, sample_rate: int, via: int = 8000) -> np.ndarray:
    """`y` resampled to `via` Hz and back (the kit's resampler): what a narrowband link
    leaves, nothing above via / 2."""
    x = _signal(y)
    _positive_int("sample_rate", sample_rate)
    _positive_int("via", via)
    if via >= sample_rate:
        raise ValueError(f"via={via}: expected a rate below sample_rate={sample_rate}")
    return resample(resample(x, sample_rate, via), via, sample_rate)[: len(x)]
