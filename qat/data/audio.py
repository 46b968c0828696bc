"""Reading utterance audio: header checks, mono 16 kHz float32 loading, the kit's resampler,
silence test.

Every corpus loader probes each file's header at load time, so a broken file is reported
when the corpus is listed, not hours later in the middle of feature extraction.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

# libsndfile reports "System error" for a missing file and "Format not recognised" for an
# empty one; we check those cases ourselves to give a message a user can act on.


# Channels whose mix is this far below the loudest channel (RMS) are taken to cancel.
CANCEL_DB = 20.0


class AudioError(ValueError):
    """An audio file that cannot be used: missing, empty, truncated, not audio, or NaN."""


class MissingAudioError(AudioError, FileNotFoundError):
    """The audio file does not exist (also a FileNotFoundError, so either except works)."""


class AudioInfo(NamedTuple):
    """What a file's header says; unpacks as (samplerate, channels, frames, subtype)."""

    samplerate: int
    channels: int
    frames: int
    subtype: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.samplerate


def probe(path: str | os.PathLike) -> AudioInfo:
    """Read and check a file's header without decoding the audio.

    Raises MissingAudioError for a missing file and AudioError for an empty file, a file
    libsndfile cannot parse (e.g. text renamed .wav), a header with no frames, or a WAV whose
    data chunk declares more bytes than the file holds (an interrupted copy or download:
    libsndfile would silently return the shorter audio).
    """
    path = Path(path)
    if not path.exists():
        raise MissingAudioError(f"{path}: audio file does not exist")
    if not path.is_file():
        raise AudioError(f"{path}: expected an audio file, found a directory or special file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except RuntimeError as err:  # soundfile.LibsndfileError derives from RuntimeError
        raise AudioError(f"{path}: not a readable audio file ({err})") from err
    if info.frames <= 0:
        raise AudioError(f"{path}: header holds no audio frames (0 samples)")
    _check_wav_not_truncated(path)
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), info.subtype)


def _check_wav_not_truncated(path: Path) -> None:
    """Compare a RIFF/WAVE data chunk's declared size with the bytes actually present.

    Non-RIFF files (FLAC, RF64, ...) are left to libsndfile. Sizes 0 and 0xFFFFFFFF are
    placeholders written by streaming recorders that never patch the header, not truncation.
    """
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return
            chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                present = file_size - fh.tell()
                if size not in (0, 0xFFFFFFFF) and size > present:
                    raise AudioError(
                        f"{path}: truncated WAV, the header declares {size} bytes of audio "
                        f"but only {present} are present"
                    )
                return
            fh.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to even length


def load_audio(path: str | os.PathLike, sample_rate: int | None = 16000) -> np.ndarray:
    """Decode a file to a mono float32 signal in [-1, 1] at `sample_rate` Hz.

    Any PCM width (8/16/24/32-bit) or float file is scaled to [-1, 1] by libsndfile; several
    channels are averaged; other rates are resampled with soxr (librosa's default, high
    quality). `sample_rate=None` keeps the file's own rate. NaN or infinite samples (possible
    in float WAVs) raise AudioError, as they would silently poison every feature and loss.
    """
    if sample_rate is not None and (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, numbers.Integral)
        or sample_rate <= 0
    ):
        raise ValueError(f"sample_rate must be a positive int or None, got {sample_rate!r}")
    info = probe(path)
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as err:
        raise AudioError(f"{path}: could not decode audio ({err})") from err
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise AudioError(f"{path}: {bad} of {data.size} samples are NaN or infinite")
    y = _mix_down(data, path) if info.channels > 1 else data[:, 0]
    if sample_rate is not None and file_rate != sample_rate:
        y = resample(y, file_rate, int(sample_rate))
    return np.ascontiguousarray(y, dtype=np.float32)


def _mix_down(data: np.ndarray, path) -> np.ndarray:
    """The channel mean of (frames, channels) audio; AudioError if the channels cancel.

    Channels that cancel in the mix (one of them polarity-inverted: a wiring or export fault)
    would turn a loud utterance into near-silence, which is then dropped as silent without a
    word. We raise instead of picking a channel: which channel is right is the user's call,
    and the fix is one command (e.g. `sox in.wav out.wav remix 1` keeps the first channel).
    Cancelling means: the mix is more than CANCEL_DB below the loudest channel (RMS) while that
    channel is not itself near-silent. In-phase channels lose nothing in the mix, independent
    ones about 3 dB, a single live channel 6 dB."""
    y = data.mean(axis=1)
    rms = np.sqrt(np.mean(np.square(data, dtype=np.float64), axis=0))
    loudest = int(np.argmax(rms))
    mix_rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    if not is_near_silent(data[:, loudest]) and mix_rms < rms[loudest] * 10 ** (-CANCEL_DB / 20):
        drop = 20 * np.log10(rms[loudest] / mix_rms) if mix_rms > 0 else math.inf
        raise AudioError(
            f"{path}: its {data.shape[1]} channels cancel when mixed to mono (the mix is "
            f"{drop:.0f} dB below channel {loudest + 1}): one channel is probably "
            "polarity-inverted; convert the file to mono yourself, e.g. keep one channel with "
            "`sox in.wav out.wav remix 1`"
        )
    return y


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling with libsoxr ("HQ"), the kit's one resampler; the dtype
    (float32 or float64) is kept and the length is librosa's convention,
    ceil(n * target / orig).

    Calling soxr directly rather than librosa.resample avoids librosa's ~6 s lazy import of
    its core on first use (and is light enough for every synthesis worker); soxr rounds the
    output length, librosa pads to the ceiling, and matching librosa keeps our lengths equal
    to those of any librosa-based pipeline.
    """
    if orig_sr == target_sr:
        return y
    out = soxr.resample(y, orig_sr, target_sr, quality="HQ")
    length = math.ceil(len(y) * target_sr / orig_sr)
    if len(out) < length:
        out = np.pad(out, (0, length - len(out)))
    return out[:length]


def is_near_silent(y: np.ndarray, threshold: float = 1e-3) -> bool:
    """True when the peak absolute deviation from the signal's mean is below `threshold` (1e-3
    is about -60 dBFS).

    Used to drop utterances or segments that carry no speech before training; a peak test
    rather than an energy test so that one short word in a long file still counts as sound.
    The mean is removed first: a constant offset (a dead microphone on a biased input) is not
    sound. An empty signal is silent.
    """
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    y = np.asarray(y)
    if y.size == 0:
        return True
    if not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinite samples; cannot judge silence")
    deviation = np.asarray(y, dtype=np.float64) - np.mean(y, dtype=np.float64)
    return bool(np.max(np.abs(deviation)) < threshold)
