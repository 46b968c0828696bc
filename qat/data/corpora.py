"""Corpus loaders: each SER corpus parsed from its official layout into `Utterance` records.

One function per corpus; its docstring quotes the corpus's layout and naming convention and
its parsing rules (code tables, a file-name pattern) sit right above it. `load_corpus(name,
root)` is the single entry point. Every loader reads each file's header (`audio.probe`), so
a missing, empty or corrupt file is reported when the corpus is listed: with
on_error="raise" the first problem raises an error naming the file; with on_error="skip"
problem files are left out, a warning summarises them and `Corpus.skipped` lists them all.
The same policy covers file names whose codes cannot be parsed (unknown emotion code, name
not following the convention), symbolic links that cannot be followed (dangling, or a loop)
and a second path to a file already listed (a symbolic or hard link to it: each file enters
once, so that one utterance can never land in both train and test). Problems with the
corpus as a whole (missing root, no matching files, a manifest that is not strict CSV or
has missing or repeated columns, a file listed twice in a manifest) always raise.

Records come out sorted by uid (the path relative to the root, without extension), so their
order is the same on every machine; the manifest keeps its own row order.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import inspect
import logging
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from io import StringIO
from pathlib import Path

from qat import io
from qat.data.audio import AudioError, probe
from qat.data.records import EMOTIONS, MANIFEST_COLUMNS, REQUIRED_MANIFEST_COLUMNS, Utterance
from qat.progress import tqdm

logger = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
_PROGRESS_MIN_FILES = 500  # below this, probing takes well under a second: no bar


class Corpus(list):
    """The utterances of one corpus (a plain list of `Utterance`), plus what was left out.

    `skipped`: (path, reason) for every file that could not be used (on_error="skip"):
    unreadable, a name that cannot be parsed, a broken symbolic link, or a second path to a
    file already listed.
    `dropped`: {reason: count} for utterances excluded by design, not by error (IEMOCAP
    labels outside the chosen classes or without annotator agreement, RAVDESS song files).
    """

    def __init__(
        self,
        records: Iterable[Utterance] = (),
        *,
        name: str = "",
        root: str = "",
        skipped: Iterable[tuple[str, str]] = (),
        dropped: dict[str, int] | None = None,
    ):
        super().__init__(records)
        self.name = name
        self.root = str(root)
        self.skipped = list(skipped)
        self.dropped = dict(dropped or {})

    def __repr__(self) -> str:
        # A list repr of thousands of records is useless in a notebook; summarise instead.
        return (
            f"Corpus({self.name!r}, {len(self)} utterances, {len(self.skipped)} skipped, "
            f"dropped={self.dropped}, root={self.root!r})"
        )


class CorpusEntryError(ValueError):
    """One file or annotation line that cannot be turned into a record."""


# ---------------------------------------------------------------------------------------------
# Shared machinery: root checks, file discovery, the per-entry error policy.


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _corpus_root(root: str | os.PathLike, corpus: str, layout: str) -> Path:
    """The root as an absolute folder path (symlinks kept, so uids stay as the user sees them)."""
    path = Path(os.path.abspath(Path(root).expanduser()))
    if not path.exists():
        raise FileNotFoundError(f"{corpus} root {path} does not exist; expected {layout}")
    if not path.is_dir():
        raise ValueError(f"{corpus} root {path} is a file; expected a folder holding {layout}")
    return path


def link_problem(path: Path) -> str | None:
    """Why the symbolic link `path` cannot be followed (dangling, or a loop); None when it
    can, or when `path` is not a link."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"dangling symbolic link to {os.readlink(path)!r}: its target does not exist"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"symbolic link loop: following {os.readlink(path)!r} never reaches a file"
        return f"symbolic link that cannot be followed ({err.strerror or err})"
    return None


def _require(found: Sequence, corpus: str, root: Path, layout: str) -> None:
    if not found:
        raise FileNotFoundError(
            f"no {corpus} audio found under {root}; expected the official layout {layout}"
        )


def _progress(items: Sequence, corpus: str) -> Iterable:
    return tqdm(
        items,
        desc=f"reading {corpus} headers",
        unit="file",
        leave=False,
        disable=len(items) < _PROGRESS_MIN_FILES,
    )


def _match(pattern: re.Pattern, path: Path, convention: str) -> re.Match:
    found = pattern.fullmatch(path.name)
    if found is None:
        raise CorpusEntryError(
            f"{path}: file name does not follow the naming convention {convention}"
        )
    return found


def _decode(table: dict[str, str], code: str, what: str, where: str | Path) -> str:
    """Look a label code up in a corpus's code table; an unknown code names file and code."""
    try:
        return table[code]
    except KeyError:
        raise CorpusEntryError(
            f"{where}: unknown {what} code {code!r}; expected one of {sorted(table)}"
        ) from None


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file `path` leads to, following links; None if it cannot be
    read (then probing reports why)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _duplicate_error(duplicate: Path, kept: Path) -> CorpusEntryError:
    link = duplicate.is_symlink() or kept.is_symlink()
    return CorpusEntryError(
        f"{duplicate}: the same file as {kept} ({'a symbolic' if link else 'a hard'} link); a "
        "file may enter a corpus only once, or the same utterance could land in both train "
        "and test: remove one of the two paths (with on_error='skip' the file is kept once, "
        "under its own path rather than a link's)"
    )


class _Collector:
    """Accumulates records of one corpus and applies the on_error policy to each entry."""

    def __init__(self, corpus: str, root: Path, on_error: str):
        _check_on_error(on_error)
        self.corpus, self.root, self.on_error = corpus, root, on_error
        self.records: list[Utterance] = []
        self._identities: dict[tuple[int, int], int] = {}  # (device, inode) -> record index
        self.skipped: list[tuple[str, str]] = []
        self.dropped: Counter[str] = Counter()

    def _fail(self, where: str | Path, err: Exception) -> None:
        if self.on_error == "raise":
            raise err
        self.skipped.append((str(where), str(err)))

    @contextlib.contextmanager
    def entry(self, where: str | Path) -> Iterator[None]:
        """Parse one file or annotation line; in skip mode a bad one is recorded, not raised."""
        try:
            yield
        except CorpusEntryError as err:
            self._fail(where, err)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    # --- discovery: what the loaders list, with broken symbolic links reported, not dropped
    def _entries(self, folder: Path) -> list[Path]:
        """What a folder holds ([] if it is not a folder); a folder that cannot be listed
        (no read permission, an I/O error) is a problem entry, so on_error='skip' skips it."""
        if not folder.is_dir():
            return []
        try:
            return list(folder.iterdir())
        except OSError as err:
            reason = f"folder cannot be listed ({err.strerror or err})"
            self._fail(folder, CorpusEntryError(f"{folder}: {reason}"))
            return []

    def subfolders(self, folder: Path, pattern: str = ".*") -> list[Path]:
        """Visible subfolders whose name matches `pattern`, sorted by name. A symbolic link
        with such a name (and no file extension) that cannot be followed is a problem entry."""
        found = []
        for p in self._entries(folder):
            if p.name.startswith(".") or not re.fullmatch(pattern, p.name):
                continue
            if p.is_dir():
                found.append(p)
            elif not p.suffix and (problem := link_problem(p)):
                self._fail(p, CorpusEntryError(f"{p}: {problem}"))
        return sorted(found)

    def files(self, folders: Iterable[Path], suffix: str = ".wav") -> list[Path]:
        """Visible files ending in `suffix` (any case) directly inside each folder, sorted.
        Hidden names (README is not audio; .DS_Store and macOS '._x.wav' twins start with a
        dot) are ignored; a symbolic link that cannot be followed is a problem entry."""
        found = []
        for folder in folders:
            for p in self._entries(folder):
                if p.name.startswith(".") or p.suffix.lower() != suffix:
                    continue
                if problem := link_problem(p):
                    self._fail(p, CorpusEntryError(f"{p}: {problem}"))
                elif p.is_file():
                    found.append(p)
        return sorted(found)

    # --- records
    def add(self, path: Path, *, uid: str | None = None, corpus: str | None = None, **fields):
        """Probe the file's header and append its record (duration from the header).

        A path that is a broken symbolic link, or that is the same file as a path already
        added (a symbolic or hard link to it), is a problem entry: each file enters a corpus
        once, so that no utterance can land in both train and test. In skip mode the real
        file's own path is kept, whichever of the two came first.
        """
        if problem := link_problem(path):
            self._fail(path, CorpusEntryError(f"{path}: {problem}"))
            return
        identity = _file_identity(path)
        earlier = self._identities.get(identity) if identity else None
        if earlier is not None and not self._replaces(Path(self.records[earlier].path), path):
            self._fail(path, _duplicate_error(path, Path(self.records[earlier].path)))
            return
        try:
            info = probe(path)
        except AudioError as err:
            self._fail(path, err)
            return
        if uid is None:
            uid = path.relative_to(self.root).with_suffix("").as_posix()
        record = Utterance(
            path=str(path), corpus=corpus or self.corpus, duration=info.duration, uid=uid, **fields
        )
        if earlier is None:
            if identity:
                self._identities[identity] = len(self.records)
            self.records.append(record)
            return
        # The real file came after a link to it: keep the real path, report the link.
        link = Path(self.records[earlier].path)
        self.records[earlier] = record
        self._fail(link, _duplicate_error(link, path))

    def _replaces(self, kept: Path, new: Path) -> bool:
        """Whether `new` should replace the already added `kept`, the same file (skip mode
        only: in raise mode the second path raises whichever it is)."""
        return self.on_error == "skip" and kept.is_symlink() and not new.is_symlink()

    def result(self, sort: bool = True) -> Corpus:
        records = sorted(self.records, key=lambda r: r.uid) if sort else self.records
        _check_unique_uids(records, self.corpus)
        if self.skipped:
            shown = "; ".join(f"{where}: {why}" for where, why in self.skipped[:5])
            more = f" (and {len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
            warnings.warn(
                f"{self.corpus}: skipped {len(self.skipped)} file(s) that could not be used, "
                f"see Corpus.skipped: {shown}{more}",
                stacklevel=3,
            )
        if self.dropped:
            logger.info("%s: dropped by design %s", self.corpus, dict(self.dropped))
        return Corpus(
            records,
            name=self.corpus,
            root=str(self.root),
            skipped=self.skipped,
            dropped=dict(self.dropped),
        )


def _check_unique_uids(records: Sequence[Utterance], corpus: str) -> None:
    counts = Counter(r.uid for r in records)
    repeated = sorted(uid for uid, n in counts.items() if n > 1)
    if repeated:
        raise ValueError(
            f"{corpus}: {len(repeated)} duplicate utterance id(s): {io.summarise(repeated)}; "
            "uids must be unique"
        )


# ---------------------------------------------------------------------------------------------
# IEMOCAP

IEMOCAP_CODES = {
    "neu": "neutral",
    "ang": "angry",
    "hap": "happy",
    "sad": "sad",
    "exc": "excited",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgust",
}
# "xxx" = annotators did not agree, "oth" = other: neither is an emotion class.
IEMOCAP_NO_CLASS = ("xxx", "oth")
IEMOCAP_FOUR_CLASSES = ("neutral", "angry", "happy", "sad")
_IEMOCAP_LAYOUT = (
    "root/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt and "
    "root/Session{1..5}/sentences/wav/<dialog>/<utterance>.wav"
)
_IEMOCAP_LINE = re.compile(
    r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(?P<utt>\S+)\s+(?P<code>\S+)\s+"
    r"\[\s*(?P<v>[^,\]]+?)\s*,\s*(?P<a>[^,\]]+?)\s*,\s*(?P<d>[^,\]]+?)\s*\]\s*"
)
_IEMOCAP_UTT = re.compile(r"(?P<session>Ses\d\d)[FM]_(?P<dialog_rest>.+)_(?P<gender>[FM])\d+")


def load_iemocap(
    root: str | os.PathLike,
    on_error: str = "raise",
    *,
    emotions: Sequence[str] | None = IEMOCAP_FOUR_CLASSES,
    merge_excited: bool = False,
) -> Corpus:
    """IEMOCAP (USC): five sessions of dyadic dialogues, 10 actors, one F and one M per session.

    Layout of IEMOCAP_full_release:
        Session1/dialog/EmoEvaluation/Ses01F_impro01.txt   (one file per dialog)
        Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
    Each utterance's line in the EmoEvaluation file reads
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
    = [start - end] turn name, consensus label, [valence, activation, dominance] on 1-5.
    Labels: neu ang hap sad exc fru sur fea dis, plus xxx (no agreement) and oth (other).
    Utterance ids: Ses01F_impro01_M003 = session 01, dialog with the female actor wearing
    markers, utterance 003 spoken by the male actor, so the speaker is "Ses01M".

    Records: text = utterance id, label = the IEMOCAP code, valence/arousal/dominance from
    the line. `emotions` keeps only those classes (default the usual 4-class set neu/ang/
    hap/sad; None keeps every labelled class); `merge_excited=True` relabels exc as happy
    (the common 4-class "hap+exc" setup). Excluded utterances are counted in `.dropped`.
    """
    root = _corpus_root(root, "iemocap", _IEMOCAP_LAYOUT)
    if emotions is not None:
        unknown = sorted(set(emotions) - set(EMOTIONS))
        if unknown:
            raise ValueError(f"emotions {unknown} are not in the common vocabulary {EMOTIONS}")
    collector = _Collector("iemocap", root, on_error)
    sessions = collector.subfolders(root, r"Session\d+")
    evaluations = collector.files(
        [session / "dialog" / "EmoEvaluation" for session in sessions], suffix=".txt"
    )
    _require(evaluations, "iemocap", root, _IEMOCAP_LAYOUT)
    for evaluation in _progress(evaluations, "iemocap"):
        session = evaluation.parents[2]
        lines = evaluation.read_text(encoding="utf-8", errors="replace").splitlines()
        for lineno, line in enumerate(lines, start=1):
            if not line.startswith("["):  # header, blank and per-annotator lines
                continue
            where = f"{evaluation}:{lineno}"
            with collector.entry(where):
                _add_iemocap_line(collector, session, line, where, emotions, merge_excited)
    return collector.result()


def _add_iemocap_line(
    collector: _Collector,
    session: Path,
    line: str,
    where: str,
    emotions: Sequence[str] | None,
    merge_excited: bool,
) -> None:
    found = _IEMOCAP_LINE.fullmatch(line.rstrip())
    if found is None:
        raise CorpusEntryError(
            f"{where}: malformed evaluation line {line!r}; expected "
            "'[start - end]<TAB><utterance id><TAB><label><TAB>[valence, activation, dominance]'"
        )
    utt, code = found["utt"], found["code"]
    if code in IEMOCAP_NO_CLASS:
        collector.drop(code)
        return
    emotion = _decode(IEMOCAP_CODES, code, "IEMOCAP emotion", where)
    if merge_excited and code == "exc":
        emotion = "happy"
    if emotions is not None and emotion not in emotions:
        collector.drop(code)
        return
    parts = _IEMOCAP_UTT.fullmatch(utt)
    if parts is None:
        raise CorpusEntryError(
            f"{where}: utterance id {utt!r} does not look like Ses01F_impro01_M003"
        )
    try:
        vad = [float(found[k]) for k in ("v", "a", "d")]
    except ValueError:
        raise CorpusEntryError(f"{where}: valence/activation/dominance are not numbers") from None
    dialog = utt.rsplit("_", 1)[0]
    collector.add(
        session / "sentences" / "wav" / dialog / f"{utt}.wav",
        emotion=emotion,
        speaker=parts["session"] + parts["gender"],
        text=utt,
        label=code,
        valence=vad[0],
        arousal=vad[1],
        dominance=vad[2],
    )


# ---------------------------------------------------------------------------------------------
# RAVDESS

RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
_RAVDESS_MODALITIES = {"01": "full-AV", "02": "video-only", "03": "audio-only"}
_RAVDESS_CHANNELS = {"01": "speech", "02": "song"}
_RAVDESS_INTENSITIES = {"01": "normal", "02": "strong"}
_RAVDESS_REPETITIONS = {"01": "1st", "02": "2nd"}
_RAVDESS_LAYOUT = "root/Actor_XX/03-01-06-01-02-01-12.wav (XX = 01..24)"
_RAVDESS_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav", re.IGNORECASE)
_RAVDESS_CONVENTION = (
    "modality-vocalchannel-emotion-intensity-statement-repetition-actor.wav, "
    "e.g. 03-01-06-01-02-01-12.wav"
)


def load_ravdess(
    root: str | os.PathLike, on_error: str = "raise", *, include_song: bool = False
) -> Corpus:
    """RAVDESS (Ryerson Audio-Visual Database of Emotional Speech and Song), 24 actors.

    Layout of Audio_Speech_Actors_01-24.zip: Actor_01/ ... Actor_24/, each holding files
    named with seven two-digit fields, e.g. 03-01-06-01-02-01-12.wav:
        modality (01 = full-AV, 02 = video-only, 03 = audio-only)
        vocal channel (01 = speech, 02 = song)
        emotion (01 = neutral, 02 = calm, 03 = happy, 04 = sad, 05 = angry, 06 = fearful,
                 07 = disgust, 08 = surprised)
        intensity (01 = normal, 02 = strong; no strong intensity for neutral)
        statement (01 = "Kids are talking by the door", 02 = "Dogs are sitting by the door")
        repetition (01 = 1st, 02 = 2nd)
        actor (01 to 24; odd numbered actors are male, even female)

    Records: speaker = "Actor_XX", text = the statement, label = the emotion code. Only
    audio-only (03) files are used; song files (vocal channel 02, e.g. from the
    Audio_Song_Actors zip extracted into the same folders) are dropped unless include_song.
    """
    root = _corpus_root(root, "ravdess", _RAVDESS_LAYOUT)
    collector = _Collector("ravdess", root, on_error)
    files = collector.files(collector.subfolders(root, r"Actor_\d+"))
    _require(files, "ravdess", root, _RAVDESS_LAYOUT)
    for path in _progress(files, "ravdess"):
        with collector.entry(path):
            modality, channel, emotion, intensity, statement, repetition, actor = _match(
                _RAVDESS_NAME, path, _RAVDESS_CONVENTION
            ).groups()
            _decode(_RAVDESS_MODALITIES, modality, "RAVDESS modality", path)
            vocal = _decode(_RAVDESS_CHANNELS, channel, "RAVDESS vocal channel", path)
            _decode(_RAVDESS_INTENSITIES, intensity, "RAVDESS intensity", path)
            _decode(_RAVDESS_REPETITIONS, repetition, "RAVDESS repetition", path)
            record = dict(
                emotion=_decode(RAVDESS_EMOTIONS, emotion, "RAVDESS emotion", path),
                speaker=f"Actor_{actor}",
                text=_decode(RAVDESS_STATEMENTS, statement, "RAVDESS statement", path),
                label=emotion,
            )
            if modality != "03":
                collector.drop(f"modality {modality} ({_RAVDESS_MODALITIES[modality]})")
            elif vocal == "song" and not include_song:
                collector.drop("song")
            else:
                collector.add(path, **record)
    return collector.result()


# ---------------------------------------------------------------------------------------------
# EmoDB

EMODB_EMOTIONS = {
    "W": "angry",  # Ärger (Wut)
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fearful",  # Angst
    "F": "happy",  # Freude
    "T": "sad",  # Trauer
    "N": "neutral",
}
_EMODB_LAYOUT = "root/wav/03a01Fa.wav"
_EMODB_NAME = re.compile(r"(\d\d)([ab]\d\d)([A-Za-z])([a-z])\.wav")
_EMODB_CONVENTION = (
    "<speaker: 2 digits><text: a01..b10><emotion letter><version letter>.wav, e.g. 03a01Fa.wav"
)


def load_emodb(root: str | os.PathLike, on_error: str = "raise") -> Corpus:
    """EmoDB (Berlin Database of Emotional Speech), 10 actors, 10 German sentences.

    Layout: wav/03a01Fa.wav (other folders: lablaut/, labsilb/, silb/, ignored). Name
    positions 1-2 speaker (03, 08, 09, 10, 11, 12, 13, 14, 15, 16), 3-5 text code (a01, a02,
    a04, a05, a07, b01, b02, b03, b09, b10), 6 emotion (W = anger, L = boredom,
    E = disgust, A = fear, F = happiness, T = sadness, N = neutral; the German initials), 7
    version (a, b, c, ... when the same sentence was recorded more than once).

    Records: speaker = "03", text = "a01", label = the emotion letter.
    """
    root = _corpus_root(root, "emodb", _EMODB_LAYOUT)
    folder = root / "wav"
    collector = _Collector("emodb", root, on_error)
    files = collector.files([folder])
    _require(files, "emodb", root, _EMODB_LAYOUT)
    for path in _progress(files, "emodb"):
        with collector.entry(path):
            speaker, text, letter, _version = _match(_EMODB_NAME, path, _EMODB_CONVENTION).groups()
            emotion = _decode(EMODB_EMOTIONS, letter, "EmoDB emotion", path)
            collector.add(path, emotion=emotion, speaker=speaker, text=text, label=letter)
    return collector.result()


# ---------------------------------------------------------------------------------------------
# TESS

TESS_EMOTIONS = {
    "angry": "angry",
    "disgust": "disgust",
    "fear": "fearful",
    "happy": "happy",
    "neutral": "neutral",
    "ps": "surprised",  # "pleasant surprise"
    "sad": "sad",
}
_TESS_LAYOUT = "root/OAF_angry/OAF_back_angry.wav (one folder per speaker and emotion)"
_TESS_NAME = re.compile(r"(OAF|YAF)_([A-Za-z]+)_([A-Za-z]+)\.wav", re.IGNORECASE)
_TESS_CONVENTION = "<speaker OAF|YAF>_<word>_<emotion>.wav, e.g. OAF_back_angry.wav"


def load_tess(root: str | os.PathLike, on_error: str = "raise") -> Corpus:
    """TESS (Toronto Emotional Speech Set): 2 actresses say "Say the word _" for 200 words.

    Layout: one folder per speaker and emotion (OAF_angry, OAF_Fear, OAF_Pleasant_surprise,
    YAF_pleasant_surprised, ...; capitalisation varies between folders), each holding
    files named <speaker>_<word>_<emotion>.wav, e.g. OAF_back_angry.wav. Speakers: OAF
    (older, aged 64) and YAF (younger, aged 26). Emotions: angry, disgust, fear, happy,
    neutral, ps (pleasant surprise), sad.

    Records: speaker = "OAF"/"YAF", text = the word (lower case), label = the emotion as
    written in the file name (lower case). The file name, not the folder, is authoritative.
    """
    root = _corpus_root(root, "tess", _TESS_LAYOUT)
    collector = _Collector("tess", root, on_error)
    files = collector.files(collector.subfolders(root))
    _require(files, "tess", root, _TESS_LAYOUT)
    for path in _progress(files, "tess"):
        with collector.entry(path):
            speaker, word, code = _match(_TESS_NAME, path, _TESS_CONVENTION).groups()
            code = code.lower()
            emotion = _decode(TESS_EMOTIONS, code, "TESS emotion", path)
            collector.add(
                path, emotion=emotion, speaker=speaker.upper(), text=word.lower(), label=code
            )
    return collector.result()


# ---------------------------------------------------------------------------------------------
# EMOVO

EMOVO_EMOTIONS = {
    "dis": "disgust",  # disgusto
    "gio": "happy",  # gioia (joy)
    "neu": "neutral",  # neutrale
    "pau": "fearful",  # paura
    "rab": "angry",  # rabbia
    "sor": "surprised",  # sorpresa
    "tri": "sad",  # tristezza
}
_EMOVO_LAYOUT = "root/<speaker f1|f2|f3|m1|m2|m3>/dis-f1-b1.wav"
_EMOVO_NAME = re.compile(r"([a-z]+)-([fm]\d)-([a-z]+\d+)\.wav", re.IGNORECASE)
_EMOVO_CONVENTION = "<emotion>-<speaker>-<sentence>.wav, e.g. dis-f1-b1.wav"


def load_emovo(root: str | os.PathLike, on_error: str = "raise") -> Corpus:
    """EMOVO (Italian emotional speech), 6 actors, 14 sentences, 7 emotions.

    Layout: one folder per speaker, f1 f2 f3 (female) and m1 m2 m3 (male), holding
    <emotion>-<speaker>-<sentence>.wav, e.g. dis-f1-b1.wav. Emotion codes: dis (disgusto,
    disgust), gio (gioia, joy), neu (neutrale), pau (paura, fear), rab (rabbia, anger), sor
    (sorpresa, surprise), tri (tristezza, sadness). Sentence ids: b1-b3, l1-l4, n1-n5, d1-d2.

    Records: speaker = "f1", text = the sentence id, label = the emotion code.
    """
    root = _corpus_root(root, "emovo", _EMOVO_LAYOUT)
    collector = _Collector("emovo", root, on_error)
    files = collector.files(collector.subfolders(root, r"[fmFM]\d"))
    _require(files, "emovo", root, _EMOVO_LAYOUT)
    for path in _progress(files, "emovo"):
        with collector.entry(path):
            code, speaker, sentence = _match(_EMOVO_NAME, path, _EMOVO_CONVENTION).groups()
            code = code.lower()
            emotion = _decode(EMOVO_EMOTIONS, code, "EMOVO emotion", path)
            collector.add(
                path, emotion=emotion, speaker=speaker.lower(), text=sentence.lower(), label=code
            )
    return collector.result()


# ---------------------------------------------------------------------------------------------
# SAVEE

SAVEE_EMOTIONS = {
    "a": "angry",
    "d": "disgust",
    "f": "fearful",
    "h": "happy",
    "n": "neutral",
    "sa": "sad",
    "su": "surprised",
}
_SAVEE_LAYOUT = "root/AudioData/<speaker DC|JE|JK|KL>/a01.wav"
_SAVEE_NAME = re.compile(r"([a-z]+)(\d+)\.wav", re.IGNORECASE)
_SAVEE_CONVENTION = "<emotion prefix><sentence number>.wav, e.g. a01.wav or sa12.wav"


def load_savee(root: str | os.PathLike, on_error: str = "raise") -> Corpus:
    """SAVEE (Surrey Audio-Visual Expressed Emotion), 4 male speakers.

    Layout: AudioData/DC/, AudioData/JE/, AudioData/JK/, AudioData/KL/ (speaker initials),
    each holding <prefix><number>.wav with prefix a = anger, d = disgust, f = fear,
    h = happiness, n = neutral, sa = sadness, su = surprise; 15 sentences per emotion
    (a01-a15) and 30 neutral (n01-n30).

    Records: speaker = the folder ("DC"), text = prefix + number ("sa03"), label = prefix.
    """
    root = _corpus_root(root, "savee", _SAVEE_LAYOUT)
    collector = _Collector("savee", root, on_error)
    files = collector.files(collector.subfolders(root / "AudioData"))
    _require(files, "savee", root, _SAVEE_LAYOUT)
    for path in _progress(files, "savee"):
        with collector.entry(path):
            prefix, number = _match(_SAVEE_NAME, path, _SAVEE_CONVENTION).groups()
            prefix = prefix.lower()
            emotion = _decode(SAVEE_EMOTIONS, prefix, "SAVEE emotion", path)
            collector.add(
                path,
                emotion=emotion,
                speaker=path.parent.name,
                text=f"{prefix}{number}",
                label=prefix,
            )
    return collector.result()


# ---------------------------------------------------------------------------------------------
# Speech Commands (an orthogonal-task corpus: words, no emotion)

_SPEECHCOMMANDS_LAYOUT = "root/<word>/<speaker hash>_nohash_<n>.wav"
_SPEECHCOMMANDS_NAME = re.compile(r"([0-9a-fA-F]+)_nohash_(\d+)\.wav")
_SPEECHCOMMANDS_CONVENTION = "<speaker hash>_nohash_<repetition>.wav, e.g. 0a7c2a8d_nohash_0.wav"
_SPEECHCOMMANDS_NOISE = "_background_noise_"


def load_speechcommands(
    root: str | os.PathLike, on_error: str = "raise", *, words: Sequence[str] | None = None
) -> Corpus:
    """Google Speech Commands (v0.01 / v0.02): one-second recordings of short words.

    Layout: one folder per word (yes/, no/, marvin/, ...) holding
    <speaker hash>_nohash_<n>.wav, where the hash identifies the speaker and n counts
    that speaker's repetitions of the word; _background_noise_/ holds long noise files,
    not words, and is skipped; validation_list.txt, testing_list.txt, README, LICENSE are
    ignored.

    Records: emotion = "neutral" (read speech, used for the word task), text = the word,
    speaker = the hash. `words` restricts loading to those word folders.
    """
    root = _corpus_root(root, "speechcommands", _SPEECHCOMMANDS_LAYOUT)
    collector = _Collector("speechcommands", root, on_error)
    folders = [f for f in collector.subfolders(root) if f.name != _SPEECHCOMMANDS_NOISE]
    if words is not None:
        if isinstance(words, str):
            raise ValueError(f"words must be a list of words, got the string {words!r}")
        missing = sorted(set(words) - {f.name for f in folders})
        if missing:
            raise ValueError(
                f"words {missing} have no folder under {root}; "
                f"available: {[f.name for f in folders]}"
            )
        folders = [f for f in folders if f.name in set(words)]
    files = collector.files(folders)
    _require(files, "speechcommands", root, _SPEECHCOMMANDS_LAYOUT)
    for path in _progress(files, "speechcommands"):
        with collector.entry(path):
            speaker, _n = _match(_SPEECHCOMMANDS_NAME, path, _SPEECHCOMMANDS_CONVENTION).groups()
            collector.add(path, emotion="neutral", speaker=speaker, text=path.parent.name)
    return collector.result()


# ---------------------------------------------------------------------------------------------
# Manifest (anyone's own data) and SynthEmo (the kit's synthetic corpus, written as a manifest)

_OPTIONAL_MANIFEST_COLUMNS = tuple(
    c for c in MANIFEST_COLUMNS if c not in REQUIRED_MANIFEST_COLUMNS
)
_MANIFEST_LAYOUT = (
    f"a CSV file (or a folder holding manifest.csv) with columns {REQUIRED_MANIFEST_COLUMNS} "
    f"and optionally {_OPTIONAL_MANIFEST_COLUMNS}"
)


def load_manifest(
    root: str | os.PathLike, on_error: str = "raise", *, corpus: str = "manifest"
) -> Corpus:
    """A CSV manifest: one row per utterance, the format `records.write_manifest` writes.

    Columns: path, emotion, speaker, text (required); corpus, label, valence, arousal,
    dominance, duration, uid (optional; extra columns are ignored). `root` is the CSV file
    or a folder holding manifest.csv. Paths are relative to the CSV's folder, or absolute.
    Emotions must be in the common vocabulary `records.EMOTIONS`. Blank valence/arousal/
    dominance mean "not rated" (None). The corpus column, when filled, wins over `corpus`.
    uid defaults to the path relative to the CSV's folder without extension. Duration is
    always taken from the audio header (the column may be stale). Row order is kept.

    The CSV is read strictly (RFC 4180 as Excel and the csv module write it): a repeated
    column name, a row with more or fewer fields than the header (an unquoted comma in a
    value), a NUL byte, a quote left open (it would swallow the rows after it) or text that
    is not UTF-8 is an error naming the file and the line. A file listed twice, under one
    spelling or two (a link to it), is an error naming both.
    """
    csv_path = _manifest_path(root)
    rows = _read_manifest_rows(csv_path)
    _check_unique_paths(rows, csv_path)
    collector = _Collector(corpus, csv_path.parent, on_error)
    for line, row, path in _progress(rows, corpus):
        where = f"{csv_path} line {line}"
        with collector.entry(where):
            collector.add(path, **_manifest_fields(row, path, csv_path.parent, where))
    return collector.result(sort=False)


def load_synthemo(root: str | os.PathLike, on_error: str = "raise") -> Corpus:
    """SynthEmo, written by `qat.data.synth.make_synthemo`: root/manifest.csv + wav files."""
    return load_manifest(root, on_error, corpus="synthemo")


def _manifest_path(root: str | os.PathLike) -> Path:
    path = Path(os.path.abspath(Path(root).expanduser()))
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; expected {_MANIFEST_LAYOUT}")
    return path


def _read_manifest_rows(csv_path: Path) -> list[tuple[int, dict[str, str], Path]]:
    """(line number, row, absolute audio path) for every row, after the header check.

    The CSV is parsed strictly: every row must have one field per header column (an unquoted
    comma in a value adds a field), no field may hold a NUL byte or run over several lines
    (what an unterminated quote does: it swallows the rows after it), and no column name may
    repeat. Each problem is an error naming the file and the line. Blank lines are skipped.
    """
    records = _csv_records(csv_path)
    header_line, header = next(records, (1, []))
    _check_header(header, header_line, csv_path)
    rows = []
    for line, fields in records:
        if not any(field.strip() for field in fields):
            continue  # a blank line, or a row of empty cells (Excel leaves those)
        if len(fields) != len(header):
            raise ValueError(_field_count_error(csv_path, line, fields, header))
        row = dict(zip(header, fields, strict=True))
        cell = row["path"].strip()
        if not cell:
            raise ValueError(f"{csv_path} line {line}: empty path")
        path = Path(cell).expanduser()
        if not path.is_absolute():
            path = csv_path.parent / path
        rows.append((line, row, Path(os.path.abspath(path))))
    if not rows:
        raise ValueError(f"{csv_path}: the manifest has a header but no rows")
    return rows


_LINE_BREAK = re.compile(r"\r\n?|\n")


def _csv_records(csv_path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each CSV record, read with csv's strict mode; a record that
    breaks the CSV rules, holds a NUL byte or spans several lines raises, naming the line."""
    data = csv_path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # -sig: Excel's byte-order mark
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{csv_path} line {line}: not UTF-8 text (byte {data[err.start]:#04x}); save the "
            "manifest as UTF-8 CSV"
        ) from None
    reader = csv.reader(StringIO(text, newline=""), strict=True)
    names: list[str] = []  # the header, once read: to name the column of a bad field
    end = 0  # the last line of the previous record
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise ValueError(_csv_error(csv_path, start, reader.line_num, err)) from None
        end = reader.line_num
        for i, field in enumerate(fields):
            column = f"column {names[i]!r}" if i < len(names) else f"field {i + 1}"
            if "\x00" in field:
                raise ValueError(
                    f"{csv_path} line {start}: {column} holds a NUL byte (\\x00); the file is "
                    "damaged or not a text CSV"
                )
            if "\n" in field or "\r" in field:
                opened = start + sum(len(_LINE_BREAK.findall(f)) for f in fields[:i])
                raise ValueError(
                    f"{csv_path} line {opened}: a quote opened on line {opened} ({column}) "
                    f"closes only on line {end}, so the lines in between were read as part of "
                    "one value; close the quote on the line where it opens (a quote inside a "
                    'quoted value is written twice: "say ""hi""")'
                )
        names = names or fields
        yield start, fields


def _csv_error(csv_path: Path, start: int, end: int, err: csv.Error) -> str:
    if "unexpected end of data" in str(err):
        return (
            f"{csv_path} line {start}: a quote opened on line {start} is never closed, so "
            f"every line after it (to line {end}, the end of the file) was read as part of "
            "one value; close the quote"
        )
    span = f" (the record runs to line {end}: an unclosed quote?)" if end > start else ""
    return (
        f"{csv_path} line {start}: not valid CSV: {err}{span}; a value holding a quote must be "
        'quoted whole, with the quote written twice: "say ""hi"""'
    )


def _check_header(header: list[str], line: int, csv_path: Path) -> None:
    missing = [c for c in REQUIRED_MANIFEST_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{csv_path}: missing required column(s) {missing}; found {header}; "
            f"expected {_MANIFEST_LAYOUT}"
        )
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(header, start=1):
        if name:  # unnamed (empty) columns are ignored, however many there are
            positions.setdefault(name, []).append(i)
    repeated = {name: where for name, where in positions.items() if len(where) > 1}
    if repeated:
        shown = "; ".join(f"{name!r} (columns {where})" for name, where in repeated.items())
        raise ValueError(
            f"{csv_path} line {line}: column name(s) repeated in the header: {shown}; each "
            "column may appear once (which one would hold the value?)"
        )


def _field_count_error(csv_path: Path, line: int, fields: list[str], header: list[str]) -> str:
    what = (
        "more fields than the header has columns: a comma inside a value (e.g. in text) "
        'must be quoted, as in "yes, please"'
        if len(fields) > len(header)
        else "fewer fields than the header has columns: leave a value empty (two commas in a "
        "row), do not leave it out"
    )
    return (
        f"{csv_path} line {line}: {len(fields)} fields for {len(header)} columns {header}; {what}"
    )


def _check_unique_paths(rows: Sequence[tuple[int, dict, Path]], csv_path: Path) -> None:
    """No audio file may be listed twice, under one spelling or two (a symbolic or hard link
    to a file listed elsewhere is the same file)."""
    groups: dict[object, list[tuple[int, Path]]] = {}
    for line, _row, path in rows:
        groups.setdefault(_file_identity(path) or path, []).append((line, path))
    repeated = [entries for entries in groups.values() if len(entries) > 1]
    if repeated:
        shown = "; ".join(_listing(entries) for entries in repeated[:2])
        more = f"; and {len(repeated) - 2} more" if len(repeated) > 2 else ""
        raise ValueError(
            f"{csv_path}: {len(repeated)} path(s) listed more than once: {shown}{more}"
        )


def _listing(entries: list[tuple[int, Path]]) -> str:
    lines = [line for line, _ in entries]
    first = entries[0][1]
    others = sorted({str(path) for _, path in entries} - {str(first)})
    more = f" and {len(others) - 2} more" if len(others) > 2 else ""
    linked = f", the same file as {others[:2]}{more}" if others else ""
    return f"{first} (lines [{io.summarise(lines)}]){linked}"


def _manifest_fields(row: dict[str, str], path: Path, folder: Path, where: str) -> dict:
    emotion = (row.get("emotion") or "").strip()
    if emotion not in EMOTIONS:
        raise CorpusEntryError(f"{where} ({path}): emotion {emotion!r} is not one of {EMOTIONS}")
    speaker = (row.get("speaker") or "").strip()
    if not speaker:
        raise CorpusEntryError(f"{where} ({path}): empty speaker")
    uid = (row.get("uid") or "").strip()
    if not uid:
        inside = path.is_relative_to(folder)
        uid = (path.relative_to(folder) if inside else path).with_suffix("").as_posix()
    return dict(
        uid=uid,
        corpus=(row.get("corpus") or "").strip() or None,
        emotion=emotion,
        speaker=speaker,
        text=(row.get("text") or "").strip(),
        label=(row.get("label") or "").strip(),
        **{k: _rating(row.get(k), k, where) for k in ("valence", "arousal", "dominance")},
    )


def _rating(cell: str | None, column: str, where: str) -> float | None:
    if cell is None or not cell.strip():
        return None
    try:
        value = float(cell)
    except ValueError:
        raise CorpusEntryError(f"{where}: {column} {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise CorpusEntryError(f"{where}: {column} {cell!r} is not finite")
    return value


# ---------------------------------------------------------------------------------------------
# Registry and entry point

LOADERS: dict[str, Callable[..., Corpus]] = {
    "iemocap": load_iemocap,
    "ravdess": load_ravdess,
    "emodb": load_emodb,
    "tess": load_tess,
    "emovo": load_emovo,
    "savee": load_savee,
    "speechcommands": load_speechcommands,
    "manifest": load_manifest,
    "synthemo": load_synthemo,
}
CORPORA = tuple(LOADERS)


def load_corpus(name: str, root: str | os.PathLike, on_error: str = "raise", **options) -> Corpus:
    """Load corpus `name` from `root` as a `Corpus` (a list of `Utterance` records).

    on_error: "raise" (default) stops at the first unusable file with an error naming it;
    "skip" leaves such files out, warns, and lists them in `Corpus.skipped`.
    options: corpus-specific keywords, e.g. iemocap(emotions=..., merge_excited=True),
    ravdess(include_song=True), speechcommands(words=[...]), manifest(corpus="mydata").
    """
    loader = LOADERS.get(name)
    if loader is None:
        raise ValueError(f"unknown corpus name {name!r}; valid names: {sorted(LOADERS)}")
    _check_on_error(on_error)
    valid = [
        p.name
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for corpus {name!r}; valid options: {valid or 'none'}"
        )
    return loader(root, on_error, **options)
