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

Determinism: eSpeak NG keeps synthesis state in static variables that survive
`espeak_Initialize` (glottal phase, pitch smoothing, flutter, ...), so a word's samples depend
on what the engine said before. So the utterances are cut into fixed blocks (ENGINE_BLOCK
consecutive utterances of one voice) and each block is synthesised by a freshly loaded private
copy of the library (dlopen, synthesise the block, dlclose); all randomness comes from numpy
Generators seeded by (seed, corpus, utterance index). The output is byte-identical for a given
seed whatever the number of worker processes and whichever worker renders which block. (One
fresh engine per utterance would work too, but loading the English dictionary into a fresh
engine costs ~4 ms, three times the synthesis of a word; the history only shifts the glottal
phase.)
"""

from __future__ import annotations

import _ctypes
import contextlib
import csv
import ctypes
import ctypes.util
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import wave
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soxr
from tqdm.auto import tqdm

from qat.data.records import EMOTIONS, Utterance, write_manifest


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

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAMETER = Prosody(rate=1, pitch=3, pitch_range=4, volume=2)  # espeakRATE, PITCH, RANGE, VOLUME
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


def espeak_paths() -> tuple[Path, Path]:
    """(library, data folder) of the eSpeak NG shipped in the `espeakng-loader` wheel."""
    try:
        import espeakng_loader
    except ImportError as err:
        raise RuntimeError(
            "SynthEmo needs the espeakng-loader package (libespeak-ng and its voice data); "
            "install it with `pip install espeakng-loader`"
        ) from err
    return Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())


def _load_library(path: str | os.PathLike, origin: str | os.PathLike | None = None) -> ctypes.CDLL:
    """dlopen libespeak-ng privately (RTLD_LOCAL) and declare the signatures used here;
    `origin` is the file `path` was copied from, named in the error."""
    try:
        lib = ctypes.CDLL(os.fspath(path), mode=getattr(os, "RTLD_LOCAL", 0))
        lib.espeak_Initialize  # noqa: B018 - fail here, not mid-synthesis, if it is not eSpeak
    except (OSError, AttributeError) as err:
        tried = f"{origin} (copied to {path})" if origin else f"{path}"
        raise RuntimeError(f"could not load the eSpeak NG library from {tried}: {err}") from err
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        *(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint),
        *(ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p),
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib


@functools.cache
def _libc_srand() -> Callable[[int], None] | None:
    """libc's srand: parts of eSpeak (breath and Klatt noise) draw from the process-wide rand()."""
    try:
        srand = ctypes.CDLL(None).srand  # the C library already linked into this process
    except (OSError, AttributeError, TypeError):
        name = ctypes.util.find_library("c") or ctypes.util.find_library("msvcrt")
        try:
            srand = ctypes.CDLL(name).srand
        except (OSError, AttributeError, TypeError):
            return None
    srand.argtypes = [ctypes.c_uint]
    srand.restype = None
    return srand


class _Engine:
    """One freshly loaded eSpeak NG instance; synthesises words into int16 samples."""

    def __init__(self, lib: ctypes.CDLL, data_path: Path):
        self.lib = lib
        self._chunks: list[np.ndarray] = []
        self._voice: str | None = None
        if not (data_path / "phontab").is_file():
            raise RuntimeError(f"no eSpeak NG voice data (phontab) in {data_path}")
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(data_path), _INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with the voice data in {data_path}")
        # keep a reference: ctypes frees the trampoline with the Python object
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        self._srand = _libc_srand()

    def _collect(self, samples, n_samples, _events) -> int:
        if samples and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(n_samples,)).copy())
        return 0  # 0 = go on synthesising

    def set_voice(self, voice: str) -> bool:
        # reloading the same voice costs as much as synthesising a short word; skip it
        if voice != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                return False
            self._voice = voice
        return True

    def synthesise(self, text: str, voice: str, prosody: Prosody, seed: int) -> np.ndarray:
        """int16 samples at `self.sample_rate` of `text` spoken by `voice` with `prosody`."""
        if not self.set_voice(voice):
            raise RuntimeError(f"eSpeak NG could not load voice {voice!r}")
        for parameter, value in zip(_PARAMETER, prosody, strict=True):
            if self.lib.espeak_SetParameter(parameter, int(value), 0) != 0:
                raise RuntimeError(f"espeak_SetParameter({parameter}, {value}) failed")
        self.lib.espeak_ng_SetRandSeed(seed)
        if self._srand is not None:
            self._srand(seed)
        self._chunks.clear()
        encoded = text.encode() + b"\0"
        status = self.lib.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed (status {status}) on {text!r} ({voice})")
        if not self._chunks:
            raise RuntimeError(f"eSpeak NG produced no audio for {text!r} ({voice})")
        return np.concatenate(self._chunks)

    def version(self) -> str:
        return self.lib.espeak_Info(None).decode()


class _EngineFactory:
    """Hands out freshly loaded engines: a private copy of the library, dlopened and dlclosed
    around each use (a block of utterances), so no synthesis state leaks from one use into the
    next, nor in from anything else in the process that loaded libespeak-ng.

    Copies live in `workdir` (owned by the caller); a copy is only replaced if the platform
    refuses to unload it, which would otherwise hand back the used instance."""

    def __init__(self, library: Path, data_path: Path, workdir: Path):
        self.library, self.data_path, self.workdir = Path(library), Path(data_path), Path(workdir)
        self._copy: Path | None = None

    def _fresh_copy(self) -> Path:
        """A copy under a name no other process or factory uses (never overwrite a loaded one)."""
        try:
            with (
                tempfile.NamedTemporaryFile(
                    dir=self.workdir, prefix="libespeak-ng-", suffix=".so", delete=False
                ) as target,
                open(self.library, "rb") as source,
            ):
                shutil.copyfileobj(source, target)
        except OSError as err:
            msg = f"could not load the eSpeak NG library from {self.library}: {err}"
            raise RuntimeError(msg) from err
        return Path(target.name)

    @contextlib.contextmanager
    def open(self) -> Iterator[_Engine]:
        if self._copy is None:
            self._copy = self._fresh_copy()
        lib = _load_library(self._copy, origin=self.library)
        engine = None
        try:
            engine = _Engine(lib, self.data_path)
            yield engine
        finally:
            if engine is not None:
                lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)
            if _still_loaded(self._copy):
                self._copy = None  # next engine comes from a new copy


def _still_loaded(path: Path) -> bool:
    if not hasattr(os, "RTLD_NOLOAD"):
        return True  # cannot tell: assume the worst and use a new copy
    try:
        handle = ctypes.CDLL(os.fspath(path), mode=os.RTLD_NOLOAD)
    except OSError:
        return False
    _ctypes.dlclose(handle._handle)  # RTLD_NOLOAD took a reference
    return True


# ---------------------------------------------------------------------------------------------
# Voices
# ---------------------------------------------------------------------------------------------


def list_voices() -> list[str]:
    """The voice variants shipped with the engine ("m3", "f2", "klatt4", ...); a speaker is
    `<language>+<variant>`, e.g. "en-us+m3"."""
    _, data = espeak_paths()
    return sorted(p.name for p in (data / "voices" / "!v").iterdir() if p.is_file())


def list_languages() -> list[str]:
    """The language/accent voices shipped with the engine, lower-cased ("en", "en-us", ...)."""
    _, data = espeak_paths()
    return sorted({p.name.lower() for p in (data / "lang").rglob("*") if p.is_file()})


def speaker_dirname(voice: str) -> str:
    """A file-system-safe folder name for a voice: "en-us+m3" -> "en-us_m3"."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", voice)


def _check_speakers(speakers: Sequence[str]) -> None:
    """Each speaker must be <language>[+<variant>] with both parts shipped: eSpeak itself
    silently ignores an unknown variant and would give a duplicate speaker."""
    languages, variants = set(list_languages()), set(list_voices())
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


def _check_voices_load(speakers: Sequence[str], factory: _EngineFactory) -> str:
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


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling with libsoxr (high quality, deterministic, and light to import in
    every worker process, unlike scipy.signal)."""
    audio = np.asarray(audio, np.float64)
    if orig_sr == target_sr:
        return audio
    return soxr.resample(audio, orig_sr, target_sr, quality="HQ")


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
    """Mono PCM16 WAV, written to a temporary name and renamed (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with wave.open(os.fspath(tmp), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(sample_rate)
        fh.writeframes(np.ascontiguousarray(pcm16, "<i2").tobytes())
    os.replace(tmp, path)


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


_FACTORY: _EngineFactory | None = None  # one per process, created on first use


def _factory(settings: _Settings) -> _EngineFactory:
    global _FACTORY
    key = (settings.library, settings.data_path, settings.workdir)
    if _FACTORY is None or (_FACTORY.library, _FACTORY.data_path, _FACTORY.workdir) != key:
        _FACTORY = _EngineFactory(settings.library, settings.data_path, settings.workdir)
    return _FACTORY


def _render(job: _Job, settings: _Settings, engine: _Engine) -> _Realised:
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
    workers must guard its entry point with `if __name__ == "__main__":`."""
    if workers <= 1:
        for block in blocks:
            yield _render_block(block, settings)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
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
    """Check the parameters, then reuse `out_dir` if it holds exactly this corpus, else build it
    there (clearing a SynthEmo corpus of another configuration)."""
    out_dir = Path(out_dir).resolve()
    config = _validated_config(corpus=corpus, **params)
    n_workers = _check_workers(workers)
    _check_speakers(config["speakers"])
    library, data_path = espeak_paths()
    with tempfile.TemporaryDirectory(prefix="qat-espeak-") as workdir:
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
            return records
        _start_rebuild(out_dir, config, digest)
        for folder in sorted({Path(job.path).parent for job in jobs}):
            folder.mkdir(parents=True, exist_ok=True)
        realised = _run_jobs(jobs, settings, n_workers, progress)
    write_manifest(records, out_dir / MANIFEST)
    _write_prosody_csv(out_dir / PROSODY_CSV, records, realised)
    _write_config(out_dir, config, digest, complete=True)
    return records


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


def _start_rebuild(out_dir: Path, config: dict, digest: str) -> None:
    """Mark the folder incomplete first (a crash leaves it marked), then clear the old corpus.

    Refuses to delete a wav/ folder that this module did not write."""
    wav_dir = out_dir / WAV_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    if _read_config(out_dir) is None and wav_dir.exists() and any(wav_dir.iterdir()):
        raise ValueError(
            f"out_dir={os.fspath(out_dir)!r} holds a {WAV_DIR}/ folder that make_synthemo did not "
            f"write (no {CONFIG_JSON}); expected an empty or SynthEmo folder"
        )
    _write_config(out_dir, config, digest, complete=False)
    shutil.rmtree(wav_dir, ignore_errors=True)
    for name in (MANIFEST, PROSODY_CSV):
        (out_dir / name).unlink(missing_ok=True)


def _write_config(out_dir: Path, config: dict, digest: str, complete: bool) -> None:
    tmp = out_dir / (CONFIG_JSON + ".tmp")
    # not hashed: a numpy or soxr upgrade may change samples, but not what the corpus is
    provenance = {name: _package_version(name) for name in ("numpy", "soxr")}
    payload = {"hash": digest, "complete": complete, "config": config, "provenance": provenance}
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / CONFIG_JSON)


def _write_prosody_csv(path: Path, records: Sequence[Utterance], realised) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", *Prosody._fields, "offset_s", "noise_dbfs", "engine_seed"])
        for record, r in zip(records, realised, strict=True):
            noise = "" if r.noise_dbfs is None else f"{r.noise_dbfs:.3f}"
            writer.writerow([record.uid, *r.prosody, f"{r.offset_s:.5f}", noise, r.engine_seed])
    os.replace(tmp, path)
