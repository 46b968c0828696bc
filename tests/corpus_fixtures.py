"""Tiny corpus trees in each corpus's official layout, for tests (importable by any test).

Each `build_<corpus>(root)` writes short random audio under real file names, adds the
stray files found in real downloads (README, .DS_Store, macOS '._' twins, label folders),
and returns {uid: expected fields}. The expected fields are written here by hand, next to
each file name, from the corpus documentation: they are the independent reference the
parsers are checked against. Durations come from the number of frames actually written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf


def write_wav(
    path: str | os.PathLike,
    frames: int = 480,
    sample_rate: int = 16000,
    channels: int = 1,
    subtype: str = "PCM_16",
    seed: int = 0,
) -> np.ndarray:
    """Write a short random signal (amplitude ~0.1) and return the float64 data written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = np.clip(0.1 * rng.standard_normal((frames, channels)), -0.99, 0.99)
    sf.write(path, data if channels > 1 else data[:, 0], sample_rate, subtype=subtype)
    return data


def write_empty_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_truncated_wav(path: str | os.PathLike) -> Path:
    """A WAV cut short in the middle of its data chunk, as after an interrupted copy."""
    path = Path(path)
    write_wav(path, frames=800)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_text_as_wav(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("This is a README that someone renamed to .wav\n" * 4)
    return path


def write_link(link: str | os.PathLike, target: str | os.PathLike) -> Path:
    """A symbolic link at `link` pointing to `target` as given (relative targets are relative
    to the link's folder, as with `ln -s`): a duplicate of a file, a dangling link (missing
    target) or a loop (a link to itself)."""
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


# Where each tree corpus keeps its audio, one of its fixture files there, another name that
# follows the corpus's naming convention (for a duplicate made by a link), and a name the
# loader would take for one of its subfolders: (audio folder, file, free name, subfolder).
LINK_SITES = {
    "emodb": ("wav", "03a01Fa.wav", "09a01Fa.wav", None),
    "ravdess": ("Actor_01", "03-01-01-01-01-01-01.wav", "03-01-01-01-02-02-01.wav", "Actor_30"),
    "tess": ("OAF_angry", "OAF_back_angry.wav", "OAF_dog_angry.wav", "OAF_calm"),
    "emovo": ("f1", "dis-f1-b1.wav", "dis-f1-b2.wav", "f9"),
    "savee": ("AudioData/DC", "a01.wav", "a09.wav", "AudioData/ZZ"),
    "speechcommands": ("yes", "0a7c2a8d_nohash_0.wav", "0a7c2a8d_nohash_7.wav", "maybe"),
}


def write_strays(folder: str | os.PathLike) -> None:
    """Files every loader must ignore: docs, Finder metadata, a macOS resource-fork twin."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("corpus readme\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._junk.wav").write_bytes(b"\x00\x05\x16\x07 not audio")
    (folder / "notes.txt").write_text("not audio\n")


def _write_table(root: Path, table: dict[str, dict], sample_rate: int, seed: int) -> dict:
    """Write one wav per table entry and return {uid: fields + path + duration}."""
    rng = np.random.default_rng(seed)
    expected = {}
    for i, (rel, fields) in enumerate(sorted(table.items())):
        fields = dict(fields)
        rate = fields.pop("_rate", sample_rate)
        channels = fields.pop("_channels", 1)
        frames = int(rng.integers(200, 900))
        write_wav(root / rel, frames, rate, channels, seed=seed + i)
        uid = Path(rel).with_suffix("").as_posix()
        expected[uid] = {
            **fields,
            "path": str(root / rel),
            "duration": frames / rate,
            "uid": uid,
        }
    return expected


# ---------------------------------------------------------------------------------------------
# IEMOCAP: (session, utterance id, code, (V, A, D)) -> expected speaker; emotion is the
# full mapping (exc -> excited); tests apply the 4-class filter and the exc merge themselves.

IEMOCAP_LINES = [
    (1, "Ses01F_impro01_F000", "neu", (2.5, 2.5, 2.5), "Ses01F", "neutral"),
    (1, "Ses01F_impro01_M000", "ang", (1.5, 4.0, 4.0), "Ses01M", "angry"),
    (1, "Ses01F_impro01_F001", "exc", (4.0, 3.5, 3.0), "Ses01F", "excited"),
    (1, "Ses01F_impro01_M001", "fru", (2.0, 3.0, 3.5), "Ses01M", "frustrated"),
    (1, "Ses01F_impro01_F002", "xxx", (2.5, 3.0, 2.5), "Ses01F", None),
    (1, "Ses01F_impro01_M002", "hap", (4.5, 3.0, 3.0), "Ses01M", "happy"),
    (2, "Ses02M_script01_1_F000", "sad", (1.5, 2.0, 2.0), "Ses02F", "sad"),
    (2, "Ses02M_script01_1_M000", "exc", (4.0, 4.0, 3.5), "Ses02M", "excited"),
    (2, "Ses02M_script01_1_M001", "oth", (3.0, 3.0, 3.0), "Ses02M", None),
    (2, "Ses02M_script01_1_F001", "sur", (3.5, 4.0, 3.0), "Ses02F", "surprised"),
    (2, "Ses02M_impro05b_F000", "neu", (2.3333, 3.6667, 4.0), "Ses02F", "neutral"),
]


def _iemocap_line(start: float, utt: str, code: str, vad: tuple[float, float, float]) -> str:
    v, a, d = vad
    return f"[{start:.4f} - {start + 1.7:.4f}]\t{utt}\t{code}\t[{v:.4f}, {a:.4f}, {d:.4f}]"


def build_iemocap(root: str | os.PathLike, seed: int = 0) -> dict[str, dict]:
    """IEMOCAP_full_release-like tree; returns {uid: fields} for every labelled line."""
    root = Path(root)
    by_dialog: dict[tuple[int, str], list] = {}
    table = {}
    for session, utt, code, vad, speaker, emotion in IEMOCAP_LINES:
        dialog = utt.rsplit("_", 1)[0]
        by_dialog.setdefault((session, dialog), []).append((utt, code, vad))
        rel = f"Session{session}/sentences/wav/{dialog}/{utt}.wav"
        table[rel] = dict(
            speaker=speaker,
            text=utt,
            label=code,
            emotion=emotion,
            valence=vad[0],
            arousal=vad[1],
            dominance=vad[2],
            _rate=16000,
        )
    for (session, dialog), lines in by_dialog.items():
        folder = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        folder.mkdir(parents=True, exist_ok=True)
        text = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for k, (utt, code, vad) in enumerate(lines):
            text += [
                _iemocap_line(6.2901 + 3 * k, utt, code, vad),
                "C-E2:\tNeutral;\t()",
                "C-E4:\tFrustration;\tAnger;\t()",
                "A-E3:\tval 3; act 2; dom  2;\t()",
                "",
            ]
        (folder / f"{dialog}.txt").write_text("\n".join(text))
        # Real releases hold per-annotator subfolders (.txt inside) and Finder junk.
        categorical = folder / "Categorical"
        categorical.mkdir(exist_ok=True)
        (categorical / f"{dialog}_e1_cat.txt").write_text("Ses01F_impro01_F000 :Neutral; ()\n")
        (folder / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07")
    write_strays(root)
    return _write_table(root, table, 16000, seed)


# ---------------------------------------------------------------------------------------------
# RAVDESS (48 kHz in the real corpus)

_KIDS, _DOGS = "Kids are talking by the door", "Dogs are sitting by the door"
RAVDESS_FILES = {
    "Actor_01/03-01-01-01-01-01-01.wav": dict(
        speaker="Actor_01", emotion="neutral", text=_KIDS, label="01"
    ),
    "Actor_01/03-01-06-02-02-02-01.wav": dict(
        speaker="Actor_01", emotion="fearful", text=_DOGS, label="06"
    ),
    "Actor_12/03-01-02-01-02-01-12.wav": dict(
        speaker="Actor_12", emotion="calm", text=_DOGS, label="02"
    ),
    "Actor_12/03-01-03-02-01-02-12.wav": dict(
        speaker="Actor_12", emotion="happy", text=_KIDS, label="03", _channels=2
    ),
    "Actor_12/03-01-04-01-01-01-12.wav": dict(
        speaker="Actor_12", emotion="sad", text=_KIDS, label="04"
    ),
    "Actor_12/03-01-05-02-02-01-12.wav": dict(
        speaker="Actor_12", emotion="angry", text=_DOGS, label="05"
    ),
    "Actor_24/03-01-07-01-01-02-24.wav": dict(
        speaker="Actor_24", emotion="disgust", text=_KIDS, label="07"
    ),
    "Actor_24/03-01-08-02-02-01-24.wav": dict(
        speaker="Actor_24", emotion="surprised", text=_DOGS, label="08"
    ),
}
# Left out by default: a song file and a full-AV (modality 01) file.
RAVDESS_SONG = {
    "Actor_24/03-02-03-01-01-01-24.wav": dict(
        speaker="Actor_24", emotion="happy", text=_KIDS, label="03"
    )
}
RAVDESS_VIDEO = {
    "Actor_01/01-01-05-01-01-01-01.wav": dict(
        speaker="Actor_01", emotion="angry", text=_KIDS, label="05"
    )
}


def build_ravdess(root: str | os.PathLike, seed: int = 1) -> dict[str, dict]:
    """Returns {uid: fields} for all files, song and video included (tests filter)."""
    root = Path(root)
    write_strays(root)
    write_strays(root / "Actor_01")
    return _write_table(root, {**RAVDESS_FILES, **RAVDESS_SONG, **RAVDESS_VIDEO}, 48000, seed)


# ---------------------------------------------------------------------------------------------
# EmoDB (16 kHz in the real corpus; one file at 22.05 kHz to check durations per header)

EMODB_FILES = {
    "wav/03a01Fa.wav": dict(speaker="03", text="a01", emotion="happy", label="F"),
    "wav/03a01Wa.wav": dict(speaker="03", text="a01", emotion="angry", label="W"),
    "wav/08b10Lc.wav": dict(speaker="08", text="b10", emotion="boredom", label="L"),
    "wav/10a05Eb.wav": dict(speaker="10", text="a05", emotion="disgust", label="E"),
    "wav/11b03Aa.wav": dict(speaker="11", text="b03", emotion="fearful", label="A", _rate=22050),
    "wav/15a07Ta.wav": dict(speaker="15", text="a07", emotion="sad", label="T"),
    "wav/16b09Nb.wav": dict(speaker="16", text="b09", emotion="neutral", label="N"),
}


def build_emodb(root: str | os.PathLike, seed: int = 2) -> dict[str, dict]:
    root = Path(root)
    write_strays(root / "wav")
    (root / "lablaut").mkdir(parents=True, exist_ok=True)
    (root / "lablaut" / "03a01Fa.lab").write_text("label file\n")
    write_wav(root / "silb" / "03a01Fa.wav", 100)  # syllable folder, not the corpus audio
    return _write_table(root, EMODB_FILES, 16000, seed)


# ---------------------------------------------------------------------------------------------
# TESS (24.414 kHz in the real corpus; folder capitalisation varies in the real release)

TESS_FILES = {
    "OAF_angry/OAF_back_angry.wav": dict(
        speaker="OAF", text="back", emotion="angry", label="angry"
    ),
    "OAF_disgust/OAF_bar_disgust.wav": dict(
        speaker="OAF", text="bar", emotion="disgust", label="disgust"
    ),
    "OAF_Fear/OAF_base_fear.wav": dict(speaker="OAF", text="base", emotion="fearful", label="fear"),
    "OAF_happy/OAF_bath_happy.wav": dict(
        speaker="OAF", text="bath", emotion="happy", label="happy"
    ),
    "OAF_neutral/OAF_bean_neutral.wav": dict(
        speaker="OAF", text="bean", emotion="neutral", label="neutral"
    ),
    "OAF_Pleasant_surprise/OAF_beg_ps.wav": dict(
        speaker="OAF", text="beg", emotion="surprised", label="ps"
    ),
    "OAF_Sad/OAF_bite_sad.wav": dict(speaker="OAF", text="bite", emotion="sad", label="sad"),
    "YAF_angry/YAF_back_angry.wav": dict(
        speaker="YAF", text="back", emotion="angry", label="angry"
    ),
    "YAF_pleasant_surprised/YAF_chair_ps.wav": dict(
        speaker="YAF", text="chair", emotion="surprised", label="ps", _rate=44100
    ),
}


def build_tess(root: str | os.PathLike, seed: int = 3) -> dict[str, dict]:
    root = Path(root)
    write_strays(root)
    write_strays(root / "OAF_angry")
    return _write_table(root, TESS_FILES, 24414, seed)


# ---------------------------------------------------------------------------------------------
# EMOVO (48 kHz in the real corpus)

EMOVO_FILES = {
    "f1/dis-f1-b1.wav": dict(speaker="f1", text="b1", emotion="disgust", label="dis"),
    "f1/gio-f1-l3.wav": dict(speaker="f1", text="l3", emotion="happy", label="gio"),
    "f2/neu-f2-n5.wav": dict(speaker="f2", text="n5", emotion="neutral", label="neu"),
    "f3/tri-f3-n1.wav": dict(speaker="f3", text="n1", emotion="sad", label="tri", _channels=2),
    "m1/pau-m1-d2.wav": dict(speaker="m1", text="d2", emotion="fearful", label="pau"),
    "m2/rab-m2-b2.wav": dict(speaker="m2", text="b2", emotion="angry", label="rab"),
    "m3/sor-m3-l1.wav": dict(speaker="m3", text="l1", emotion="surprised", label="sor"),
}


def build_emovo(root: str | os.PathLike, seed: int = 4) -> dict[str, dict]:
    root = Path(root)
    write_strays(root)
    write_strays(root / "m2")
    (root / "documents").mkdir(parents=True, exist_ok=True)
    (root / "documents" / "EMOVO.pdf").write_bytes(b"%PDF-1.4")
    return _write_table(root, EMOVO_FILES, 48000, seed)


# ---------------------------------------------------------------------------------------------
# SAVEE (44.1 kHz in the real corpus)

SAVEE_FILES = {
    "AudioData/DC/a01.wav": dict(speaker="DC", text="a01", emotion="angry", label="a"),
    "AudioData/DC/d02.wav": dict(speaker="DC", text="d02", emotion="disgust", label="d"),
    "AudioData/JE/f03.wav": dict(speaker="JE", text="f03", emotion="fearful", label="f"),
    "AudioData/JE/h15.wav": dict(speaker="JE", text="h15", emotion="happy", label="h"),
    "AudioData/JK/n30.wav": dict(speaker="JK", text="n30", emotion="neutral", label="n"),
    "AudioData/JK/sa01.wav": dict(speaker="JK", text="sa01", emotion="sad", label="sa"),
    "AudioData/KL/su07.wav": dict(speaker="KL", text="su07", emotion="surprised", label="su"),
}


def build_savee(root: str | os.PathLike, seed: int = 5) -> dict[str, dict]:
    root = Path(root)
    write_strays(root)
    write_strays(root / "AudioData" / "DC")
    return _write_table(root, SAVEE_FILES, 44100, seed)


# ---------------------------------------------------------------------------------------------
# Speech Commands (16 kHz)

SPEECHCOMMANDS_FILES = {
    "yes/0a7c2a8d_nohash_0.wav": dict(speaker="0a7c2a8d", text="yes", emotion="neutral", label=""),
    "yes/c1d39ce8_nohash_3.wav": dict(speaker="c1d39ce8", text="yes", emotion="neutral", label=""),
    "no/0a7c2a8d_nohash_1.wav": dict(speaker="0a7c2a8d", text="no", emotion="neutral", label=""),
    "marvin/ffd2ba2f_nohash_0.wav": dict(
        speaker="ffd2ba2f", text="marvin", emotion="neutral", label=""
    ),
}


def build_speechcommands(root: str | os.PathLike, seed: int = 6) -> dict[str, dict]:
    root = Path(root)
    write_strays(root)
    write_wav(root / "_background_noise_" / "white_noise.wav", 1600)
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "validation_list.txt").write_text("yes/c1d39ce8_nohash_3.wav\n")
    (root / "testing_list.txt").write_text("no/0a7c2a8d_nohash_1.wav\n")
    return _write_table(root, SPEECHCOMMANDS_FILES, 16000, seed)


BUILDERS = {
    "iemocap": build_iemocap,
    "ravdess": build_ravdess,
    "emodb": build_emodb,
    "tess": build_tess,
    "emovo": build_emovo,
    "savee": build_savee,
    "speechcommands": build_speechcommands,
}
