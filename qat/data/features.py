"""Spectrogram features with an on-disk cache.

The paper's input is a fixed-length linear STFT magnitude: 16 kHz mono, Hamming window of 256,
hop 128, 4 s segments -> 512 frames x 128 bins. Log-mel is offered as an option. Extracting a
corpus takes minutes, so features are cached as one .npy array per (file list, config), keyed by
a hash of the config and of each file's path and content digest (sha256 of its bytes: a file
replaced by other audio of the same size with its mtime kept, as cp -p, rsync -a or tar do, is
a change); a sidecar JSON holds that key and a sha256 checksum of the array so that a stale or
corrupted cache is rebuilt, never used.

Hashing every file on every call is deliberate: it is I/O-bound and far cheaper than extraction
(0.3 s for 8,640 files of 32 KB from the page cache, 1 s from disk, against ~50 s to extract
4,800 of them on 2 cores), and unlike a digest cached by (size, mtime, inode) it cannot be
fooled by a rewrite in place with the times restored, nor by a file system whose ctime is not
to be trusted.

A killed extraction leaves no orphan worker (workers end with their parent) and its temporary
array is removed by the next call (qat.io.clean_stale_temporaries).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import math
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np

from qat import io
from qat.data.audio import is_near_silent, load_audio
from qat.data.records import Utterance, file_digest
from qat.progress import tqdm

# Bump when the feature computation changes in a way the config does not capture, so that
# every existing cache is rebuilt.
FEATURE_VERSION = 1

# The VGG16 has five 2x2 poolings: the frame axis must divide by 2**5.
FRAME_MULTIPLE = 32

KINDS = ("stft", "logmel")
COMPRESSIONS = ("none", "log")
# The run setting `level`: the waveform as recorded, or each segment loudness-normalised
# (normalise_level) before its features.
LEVELS = ("raw", "normalise")

# normalise_level's definition (it enters the feature key of level="normalise", so editing it
# rebuilds those caches, and only those).
LEVEL_TARGET_DBFS = -23.0  # RMS of the active blocks after normalisation, dB re full scale
LEVEL_BLOCK_SECONDS = 0.02  # blocks whose mean square is measured
LEVEL_GATE_DB = 30.0  # active blocks: mean square within this of the loudest block's
LEVEL_PEAK_CEILING = 0.99  # clipping protection: the gain never lifts the peak above this


@dataclass(frozen=True)
class FeatureConfig:
    """How a waveform becomes a (frames, bins) array.

    kind: "stft" (linear-frequency magnitude, the paper) or "logmel" (mel power).
    compression: "log" applies log1p to the STFT magnitude (silence stays at 0, large
        magnitudes are compressed) or log(max(mel power, log_floor)) to the mel power;
        "none" keeps the magnitude / mel power as is.
    frames: the segment's frame count (segment samples / hop, rounded up) rounded up again to a
        multiple of 32 so that the VGG poolings divide it: 4 s -> 500 -> 512, 1 s -> 125 -> 128.
    bins: stft keeps n_fft // 2 bins (the Nyquist bin is dropped: 256 -> 128); logmel n_mels.
    silence_peak: an utterance whose peak absolute amplitude is below this counts as
        near-silent (flagged in `Features.silent`, for the caller to drop and count). The test
        reads the file as recorded, whatever `level`.
    level: "raw" (the waveform as recorded) or "normalise": the segment the network reads is
        loudness-normalised (normalise_level) before its spectrum, so its features do not
        depend on the recording's gain. Only a non-default level enters `key()` and
        `as_dict()`, so every cache and model file of "raw" keeps its key and contents.
    """

    kind: str = "stft"
    sample_rate: int = 16000
    segment_seconds: float = 4.0
    n_fft: int = 256
    hop_length: int = 128
    n_mels: int = 64
    compression: str = "log"
    log_floor: float = 1e-10
    silence_peak: float = 1e-3
    level: str = "raw"

    def __post_init__(self):
        def bad(field: str, expected: str):
            value = getattr(self, field)
            raise ValueError(f"FeatureConfig.{field}={value!r}: expected {expected}")

        if self.kind not in KINDS:
            bad("kind", f"one of {KINDS}")
        if self.compression not in COMPRESSIONS:
            bad("compression", f"one of {COMPRESSIONS}")
        if self.level not in LEVELS:
            bad("level", f"one of {LEVELS}")
        if not _is_int(self.sample_rate) or self.sample_rate <= 0:
            bad("sample_rate", "a positive integer (Hz)")
        if not _is_number(self.segment_seconds) or not self.segment_seconds > 0:
            bad("segment_seconds", "a positive number of seconds")
        if not _is_int(self.n_fft) or self.n_fft < 16 or self.n_fft % 2:
            bad("n_fft", "an even integer >= 16")
        # A hop above half the window would leave samples that no frame centre reaches.
        if not _is_int(self.hop_length) or not 1 <= self.hop_length <= self.n_fft // 2:
            bad("hop_length", f"an integer in [1, n_fft // 2 = {self.n_fft // 2}]")
        if not _is_int(self.n_mels) or self.n_mels < 1:
            bad("n_mels", "a positive integer")
        if not _is_number(self.log_floor) or not self.log_floor > 0:
            bad("log_floor", "a positive number")
        if not _is_number(self.silence_peak) or not self.silence_peak >= 0:
            bad("silence_peak", "a non-negative amplitude")
        if self.segment_samples < 1:
            bad("segment_seconds", "at least one sample at sample_rate")

    @property
    def segment_samples(self) -> int:
        return round(self.segment_seconds * self.sample_rate)

    @property
    def frames(self) -> int:
        raw = math.ceil(self.segment_samples / self.hop_length)
        return math.ceil(raw / FRAME_MULTIPLE) * FRAME_MULTIPLE

    @property
    def bins(self) -> int:
        return self.n_fft // 2 if self.kind == "stft" else self.n_mels

    @property
    def shape(self) -> tuple[int, int]:
        return (self.frames, self.bins)

    def as_dict(self) -> dict:
        """The fields as a dict, `level` only when it is not "raw" (what model files, feature
        sidecars and records store: those of "raw" stay as they were before the setting)."""
        out = dataclasses.asdict(self)
        if out["level"] == "raw":
            del out["level"]
        return out

    def key(self) -> str:
        """A short stable hash of every field (as_dict), the feature-code version and, for
        level="normalise", normalise_level's constants."""
        payload = {"version": FEATURE_VERSION, **self.as_dict()}
        if self.level == "normalise":
            payload["level_definition"] = level_definition()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# One waveform


def level_definition() -> dict:
    """normalise_level's constants (in the feature key of level="normalise")."""
    return {"target_dbfs": LEVEL_TARGET_DBFS, "block_seconds": LEVEL_BLOCK_SECONDS,
            "gate_db": LEVEL_GATE_DB, "peak_ceiling": LEVEL_PEAK_CEILING}  # fmt: skip


def active_rms(y: np.ndarray, sample_rate: int) -> float:
    """The RMS of a waveform's active blocks: y is cut into consecutive blocks of
    LEVEL_BLOCK_SECONDS (a last partial block counts as a block; a signal shorter than one
    block is one block); the active blocks are those whose mean square is within LEVEL_GATE_DB
    of the loudest block's; the result is the square root of their mean square (every active
    sample weighs the same). The gate is relative, so the result scales exactly with the
    signal: active_rms(a * y) == |a| * active_rms(y). 0 for digital silence."""
    y = np.asarray(y, dtype=np.float64)
    block = max(1, round(LEVEL_BLOCK_SECONDS * sample_rate))
    starts = np.arange(0, len(y), block)
    if len(starts) == 0:
        return 0.0
    energy = np.add.reduceat(y**2, starts)  # sum of squares per block
    counts = np.diff(np.append(starts, len(y)))
    power = energy / counts
    if not power.max() > 0:
        return 0.0
    active = power >= power.max() * 10 ** (-LEVEL_GATE_DB / 10)
    return float(np.sqrt(energy[active].sum() / counts[active].sum()))


def normalise_level(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """`y` (float64) scaled so that its active RMS (active_rms: the blocks within
    LEVEL_GATE_DB of the loudest, silence and pauses left out) is LEVEL_TARGET_DBFS dB re full
    scale (20 log10 RMS; a full-scale square wave is 0 dBFS). A plain numpy definition rather
    than ITU-R BS.1770 (pyloudnorm): that one K-weights and gates 400 ms blocks against an
    absolute -70 LUFS threshold, so it is undefined for segments under 0.4 s and not exactly
    scale-invariant for quiet ones; this one is both.

    Clipping protection: the gain is capped so that the peak does not exceed
    LEVEL_PEAK_CEILING (a signal whose crest factor exceeds the ceiling over the target, about
    22.9 dB, ends up quieter than the target). The cap, like the gain, depends only on the
    waveform's shape, so the result is the same at any input gain: normalise_level(a * y) ==
    normalise_level(y) for every a > 0, up to floating-point rounding.

    Digital silence (every sample 0, or no samples) has no level to normalise: ValueError.
    """
    y = np.asarray(y, dtype=np.float64)
    rms = active_rms(y, sample_rate)
    if not rms > 0:
        raise ValueError(
            "level='normalise': the waveform is digital silence (every sample 0); it has no "
            "loudness to normalise"
        )
    peak = float(np.max(np.abs(y)))
    gain = min(10 ** (LEVEL_TARGET_DBFS / 20) / rms, LEVEL_PEAK_CEILING / peak)
    return y * gain


def fit_segment(y: np.ndarray, length: int) -> np.ndarray:
    """Centre-crop or symmetrically zero-pad `y` to `length` samples, so that the speech, which
    usually sits in the middle of a file, stays in the middle of the segment."""
    n = len(y)
    if n >= length:
        start = (n - length) // 2
        return y[start : start + length]
    out = np.zeros(length, dtype=y.dtype)
    left = (length - n) // 2
    out[left : left + n] = y
    return out


@functools.lru_cache(maxsize=8)
def _hamming(n_fft: int) -> np.ndarray:
    # Periodic ("DFT-even") Hamming, librosa's and scipy's default for spectral analysis;
    # built once because librosa.stft would rebuild it on every call.
    return librosa.filters.get_window("hamming", n_fft, fftbins=True)


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).astype(np.float64)


def compute_features(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Features of one mono waveform at config.sample_rate: float32 array (frames, bins).

    Frame t is centred on sample t * hop of the segment (the signal is zero outside it), the
    same framing as librosa's centre=True with zero padding, but with exactly config.frames
    frames: the trailing frames past the segment's end hold zeros.

    level="normalise": the segment (after cropping or padding) is scaled by normalise_level
    first; a segment of digital silence has no level and is left as it is (its features are
    the floor, as under "raw"; near-silent files are dropped by the callers anyway).
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y: expected a 1-D mono waveform, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y: waveform contains NaN or infinite samples")
    segment = fit_segment(y.astype(np.float64), config.segment_samples)
    if config.level == "normalise" and np.any(segment):
        segment = normalise_level(segment, config.sample_rate)
    n_fft, hop, frames = config.n_fft, config.hop_length, config.frames
    padded = np.zeros((frames - 1) * hop + n_fft)
    padded[n_fft // 2 : n_fft // 2 + len(segment)] = segment
    spectrum = librosa.stft(
        padded, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=_hamming(n_fft), center=False
    )
    magnitude = np.abs(spectrum)  # (1 + n_fft // 2, frames)
    if config.kind == "stft":
        out = magnitude[: n_fft // 2]
        if config.compression == "log":
            out = np.log1p(out)
    else:
        out = _mel_basis(config.sample_rate, n_fft, config.n_mels) @ magnitude**2
        if config.compression == "log":
            out = np.log(np.maximum(out, config.log_floor))
    return np.ascontiguousarray(out.T, dtype=np.float32)


def _load(path: str, sample_rate: int) -> np.ndarray:
    """Mono float32 waveform at sample_rate via the shared loader (stereo -> mono, resampling,
    NaN rejection; AudioError / FileNotFoundError naming the file)."""
    return load_audio(path, sample_rate=sample_rate)


def _extract_chunk(paths: Sequence[str], config: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Features and near-silence flags of a few files; runs in a worker process."""
    x = np.empty((len(paths), *config.shape), dtype=np.float32)
    silent = np.empty(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        y = _load(path, config.sample_rate)
        silent[i] = is_near_silent(y, config.silence_peak)
        x[i] = compute_features(y, config)
    return x, silent


# --------------------------------------------------------------------------------------------
# A corpus, cached


@dataclass
class Features:
    """Features of a record list, aligned with it.

    x: (N, frames, bins) float32, usually a read-only memory map of the cache file.
    silent: (N,) bool, near-silent utterances (peak below config.silence_peak).
    path: the cache file.
    """

    x: np.ndarray
    silent: np.ndarray
    path: Path

    def __len__(self) -> int:
        return len(self.x)


def _files_key(paths: Sequence[str], config: FeatureConfig) -> str:
    """sha256 of (the config; each file's path and content digest): any change means a
    rebuild."""
    h = hashlib.sha256(f"{config.key()}\tcontent".encode())
    for path in paths:
        h.update(f"\n{path}\t{file_digest(path)}".encode())
    return h.hexdigest()


def _cache_paths(paths: Sequence[str], config: FeatureConfig, cache_dir: Path) -> tuple[Path, Path]:
    """One cache file per (file list, config); the files' contents are checked via the sidecar,
    so a changed file rebuilds this same cache file instead of adding another."""
    corpus_id = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:12]
    stem = f"{config.kind}-{config.key()}-{corpus_id}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


_sha256_file = file_digest  # the array's checksum


def _try_load_cache(array_path: Path, sidecar_path: Path, key: str, n: int, config: FeatureConfig):
    """The cached (x, silent) if the cache is current and intact, else None (warns when the
    cache is current but damaged)."""
    if not (array_path.exists() and sidecar_path.exists()):
        return None
    try:
        meta = json.loads(sidecar_path.read_text())
    except (OSError, json.JSONDecodeError):
        warnings.warn(
            f"feature cache sidecar {sidecar_path} is unreadable; rebuilding", stacklevel=3
        )
        return None
    if meta.get("key") != key:
        return None  # files or config changed: an ordinary rebuild
    if _sha256_file(array_path) != meta.get("sha256"):
        warnings.warn(
            f"feature cache {array_path} does not match its checksum (corrupted); rebuilding",
            stacklevel=3,
        )
        return None
    x = np.load(array_path, mmap_mode="r")
    if x.shape != (n, *config.shape) or x.dtype != np.float32:
        warnings.warn(f"feature cache {array_path} has shape {x.shape}; rebuilding", stacklevel=3)
        return None
    silent = np.zeros(n, dtype=bool)
    try:
        silent[np.asarray(meta["silent"], dtype=np.int64)] = True
    except (KeyError, TypeError, ValueError, IndexError):
        warnings.warn(
            f"feature cache sidecar {sidecar_path} is malformed; rebuilding", stacklevel=3
        )
        return None
    return x, silent


def _chunks(n: int, workers: int) -> list[range]:
    # Several chunks per worker keeps both busy to the end and the progress bar moving.
    size = max(1, min(64, math.ceil(n / (workers * 8))))
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _pool_context():
    # fork (where available) spares each worker re-importing librosa (~1 s); the workers use
    # only numpy and librosa, never torch, so forking a process that imported torch is safe.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _extract_into(out: np.ndarray, paths: Sequence[str], config, workers: int, progress: bool):
    """Fill `out` (N, frames, bins) with the features of `paths`; returns the silent flags."""
    silent = np.zeros(len(paths), dtype=bool)
    chunks = _chunks(len(paths), workers)
    with tqdm(
        total=len(paths), desc=f"{config.kind} features", unit="file", disable=not progress
    ) as bar:

        def store(chunk: range, result):
            out[chunk.start : chunk.stop], silent[chunk.start : chunk.stop] = result
            bar.update(len(chunk))

        if workers == 1:
            for chunk in chunks:
                store(chunk, _extract_chunk([paths[i] for i in chunk], config))
        else:
            # The first librosa call lazily imports its submodules (seconds); doing it here
            # once lets every forked worker inherit them instead of paying it again.
            compute_features(np.zeros(1, dtype=np.float32), config)
            with ProcessPoolExecutor(
                max_workers=workers,
                mp_context=_pool_context(),
                initializer=io.exit_with_parent,  # a killed run leaves no orphan workers
                initargs=(os.getpid(),),
            ) as pool:
                futures = [
                    (chunk, pool.submit(_extract_chunk, [paths[i] for i in chunk], config))
                    for chunk in chunks
                ]
                try:
                    for chunk, future in futures:
                        store(chunk, future.result())
                except BaseException:
                    # A bad file (or Ctrl-C) should stop the run now, not after every queued
                    # chunk has been extracted for nothing.
                    for _, future in futures:
                        future.cancel()
                    raise
    return silent


def _reserve(path: Path, config: FeatureConfig, n: int) -> None:
    """Claim the cache file's disk space up front: writing through a memory map to a full disk
    kills the process with SIGBUS instead of raising an error."""
    size = os.path.getsize(path)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except AttributeError:
        return  # no posix_fallocate on this platform
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # the filesystem cannot reserve; nothing better to do
        raise OSError(
            f"cannot write the feature cache in {path.parent}: {err.strerror} "
            f"({size} bytes needed for {n} items of shape {config.shape})"
        ) from err


def _build_cache(paths, config, array_path: Path, sidecar_path: Path, key: str, workers, progress):
    """Extract into a temporary array beside the cache file (qat.io's naming), then rename it
    and write its sidecar, each atomically. The old sidecar goes first, so a crash part-way
    leaves an array without a sidecar: rebuilt on the next call. (No fsync of the array: its
    checksum in the sidecar, written last, catches one that did not reach the disk whole.)"""
    with io.temporary_beside(array_path) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(len(paths), *config.shape)
        )
        _reserve(Path(tmp), config, len(paths))
        silent = _extract_into(out, paths, config, workers, progress)
        out.flush()
        del out
        checksum = _sha256_file(tmp)
        sidecar_path.unlink(missing_ok=True)
        os.replace(tmp, array_path)
    meta = {
        "key": key,
        "sha256": checksum,
        "shape": [len(paths), *config.shape],
        "silent": np.flatnonzero(silent).tolist(),
        "config": config.as_dict(),
        "feature_version": FEATURE_VERSION,
    }
    _write_text_atomic(sidecar_path, json.dumps(meta, indent=1))
    return silent


def _write_text_atomic(path: Path, text: str) -> None:
    """The sidecar's writer (the fault tests replace it to stop a build between the array and
    its sidecar)."""
    io.write_text(path, text)


def extract_features(
    records: Sequence[Utterance],
    config: FeatureConfig,
    cache_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
) -> Features:
    """Features of every record (in order), from the cache when it is current, else extracted
    in parallel processes and cached. Results do not depend on `workers`
    (default min(2, cpus))."""
    if len(records) == 0:
        raise ValueError("records: expected at least one utterance, got none")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not _is_int(workers) or workers < 1:
        raise ValueError(f"workers={workers!r}: expected a positive integer")
    paths = [str(r.path) for r in records]
    cache_dir = io.ensure_folder(cache_dir, "feature cache")
    io.clean_stale_temporaries(cache_dir, recursive=False)  # left by a killed extraction
    key = _files_key(paths, config)
    array_path, sidecar_path = _cache_paths(paths, config, cache_dir)
    cached = _try_load_cache(array_path, sidecar_path, key, len(paths), config)
    if cached is None:
        # Parallel runs that need the same features build them once: the others wait here,
        # then read what the first one built.
        with io.locked(array_path.with_suffix(".lock")):
            cached = _try_load_cache(array_path, sidecar_path, key, len(paths), config)
            if cached is None:
                silent = _build_cache(paths, config, array_path, sidecar_path, key, workers,
                                      progress)  # fmt: skip
                cached = np.load(array_path, mmap_mode="r"), silent
    x, silent = cached
    return Features(x=x, silent=silent, path=array_path)
