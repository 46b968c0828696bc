"""The eSpeak NG engine, driven through ctypes: the library and voice data of the
`espeakng-loader` wheel, one freshly loaded private copy of the library per use, and the voice
lists.

eSpeak NG keeps synthesis state in static variables that survive `espeak_Initialize` (glottal
phase, pitch smoothing, flutter, ...), so what a word sounds like depends on what the engine
said before. `EngineFactory` therefore hands out engines from a private copy of the library,
dlopened and dlclosed around each use; the copies live in a per-process temporary folder
(`library_folder`), and folders left by a killed process are removed at the next start.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from qat import io

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
# espeakRATE, espeakPITCH, espeakRANGE, espeakVOLUME: the order of a prosody 4-tuple
# (rate in words per minute, pitch level 0-100, pitch range 0-100, volume 0-200).
PROSODY_PARAMETERS = (1, 3, 4, 2)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
# The per-process folder of library copies: <tmp>/qat-espeak-<pid>-<random>.
LIBRARY_FOLDER_PREFIX = "qat-espeak-"


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


class Engine:
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

    def synthesise(self, text: str, voice: str, prosody: Sequence[float], seed: int) -> np.ndarray:
        """int16 samples at `self.sample_rate` of `text` spoken by `voice` with `prosody`
        (rate, pitch, pitch range, volume; see PROSODY_PARAMETERS)."""
        if not self.set_voice(voice):
            raise RuntimeError(f"eSpeak NG could not load voice {voice!r}")
        for parameter, value in zip(PROSODY_PARAMETERS, prosody, strict=True):
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


class EngineFactory:
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
    def open(self) -> Iterator[Engine]:
        if self._copy is None:
            self._copy = self._fresh_copy()
        lib = _load_library(self._copy, origin=self.library)
        engine = None
        try:
            engine = Engine(lib, self.data_path)
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


def list_voices() -> list[str]:
    """The voice variants shipped with the engine ("m3", "f2", "klatt4", ...); a speaker is
    `<language>+<variant>`, e.g. "en-us+m3"."""
    _, data = espeak_paths()
    return sorted(p.name for p in (data / "voices" / "!v").iterdir() if p.is_file())


def list_languages() -> list[str]:
    """The language/accent voices shipped with the engine, lower-cased ("en", "en-us", ...)."""
    _, data = espeak_paths()
    return sorted({p.name.lower() for p in (data / "lang").rglob("*") if p.is_file()})


@contextlib.contextmanager
def library_folder() -> Iterator[Path]:
    """A private folder for this process's library copies, removed on exit; the folders of
    processes that no longer run (a run killed with SIGKILL) are removed first."""
    with io.temporary_folder(LIBRARY_FOLDER_PREFIX) as folder:
        yield Path(folder)
