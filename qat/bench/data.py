"""Feature extraction throughput (1 vs 2 worker processes) and the disk cache's payoff.

Generates short random wav files, extracts the paper's STFT features from scratch with one and
with two workers (interleaved, each run into a fresh cache directory), then times a cache hit
(stat every file for the key, sha256 of the whole array file, open it as a memory map: the
same return value as an extraction). The cache is worth having when a hit is at least 20x
faster than extracting; the sha256 pass bounds the hit time (about 1.4 GB/s on one core).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from qat.bench.common import interleaved_medians, markdown_table, publish
from qat.data.features import FeatureConfig, extract_features
from qat.data.records import Utterance

SPEEDUP_TARGET = 20.0


def _write_wavs(folder: Path, n: int, seconds: float, sample_rate: int) -> list[Utterance]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = folder / f"utt{i:04d}.wav"
        y = rng.uniform(-0.5, 0.5, int(seconds * sample_rate)).astype(np.float32)
        sf.write(path, y, sample_rate, subtype="PCM_16")
        records.append(
            Utterance(path=str(path), corpus="bench", emotion="neutral", speaker="s", text="w")
        )
    return records


def run(quick: bool = False) -> str:
    n = 20 if quick else 400
    repeats, warmup = (1, 0) if quick else (3, 1)
    config = FeatureConfig(kind="stft", segment_seconds=1.0)
    with tempfile.TemporaryDirectory(prefix="qat-bench-data-") as tmp:
        root = Path(tmp)
        wav_dir = root / "wav"
        wav_dir.mkdir()
        records = _write_wavs(wav_dir, n, 1.0, config.sample_rate)
        fresh = itertools.count()

        def extract(workers: int):
            # A new cache directory each time: always a full extraction.
            cache = root / f"cold{next(fresh)}"
            extract_features(records, config, cache, workers=workers, progress=False)
            for f in cache.iterdir():
                f.unlink()  # keep the temp dir small
            cache.rmdir()

        warm_cache = root / "warm"
        extract_features(records, config, warm_cache, progress=False)

        def cache_hit():
            extract_features(records, config, warm_cache, progress=False)

        times = interleaved_medians(
            {
                "extract, 1 worker": lambda: extract(1),
                "extract, 2 workers": lambda: extract(2),
                "cache hit": cache_hit,
            },
            repeats=repeats,
            warmup=warmup,
        )
    default = f"extract, {min(2, os.cpu_count() or 1)} worker" + (
        "s" if min(2, os.cpu_count() or 1) > 1 else ""
    )
    rows = [
        [name, seconds, n / seconds, times[default] / seconds if name.startswith("cache") else ""]
        for name, seconds in times.items()
    ]
    speedup = times[default] / times["cache hit"]
    verdict = "met" if speedup >= SPEEDUP_TARGET else "NOT met"
    body = (
        f"{n} random 1 s wav files at 16 kHz -> STFT {config.shape[0]} x {config.shape[1]} "
        f"(Hamming 256, hop 128), median of {repeats} interleaved runs.\n\n"
        + markdown_table(["step", "seconds", "files/s", "speedup vs default extract"], rows)
        + f"\n\nCache-hit speedup over the default ({default}): {speedup:.0f}x "
        f"(target >= {SPEEDUP_TARGET:.0f}x: {verdict}); 2 vs 1 workers: "
        f"{times['extract, 1 worker'] / times['extract, 2 workers']:.2f}x."
    )
    return publish("data", body, quick)
