"""Reading utterance audio: header checks, mono 16 kHz float32 loading, silence test.

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
    y = data.mean(axis=1) if info.channels > 1 else data[:, 0]
    if sample_rate is not None and file_rate != sample_rate:
        y = _resample(y, file_rate, int(sample_rate))
    return np.ascontiguousarray(y, dtype=np.float32)


def _resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr "HQ" resampling, length fixed to librosa's convention ceil(n * target / orig).

    Calling soxr directly rather than librosa.resample avoids librosa's ~6 s lazy import of
    its core on first use; soxr rounds the output length, librosa pads to the ceiling, and
    matching librosa keeps our lengths equal to those of any librosa-based pipeline.
    """
    out = soxr.resample(y, orig_sr, target_sr, quality="HQ")
    length = math.ceil(len(y) * target_sr / orig_sr)
    if len(out) < length:
        out = np.pad(out, (0, length - len(out)))
    return out[:length]


def is_near_silent(y: np.ndarray, threshold: float = 1e-3) -> bool:
    """True when the peak absolute amplitude is below `threshold` (1e-3 is about -60 dBFS).

    Used to drop utterances or segments that carry no speech before training; a peak test
    rather than an energy test so that one short word in a long file still counts as sound.
    An empty signal is silent.
    """
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    y = np.asarray(y)
    if y.size == 0:
        return True
    if not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinite samples; cannot judge silence")
    return bool(np.max(np.abs(y)) < threshold)
