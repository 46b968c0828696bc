"""The corpus content digest (for keys of results) and the manifest writer."""

import dataclasses
import hashlib
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from qat.data.records import (
    Utterance,
    content_digests,
    corpus_digest,
    file_digest,
    write_manifest,
)


def make_corpus(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        path = folder / f"u{i}.wav"
        sf.write(path, np.random.default_rng(i).uniform(-0.3, 0.3, 800), 8000, subtype="PCM_16")
        emotion = ("happy", "sad")[i % 2]
        records.append(Utterance(str(path), "t", emotion, f"s{i % 2}", f"w{i}", uid=f"u{i}"))
    return records


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "x.bin"
    data = os.urandom(3 * 2**20 + 17)  # more than one read chunk
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError, match=r"gone\.wav"):
        file_digest(tmp_path / "gone.wav")


def test_corpus_digest_follows_content_labels_and_order_not_location(tmp_path):
    records = make_corpus(tmp_path / "a")
    digest = corpus_digest(records)
    assert digest == corpus_digest(list(records)) and len(digest) == 64
    # the same corpus in another folder: same content, same digest
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = [dataclasses.replace(r, path=r.path.replace("/a/", "/b/")) for r in records]
    assert corpus_digest(moved) == digest
    # a relabelled row, a reordering, or other audio of the same size: another digest
    relabelled = [dataclasses.replace(records[0], emotion="angry"), *records[1:]]
    assert corpus_digest(relabelled) != digest
    assert corpus_digest(records[::-1]) != digest
    path = moved[1].path
    st = os.stat(path)
    with open(path, "r+b") as fh:  # rewritten in place, same size, times restored (cp -p)
        fh.seek(-2, os.SEEK_END)
        fh.write(b"\x01\x02")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert corpus_digest(moved) != digest


def test_write_manifest_leaves_no_temporary_and_replaces_atomically(tmp_path):
    records = make_corpus(tmp_path / "wav", n=2)
    target = tmp_path / "lists" / "manifest.csv"
    write_manifest(records, target)
    write_manifest(iter(records), target)  # any iterable, written over the previous one
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.csv"]
    assert target.read_text().splitlines()[1].startswith("../wav/u0.wav,happy,s0,w0")


def test_the_same_audio_under_two_emotions_is_refused_naming_both_paths(tmp_path):
    records = make_corpus(tmp_path, n=4)  # u0 happy, u1 sad, u2 happy, u3 sad
    shutil.copyfile(records[0].path, records[1].path)  # u1 (sad) now holds u0's audio
    with pytest.raises(ValueError) as caught:
        corpus_digest(records)
    message = str(caught.value)
    assert f"{records[1].path} holds the same audio as {records[0].path}" in message
    assert "'sad', not 'happy'" in message and "\n" not in message
    shutil.copyfile(records[0].path, records[2].path)  # a copy under the same emotion: kept
    shutil.copyfile(records[3].path, records[1].path)
    assert len(corpus_digest(records)) == 64
    digests = content_digests(records)
    assert digests == [file_digest(r.path) for r in records]
    assert corpus_digest(records, digests) == corpus_digest(records)
