"""SynthEmo: a speech-emotion corpus the kit synthesises itself with eSpeak NG.

Every factor of an utterance is known by construction: the speaker (an eSpeak voice variant with
an accent), the word, and the emotion, realised as prosody (speech rate, pitch level, pitch range,
volume) following Murray & Arnott's review of vocal emotion ("Toward the simulation of emotion
in synthetic speech", JASA 1993): anger faster, higher, wider and louder; sadness slower, lower,
narrower and softer; happiness faster, higher and wider; fear much faster and higher. The means
in `PROSODY` were measured feasible on a SynthEmo-like task (DESIGN.md, section 2); each
utterance draws its own values around them (`JITTER`), so emotion is a distribution, not a
constant, and the word or speaker can be made to confound it (see qat.data.splits).

Layout written by `make_synthemo(out_dir, ...)`::

    out_dir/wav/<speaker>/<emotion>/<word>_<rep>.wav   16 kHz mono PCM16, fixed duration
    out_dir/manifest.csv                               qat.data.records manifest
    out_dir/prosody.csv                                the prosody each utterance was given
    out_dir/synthemo_config.json                       the configuration and its hash
    out_dir/.synthemo.lock                             held while a process builds

Ownership: the kit writes only into a folder that is new, empty, or holds a SynthEmo corpus (a
valid synthemo_config.json, written before anything else, is its mark); otherwise it stops and
names the file it would overwrite. Rebuilding with another configuration deletes only the wav
files the stored configuration lists (and the folders they leave empty): files a user added
stay. Two builds into one folder take turns (a lock the system releases if a process dies); the
second finds the corpus built and reuses it. Files are written under qat.io's temporary names,
and a killed build's temporaries, worker processes and engine folder are cleaned up (workers end
with their parent; the rest at the next start).

Determinism: eSpeak NG keeps synthesis state in static variables that survive
`espeak_Initialize` (glottal phase, pitch smoothing, flutter, ...), so a word's samples depend
on what the engine said before. So the utterances are cut into fixed blocks (ENGINE_BLOCK
consecutive utterances of one voice) and each block is synthesised by a freshly loaded private
copy of the library (dlopen, synthesise the block, dlclose; see qat.data.espeak); all randomness
comes from numpy Generators seeded by (seed, corpus, utterance index). The output is
byte-identical for a given seed whatever the number of worker processes and whichever worker
renders which block. (One
fresh engine per utterance would work too, but loading the English dictionary into a fresh
engine costs ~4 ms, three times the synthesis of a word; the history only shifts the glottal
phase.)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import re
import wave
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np

from qat import io
from qat.data import espeak
from qat.data.audio import resample
from qat.data.records import EMOTIONS, Utterance, write_manifest
from qat.progress import tqdm


class Prosody(NamedTuple):
    """eSpeak prosody controls: rate in words per minute, pitch level, pitch range (both 0-100,
    50 = the voice's default) and volume (0-200, 100 = normal)."""

    rate: float
    pitch: float
    pitch_range: float
    volume: float


# Means after Murray & Arnott (1993), measured feasible on a 6-layer CNN (DESIGN.md): with
# wider jitter (SD 22/9/14/22) the task became too hard (UA 0.39).
PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(175, 50, 50, 100),
    "angry": Prosody(205, 60, 72, 135),
    "happy": Prosody(195, 64, 70, 110),
    "sad": Prosody(145, 40, 28, 75),
    "fearful": Prosody(230, 68, 40, 100),
}
JITTER = Prosody(15, 6, 10, 15)  # per-utterance Gaussian standard deviations
DEFAULT_EMOTIONS = ("neutral", "happy", "sad", "angry", "fearful")

# The engine's valid ranges (speak_lib.h: espeakRATE_MINIMUM/MAXIMUM; pitch and range 0-100;
# volume 0-200, above 100 the engine compresses). Jittered values are clipped into them.
PROSODY_LIMITS = Prosody((80, 450), (0, 100), (0, 100), (0, 200))

# Valence, arousal, dominance in [0, 1]: the octant of each emotion in Mehrabian & Russell's
# pleasure-arousal-dominance space (anger -P+A+D, fear -P+A-D, joy +P+A+D, sadness -P-A-D,
# neutral at the centre), with magnitudes placed by us on a coarse grid (0.1-0.9); these are
# placements, not measurements, and only their order is meaningful.
VAD: dict[str, tuple[float, float, float]] = {
    "neutral": (0.5, 0.5, 0.5),
    "happy": (0.9, 0.7, 0.7),
    "sad": (0.2, 0.2, 0.3),
    "angry": (0.2, 0.9, 0.8),
    "fearful": (0.1, 0.8, 0.2),
}

# Twelve voices: six male, six female variants over eight English accents (US, British RP,
# Scottish, Caribbean, New York, Lancashire, ...); all produce voiced speech and respond to the
# prosody controls (whisper and robot variants left out).
DEFAULT_SPEAKERS = (
    "en-us+m3",
    "en+f2",
    "en+klatt4",
    "en-us+f4",
    "en-gb-scotland+m1",
    "en-029+f3",
    "en-us-nyc+m2",
    "en-gb-x-rp+f1",
    "en-gb-x-rp+m7",
    "en-us+f5",
    "en-gb-x-gbclan+m4",
    "en-gb-scotland+anika",
)
# For pretraining the word and speaker networks: the SynthEmo speakers plus twelve more.
MORE_SPEAKERS = (
    *DEFAULT_SPEAKERS,
    "en+m6",
    "en-us+m8",
    "en-029+m5",
    "en-gb-x-gbcwmd+f4",
    "en-us-nyc+f2",
    "en-us+klatt6",
    "en-gb-scotland+f5",
    "en+steph",
    "en-us+belinda",
    "en-gb-x-rp+robert",
    "en+grandpa",
    "en-us+paul",
)
# Forty short, emotionally neutral words (no "happy" or "wow": the word must not carry emotion).
DEFAULT_WORDS = (
    *("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"),
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    *("bed", "bird", "cat", "dog", "house", "tree", "door", "chair", "table", "water"),
    *("paper", "window", "garden", "river", "yellow", "orange", "number", "morning", "follow"),
    "learn",
)

CORPUS = "synthemo"
ORTHOGONAL_CORPUS = "synthemo_orthogonal"
MANIFEST = "manifest.csv"
PROSODY_CSV = "prosody.csv"
CONFIG_JSON = "synthemo_config.json"
WAV_DIR = "wav"
# Bump when the synthesis or post-processing changes, so stored corpora are rebuilt.
FORMAT_VERSION = 1

# Utterances synthesised in a row by one freshly loaded engine (see the module docstring).
ENGINE_BLOCK = 32
_TRIM_TOP_DB = 50.0  # eSpeak's output is noise-free: anything 50 dB below the peak is silence
_WORD_PATTERN = re.compile(r"[A-Za-z]+(-[A-Za-z]+)*")
_WAV_HEADER_BYTES = 44
# Held (flock) while a process builds or checks a corpus folder; kept in the folder.
LOCK_FILE = ".synthemo.lock"


# ---------------------------------------------------------------------------------------------
# Voices
# ---------------------------------------------------------------------------------------------


def speaker_dirname(voice: str) -> str:
    """A file-system-safe folder name for a voice: "en-us+m3" -> "en-us_m3"."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", voice)


def _check_speakers(speakers: Sequence[str]) -> None:
    """Each speaker must be <language>[+<variant>] with both parts shipped: eSpeak itself
    silently ignores an unknown variant and would give a duplicate speaker."""
    languages, variants = set(espeak.list_languages()), set(espeak.list_voices())
    for voice in speakers:
        language, _, variant = str(voice).partition("+")
        if language.lower() not in languages:
            english = sorted(x for x in languages if x == "en" or x.startswith("en-"))
            raise ValueError(
                f"speakers: {voice!r} has an unknown language {language!r}; expected "
                f"<language>[+<variant>], language one of list_languages(), e.g. {english}"
            )
        if variant and variant not in variants:
            raise ValueError(
                f"speakers: {voice!r} has an unknown variant {variant!r}; expected one of "
                f"list_voices() = {sorted(variants)}"
            )
    _check_unique("speakers", [speaker_dirname(v).lower() for v in speakers], speakers)


def _check_voices_load(speakers: Sequence[str], factory: espeak.EngineFactory) -> str:
    """Load every voice once in the engine (cheap); returns the engine's version string."""
    with factory.open() as engine:
        for voice in speakers:
            if not engine.set_voice(voice):
                raise ValueError(f"speakers: eSpeak NG could not load voice {voice!r}")
        return engine.version()


def _check_unique(name: str, keys: Sequence[str], values: Sequence) -> None:
    seen: dict[str, object] = {}
    for key, value in zip(keys, values, strict=True):
        if key in seen:
            raise ValueError(f"{name}: {seen[key]!r} and {value!r} collide; each must be unique")
        seen[key] = value


# ---------------------------------------------------------------------------------------------
# Per-utterance signal processing (pure functions of their inputs and the Generator)
# ---------------------------------------------------------------------------------------------


def draw_prosody(mean: Prosody, jitter: Prosody, rng: np.random.Generator) -> Prosody:
    """Mean + Gaussian jitter, clipped to the engine's ranges and rounded (its controls are
    integers)."""
    values = np.asarray(mean, float) + np.asarray(jitter, float) * rng.standard_normal(4)
    low, high = np.array(PROSODY_LIMITS, float).T
    return Prosody(*(int(v) for v in np.rint(np.clip(values, low, high))))


def trim_silence(audio: np.ndarray, top_db: float = _TRIM_TOP_DB) -> np.ndarray:
    """Drop leading/trailing samples quieter than `top_db` below the peak."""
    magnitude = np.abs(audio)
    peak = magnitude.max(initial=0.0)
    if peak == 0:
        return audio[:0]
    loud = np.flatnonzero(magnitude > peak * 10 ** (-top_db / 20))
    return audio[loud[0] : loud[-1] + 1]


def place(audio: np.ndarray, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Put `audio` at a random offset in `n_samples` of silence; if it is longer, keep a random
    `n_samples` window of it. Returns (clip, offset), the offset negative when cropped."""
    out = np.zeros(n_samples)
    if len(audio) <= n_samples:
        offset = int(rng.integers(0, n_samples - len(audio) + 1))
        out[offset : offset + len(audio)] = audio
        return out, offset
    start = int(rng.integers(0, len(audio) - n_samples + 1))
    out[:] = audio[start : start + n_samples]
    return out, -start


def white_noise(n_samples: int, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise whose RMS is `level_dbfs` dB relative to full scale (1.0)."""
    return rng.standard_normal(n_samples) * 10 ** (level_dbfs / 20)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")


def write_wav(path: Path, pcm16: np.ndarray, sample_rate: int) -> None:
    """Mono PCM16 WAV, written to a temporary name and renamed (never half a file). Not flushed
    to disk one by one: the corpus's completion mark, written last, is."""

    def write(tmp: str) -> None:
        with wave.open(tmp, "wb") as fh:
            fh.setnchannels(1)
            fh.setsampwidth(2)
            fh.setframerate(sample_rate)
            fh.writeframes(np.ascontiguousarray(pcm16, "<i2").tobytes())

    io.write_atomic(path, write, fsync=False)


# ---------------------------------------------------------------------------------------------
# Jobs and workers
# ---------------------------------------------------------------------------------------------


class _Job(NamedTuple):
    index: int
    entropy: tuple[int, int, int]  # (seed, corpus tag, index): the utterance's own random stream
    voice: str
    emotion: str
    word: str
    mean: Prosody
    path: str


@dataclasses.dataclass(frozen=True)
class _Settings:
    jitter: Prosody
    noise_dbfs: tuple[float, float] | None
    n_samples: int
    sample_rate: int
    library: Path
    data_path: Path
    workdir: Path


class _Realised(NamedTuple):
    """What one utterance actually got (written to prosody.csv)."""

    index: int
    prosody: Prosody
    offset_s: float
    noise_dbfs: float | None
    engine_seed: int


_FACTORY: espeak.EngineFactory | None = None  # one per process, created on first use


def _factory(settings: _Settings) -> espeak.EngineFactory:
    global _FACTORY
    key = (settings.library, settings.data_path, settings.workdir)
    if _FACTORY is None or (_FACTORY.library, _FACTORY.data_path, _FACTORY.workdir) != key:
        _FACTORY = espeak.EngineFactory(settings.library, settings.data_path, settings.workdir)
    return _FACTORY


def _render(job: _Job, settings: _Settings, engine: espeak.Engine) -> _Realised:
    """Synthesise, post-process and write one utterance. The order of the draws is fixed."""
    rng = np.random.default_rng(job.entropy)
    prosody = draw_prosody(job.mean, settings.jitter, rng)
    engine_seed = int(rng.integers(1, 2**31 - 1))
    pcm = engine.synthesise(job.word, job.voice, prosody, engine_seed)
    speech = trim_silence(resample(pcm / 32768.0, engine.sample_rate, settings.sample_rate))
    clip, offset = place(speech, settings.n_samples, rng)
    level = None
    if settings.noise_dbfs is not None:
        level = float(rng.uniform(*settings.noise_dbfs))
        clip += white_noise(settings.n_samples, level, rng)
    write_wav(Path(job.path), to_pcm16(clip), settings.sample_rate)
    return _Realised(job.index, prosody, offset / settings.sample_rate, level, engine_seed)


def _render_block(block: Sequence[_Job], settings: _Settings) -> list[_Realised]:
    """One fresh engine per block: the block, not the worker, fixes the engine's history."""
    with _factory(settings).open() as engine:
        return [_render(job, settings, engine) for job in block]


def _blocks(jobs: Sequence[_Job]) -> list[list[_Job]]:
    """Consecutive jobs of one voice, at most ENGINE_BLOCK each; a function of the job list only
    (never of the number of workers), so the output is too."""
    blocks: list[list[_Job]] = []
    for job in jobs:
        if not blocks or len(blocks[-1]) == ENGINE_BLOCK or blocks[-1][-1].voice != job.voice:
            blocks.append([])
        blocks[-1].append(job)
    return blocks


def _run_jobs(jobs: Sequence[_Job], settings: _Settings, workers: int, progress: bool):
    """Render all jobs, in worker processes when workers > 1; returns their _Realised in job
    order."""
    blocks = _blocks(jobs)
    realised: dict[int, _Realised] = {}
    with tqdm(total=len(jobs), desc="SynthEmo", unit="utt", disable=not progress) as bar:
        for done in _render_blocks(blocks, settings, min(workers, len(blocks))):
            realised.update((r.index, r) for r in done)
            bar.update(len(done))
    return [realised[job.index] for job in jobs]


def _render_blocks(blocks, settings: _Settings, workers: int) -> Iterator[list[_Realised]]:
    """Yield each block's results as it completes.

    eSpeak is not thread-safe, hence processes; forkserver/spawn rather than fork, because the
    parent may hold threads (torch, tqdm) that fork would copy mid-lock. A script that starts
    workers must guard its entry point with `if __name__ == "__main__":`. Workers end when this
    process dies (qat.io.exit_with_parent): a killed run leaves no orphans."""
    if workers <= 1:
        for block in blocks:
            yield _render_block(block, settings)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    try:
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=io.exit_with_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = [pool.submit(_render_block, block, settings) for block in blocks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()
    except BrokenProcessPool as err:
        raise RuntimeError(
            "SynthEmo worker processes died; if this runs from a script, put the call under "
            "`if __name__ == '__main__':`, or pass workers=1"
        ) from err


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------


def make_synthemo(
    out_dir: str | os.PathLike,
    speakers: Sequence[str] = DEFAULT_SPEAKERS,
    words: Sequence[str] = DEFAULT_WORDS,
    emotions: Sequence[str] = DEFAULT_EMOTIONS,
    repetitions: int = 2,
    prosody: Mapping[str, Sequence[float]] = PROSODY,
    jitter: Sequence[float] = JITTER,
    noise_dbfs: tuple[float, float] | None = (-50, -32),
    duration: float = 1.0,
    sample_rate: int = 16000,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[Utterance]:
    """Synthesise SynthEmo into `out_dir` (or reuse it if already built with this config).

    Every speaker says every word in every emotion `repetitions` times; each utterance gets its
    own prosody (the emotion's mean in `prosody` plus Gaussian `jitter` SDs, in the order rate,
    pitch, pitch range, volume), is trimmed, placed at a random offset in `duration` seconds and
    gets white noise at a random level in `noise_dbfs` (RMS dB re full scale; None: no noise).
    Returns the records in the manifest's (deterministic) order: speaker, emotion, word, rep.
    """
    return _build_corpus(
        out_dir,
        corpus=CORPUS,
        speakers=speakers,
        words=words,
        emotions=emotions,
        repetitions=repetitions,
        prosody=prosody,
        jitter=jitter,
        noise_dbfs=noise_dbfs,
        duration=duration,
        sample_rate=sample_rate,
        workers=workers,
        seed=seed,
        progress=progress,
    )


def make_orthogonal_corpus(
    out_dir: str | os.PathLike,
    speakers: Sequence[str] = MORE_SPEAKERS,
    words: Sequence[str] = DEFAULT_WORDS,
    repetitions: int = 4,
    seed: int = 0,
    jitter: Sequence[float] = JITTER,
    noise_dbfs: tuple[float, float] | None = (-50, -32),
    duration: float = 1.0,
    sample_rate: int = 16000,
    workers: int | None = None,
    progress: bool = True,
) -> list[Utterance]:
    """A neutral-prosody corpus (with jitter) for pretraining the word and speaker networks.

    Same synthesis as `make_synthemo` with the single emotion "neutral"; its corpus name
    ("synthemo_orthogonal") enters the random streams, so even with the same seed and speakers
    its utterances are not copies of SynthEmo's neutral ones.
    """
    return _build_corpus(
        out_dir,
        corpus=ORTHOGONAL_CORPUS,
        speakers=speakers,
        words=words,
        emotions=("neutral",),
        repetitions=repetitions,
        prosody={"neutral": PROSODY["neutral"]},
        jitter=jitter,
        noise_dbfs=noise_dbfs,
        duration=duration,
        sample_rate=sample_rate,
        workers=workers,
        seed=seed,
        progress=progress,
    )


def _build_corpus(out_dir, *, corpus, workers, progress, **params) -> list[Utterance]:
    """Check the parameters and the folder; reuse `out_dir` if it holds exactly this corpus,
    else, holding the folder's lock, build it there (replacing a SynthEmo corpus of another
    configuration: only the files that corpus consists of are deleted)."""
    out_dir = _check_out_dir(out_dir)
    config = _validated_config(corpus=corpus, **params)
    n_workers = _check_workers(workers)
    _check_speakers(config["speakers"])
    library, data_path = espeak.espeak_paths()
    with espeak.library_folder() as workdir:
        settings = _Settings(
            jitter=Prosody(*config["jitter"]),
            noise_dbfs=None if config["noise_dbfs"] is None else tuple(config["noise_dbfs"]),
            n_samples=_n_samples(config),
            sample_rate=config["sample_rate"],
            library=library,
            data_path=data_path,
            workdir=Path(workdir),
        )
        config["engine"] = {
            "espeak_ng": _check_voices_load(config["speakers"], _factory(settings)),
            "espeakng_loader": _package_version("espeakng-loader"),
        }
        digest = _hash(config)
        jobs = _jobs(out_dir, config)
        records = [_record(out_dir, job, config) for job in jobs]
        if _is_complete(out_dir, digest, jobs, config):
            return records  # reading only: works on a read-only copy too
        _stored_corpus(out_dir)  # a folder that is not ours: stop before creating anything
        io.ensure_folder(out_dir, "out_dir")
        waiting = f"waiting for another process that is building SynthEmo in {out_dir}"
        with io.locked(out_dir / LOCK_FILE, (lambda: tqdm.write(waiting)) if progress else None):
            stored = _stored_corpus(out_dir)  # again, now that no other build can run
            if _is_complete(out_dir, digest, jobs, config):
                return records  # another process built it while this one waited
            io.clean_stale_temporaries(out_dir)  # of a killed build
            _start_rebuild(out_dir, stored, config, digest, jobs)
            for folder in sorted({Path(job.path).parent for job in jobs}):
                folder.mkdir(parents=True, exist_ok=True)
            realised = _run_jobs(jobs, settings, n_workers, progress)
            write_manifest(records, out_dir / MANIFEST)
            _write_prosody_csv(out_dir / PROSODY_CSV, records, realised)
            _write_config(out_dir, config, digest, complete=True)
    return records


def _check_out_dir(out_dir) -> Path:
    if isinstance(out_dir, bytes):
        out_dir = os.fsdecode(out_dir)
    if not isinstance(out_dir, str | os.PathLike):
        raise ValueError(f"out_dir={out_dir!r}: expected a folder path")
    if isinstance(out_dir, str) and not out_dir.strip():
        raise ValueError(
            f"out_dir={out_dir!r}: expected a folder path, got an empty string (an unset "
            "shell variable?); pass '.' to mean the current folder"
        )
    return Path(out_dir).resolve()


def _validated_config(
    *,
    corpus,
    speakers,
    words,
    emotions,
    repetitions,
    prosody,
    jitter,
    noise_dbfs,
    duration,
    sample_rate,
    seed,
) -> dict:
    """Check every parameter (ValueError naming it) and return the JSON-able configuration."""
    speakers = [speakers] if isinstance(speakers, str) else list(speakers)
    if not speakers:
        raise ValueError("speakers=[]: expected at least one eSpeak voice, e.g. 'en-us+m3'")
    words = _check_words(words)
    emotions = _check_emotions(emotions, prosody)
    if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
        raise ValueError(f"repetitions={repetitions!r}: expected an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1000:
        raise ValueError(f"sample_rate={sample_rate!r}: expected an integer rate in Hz >= 1000")
    if not _is_number(duration) or not 0 < duration <= 60:
        raise ValueError(f"duration={duration!r}: expected seconds in (0, 60]")
    if round(duration * sample_rate) < 1:
        raise ValueError(f"duration={duration!r}: shorter than one sample at {sample_rate} Hz")
    return {
        "format_version": FORMAT_VERSION,
        "corpus": corpus,
        "speakers": speakers,
        "words": words,
        "emotions": emotions,
        "repetitions": repetitions,
        "prosody": {e: list(_check_prosody(f"prosody[{e!r}]", prosody[e])) for e in emotions},
        "jitter": list(_check_jitter(jitter)),
        "noise_dbfs": _check_noise(noise_dbfs),
        "duration": float(duration),
        "sample_rate": sample_rate,
        "seed": seed,
        "engine_block": ENGINE_BLOCK,
        "vad": {e: VAD.get(e) for e in emotions},
    }


def _is_number(x) -> bool:
    return (
        isinstance(x, int | float | np.integer | np.floating)
        and not isinstance(x, bool)
        and (math.isfinite(x))
    )


def _check_words(words) -> list[str]:
    words = [words] if isinstance(words, str) else list(words)
    if not words:
        raise ValueError("words=[]: expected a non-empty list of words")
    for word in words:
        if not isinstance(word, str) or not _WORD_PATTERN.fullmatch(word):
            raise ValueError(
                f"words: {word!r} is not a plain word; expected ASCII letters with optional "
                "inner hyphens (it becomes a file name)"
            )
    _check_unique("words", [w.lower() for w in words], words)
    return words


def _check_emotions(emotions, prosody: Mapping) -> list[str]:
    emotions = [emotions] if isinstance(emotions, str) else list(emotions)
    if not emotions:
        raise ValueError(f"emotions=[]: expected a non-empty subset of {sorted(prosody)}")
    for emotion in emotions:
        if emotion not in prosody:
            raise ValueError(
                f"emotions: {emotion!r} has no prosody rule; expected one of {sorted(prosody)} "
                "(or pass prosody={emotion: (rate, pitch, range, volume), ...})"
            )
        if emotion not in EMOTIONS:
            raise ValueError(f"emotions: {emotion!r} is not in the common vocabulary {EMOTIONS}")
    _check_unique("emotions", emotions, emotions)
    return emotions


def _check_prosody(name: str, values) -> Prosody:
    values = tuple(values) if isinstance(values, Sequence) else ()
    if len(values) != 4 or not all(_is_number(v) for v in values):
        raise ValueError(f"{name}={values!r}: expected 4 numbers (rate, pitch, range, volume)")
    for field, v, (low, high) in zip(Prosody._fields, values, PROSODY_LIMITS, strict=True):
        if not low <= v <= high:
            raise ValueError(f"{name}: {field}={v!r} is outside the engine's range [{low}, {high}]")
    return Prosody(*(float(v) for v in values))


def _check_jitter(jitter) -> Prosody:
    values = tuple(jitter) if isinstance(jitter, Sequence) else ()
    if len(values) != 4 or not all(_is_number(v) and v >= 0 for v in values):
        raise ValueError(
            f"jitter={jitter!r}: expected 4 non-negative standard deviations "
            "(rate, pitch, range, volume)"
        )
    return Prosody(*(float(v) for v in values))


def _check_noise(noise_dbfs) -> list[float] | None:
    if noise_dbfs is None:
        return None
    values = tuple(noise_dbfs) if isinstance(noise_dbfs, Sequence) else ()
    if len(values) != 2 or not all(_is_number(v) for v in values) or not values[0] <= values[1]:
        raise ValueError(
            f"noise_dbfs={noise_dbfs!r}: expected None or (low, high) in dB re full scale, "
            "low <= high, e.g. (-50, -32)"
        )
    return [float(v) for v in values]


def _check_workers(workers) -> int:
    if workers is None:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:
            return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}: expected None (all cores) or an integer >= 1")
    return workers


def _n_samples(config: dict) -> int:
    return round(config["duration"] * config["sample_rate"])


def _corpus_tag(corpus: str) -> int:
    return zlib.crc32(corpus.encode())


def _jobs(out_dir: Path, config: dict) -> list[_Job]:
    """All utterances in manifest order: speaker, emotion, word, repetition."""
    tag = _corpus_tag(config["corpus"])
    jobs = []
    for voice in config["speakers"]:
        for emotion in config["emotions"]:
            mean = Prosody(*config["prosody"][emotion])
            for word in config["words"]:
                for rep in range(config["repetitions"]):
                    index = len(jobs)
                    path = (
                        out_dir / WAV_DIR / speaker_dirname(voice) / emotion / f"{word}_{rep}.wav"
                    )
                    entropy = (config["seed"], tag, index)
                    jobs.append(_Job(index, entropy, voice, emotion, word, mean, os.fspath(path)))
    return jobs


def _record(out_dir: Path, job: _Job, config: dict) -> Utterance:
    vad = config["vad"][job.emotion] or (None, None, None)
    return Utterance(
        path=job.path,
        corpus=config["corpus"],
        emotion=job.emotion,
        speaker=job.voice,
        text=job.word,
        label=job.emotion,
        valence=vad[0],
        arousal=vad[1],
        dominance=vad[2],
        duration=_n_samples(config) / config["sample_rate"],
        uid=Path(job.path).relative_to(out_dir).with_suffix("").as_posix(),
    )


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _read_config(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / CONFIG_JSON).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(out_dir: Path, digest: str, jobs: Sequence[_Job], config: dict) -> bool:
    """Same config hash, marked complete, and every file present with the expected size."""
    stored = _read_config(out_dir)
    if not stored or stored.get("hash") != digest or not stored.get("complete"):
        return False
    if not (out_dir / MANIFEST).is_file() or not (out_dir / PROSODY_CSV).is_file():
        return False
    size = _WAV_HEADER_BYTES + 2 * _n_samples(config)
    try:
        return all(os.stat(job.path).st_size == size for job in jobs)
    except OSError:
        return False


def _is_kit_scratch(name: str) -> bool:
    """The lock file and qat.io temporaries: what the kit may leave in a folder it owns."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(io.TMP_SUFFIX))


def _stored_corpus(out_dir: Path) -> dict | None:
    """The stored configuration if `out_dir` holds a SynthEmo corpus (its synthemo_config.json,
    written before anything else, is the kit's mark), None if the folder is new or empty.
    Anything else raises ValueError naming a file: the kit writes only into folders it owns."""
    where = f"out_dir={os.fspath(out_dir)!r}"
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise ValueError(f"{where} is a file; expected a new, empty or SynthEmo folder")
    stored = _read_config(out_dir)
    if (
        isinstance(stored, dict)
        and isinstance(stored.get("hash"), str)
        and isinstance(stored.get("config"), dict)
        and stored["config"].get("corpus") in (CORPUS, ORTHOGONAL_CORPUS)
    ):
        return stored
    entries = sorted(p.name for p in out_dir.iterdir() if not _is_kit_scratch(p.name))
    if not entries:
        return None
    clash = [name for name in (MANIFEST, PROSODY_CSV, CONFIG_JSON, WAV_DIR) if name in entries]
    if clash:
        raise ValueError(
            f"{where}: {out_dir / clash[0]} exists and was not written by make_synthemo (the "
            f"folder has no SynthEmo {CONFIG_JSON}); it would be overwritten. Expected a new, "
            "empty or SynthEmo folder: choose another out_dir, or move the file away"
        )
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise ValueError(
        f"{where} is not empty ({shown}) and holds no SynthEmo corpus (no {CONFIG_JSON}); "
        "expected a new, empty or SynthEmo folder"
    )


def _previous_files(out_dir: Path, stored: dict | None) -> set[Path]:
    """The wav files of the corpus stored in `out_dir` (from its configuration, which also
    lists them when a build was interrupted before its manifest), all inside out_dir/wav."""
    if stored is None:
        return set()
    try:
        paths = {Path(job.path) for job in _jobs(out_dir, stored["config"])}
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"out_dir={os.fspath(out_dir)!r} holds a SynthEmo corpus whose {CONFIG_JSON} this "
            f"version cannot read ({type(err).__name__}: {err}); choose another out_dir"
        ) from err
    wav_dir = out_dir / WAV_DIR
    return {
        p for p in paths if p.suffix == ".wav" and Path(os.path.normpath(p)).is_relative_to(wav_dir)
    }


def _start_rebuild(
    out_dir: Path, stored: dict | None, config: dict, digest: str, jobs: Sequence[_Job]
) -> None:
    """Mark the folder incomplete first (a crash leaves it marked), then delete the previous
    corpus: the files its configuration lists, and nothing else. Files a user put into wav/
    stay; one that a new utterance would overwrite stops the build, named."""
    previous = _previous_files(out_dir, stored)
    for job in jobs:
        path = Path(job.path)
        if path not in previous and (path.exists() or path.is_symlink()):
            raise ValueError(
                f"out_dir={os.fspath(out_dir)!r}: {path} exists and is not part of the SynthEmo "
                "corpus stored there; it would be overwritten. Move it away or choose another "
                "out_dir"
            )
    _write_config(out_dir, config, digest, complete=False)
    for name in (MANIFEST, PROSODY_CSV):
        (out_dir / name).unlink(missing_ok=True)
    for path in previous:
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
    # the previous corpus's folders that are now empty, deepest first (rmdir keeps the others)
    folders = {folder for path in previous for folder in path.parents if folder != out_dir}
    folders = {folder for folder in folders if folder.is_relative_to(out_dir / WAV_DIR)}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _write_config(out_dir: Path, config: dict, digest: str, complete: bool) -> None:
    # not hashed: a numpy or soxr upgrade may change samples, but not what the corpus is
    provenance = {name: _package_version(name) for name in ("numpy", "soxr")}
    payload = {"hash": digest, "complete": complete, "config": config, "provenance": provenance}
    io.write_text(out_dir / CONFIG_JSON, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _write_prosody_csv(path: Path, records: Sequence[Utterance], realised) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["uid", *Prosody._fields, "offset_s", "noise_dbfs", "engine_seed"])
            for record, r in zip(records, realised, strict=True):
                noise = "" if r.noise_dbfs is None else f"{r.noise_dbfs:.3f}"
                row = [record.uid, *r.prosody, f"{r.offset_s:.5f}", noise, r.engine_seed]
                writer.writerow(row)

    io.write_atomic(path, write)
