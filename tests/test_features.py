"""Features against an independent numpy STFT, the disk cache, normalisation, labels, dataset."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from qat.data import features as F
from qat.data.dataset import LabelSpace, Normalizer, SERDataset
from qat.data.features import FeatureConfig, compute_features, extract_features, fit_segment
from qat.data.records import Utterance

# 0.5 s at 8 kHz: 4000 samples / hop 128 = 31.25 -> 32 frames, small and fast.
SMALL = {"sample_rate": 8000, "segment_seconds": 0.5}


def reference_stft(y, n_fft, hop, frames, segment):
    """|X[t, k]| = |sum_n w[n] s[t*hop + n - n_fft/2] e^{-2 pi i k n / n_fft}|, s = the centre
    crop/pad of y, zero outside [0, segment); periodic Hamming w; Nyquist bin dropped."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) >= segment:
        s = y[(len(y) - segment) // 2 :][:segment]
    else:
        s = np.zeros(segment)
        s[(segment - len(y)) // 2 :][: len(y)] = y
    n = np.arange(n_fft)
    w = 0.54 - 0.46 * np.cos(2 * np.pi * n / n_fft)
    out = np.empty((frames, n_fft // 2))
    for t in range(frames):
        idx = t * hop + n - n_fft // 2
        ok = (idx >= 0) & (idx < segment)
        frame = np.where(ok, s[np.clip(idx, 0, segment - 1)], 0.0)
        out[t] = np.abs(np.fft.rfft(w * frame))[: n_fft // 2]
    return out


@pytest.mark.parametrize("length", [4000, 2500, 5301])  # exact, padded, cropped
@pytest.mark.parametrize("compression", ["none", "log"])
def test_stft_matches_independent_numpy_stft(length, compression):
    config = FeatureConfig(kind="stft", compression=compression, **SMALL)
    y = np.random.default_rng(length).normal(0, 0.3, length).astype(np.float32)
    got = compute_features(y, config)
    ref = reference_stft(y, 256, 128, 32, 4000)
    if compression == "log":
        ref = np.log1p(ref)
    assert got.shape == (32, 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_stft_of_a_bin_centred_sinusoid_peaks_at_amplitude_times_half_window_sum():
    config = FeatureConfig(kind="stft", compression="none", **SMALL)
    k0, amplitude = 20, 0.5
    y = amplitude * np.cos(2 * np.pi * k0 * np.arange(4000) / 256)
    got = compute_features(y, config)
    middle = got[5:25]
    assert np.all(middle.argmax(axis=1) == k0)
    # Hamming sum over 256 periodic samples = 0.54 * 256; a cosine splits into two halves.
    np.testing.assert_allclose(middle[:, k0], amplitude * 0.54 * 256 / 2, rtol=1e-6)


def test_logmel_shape_and_values():
    config = FeatureConfig(kind="logmel", n_mels=40, **SMALL)
    y = np.random.default_rng(0).normal(0, 0.2, 4000)
    got = compute_features(y, config)
    assert got.shape == (32, 40) == config.shape
    n = np.arange(256)
    w = 0.54 - 0.46 * np.cos(2 * np.pi * n / 256)
    padded = np.zeros(31 * 128 + 256)
    padded[128 : 128 + 4000] = y
    power = np.stack(
        [np.abs(np.fft.rfft(w * padded[t * 128 : t * 128 + 256])) ** 2 for t in range(32)]
    )
    import librosa

    mel = power @ librosa.filters.mel(sr=8000, n_fft=256, n_mels=40).T.astype(np.float64)
    np.testing.assert_allclose(got, np.log(np.maximum(mel, 1e-10)), rtol=1e-4, atol=1e-4)


def test_frames_round_up_to_a_multiple_of_32_as_in_the_paper():
    assert FeatureConfig().shape == (512, 128)  # 4 s: 500 -> 512 frames
    assert FeatureConfig(segment_seconds=1.0).shape == (128, 128)  # 125 -> 128
    assert FeatureConfig(kind="logmel", segment_seconds=1.0).shape == (128, 64)


def test_fit_segment_centre_crops_and_centre_pads():
    y = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(fit_segment(y, 4), [4, 5, 6, 7])
    np.testing.assert_array_equal(fit_segment(y[:3], 7), [0, 0, 1, 2, 3, 0, 0])
    long = np.random.default_rng(1).normal(size=6000)
    config = FeatureConfig(**SMALL)
    np.testing.assert_array_equal(
        compute_features(long, config), compute_features(long[1000:5000], config)
    )


def test_config_validation_and_key():
    assert FeatureConfig().key() == FeatureConfig().key()
    assert FeatureConfig().key() != FeatureConfig(n_mels=40).key()
    for field, value in [
        ("kind", "mfcc"),
        ("compression", "sqrt"),
        ("hop_length", 200),
        ("n_fft", 255),
        ("segment_seconds", 0),
        ("sample_rate", 16000.0),
    ]:
        with pytest.raises(ValueError, match=f"FeatureConfig.{field}="):
            FeatureConfig(**{field: value})
    with pytest.raises(ValueError, match="1-D"):
        compute_features(np.zeros((2, 100)), FeatureConfig(**SMALL))


# --------------------------------------------------------------------------------------------
# Extraction and cache


def write_corpus(folder, n=7, seconds=0.3, sr=8000, seed=0):
    """n random wavs at varied lengths; the last one near-silent."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        amplitude = 1e-4 if i == n - 1 else 0.3
        y = rng.uniform(-amplitude, amplitude, int(sr * seconds * (0.5 + i / n)))
        path = folder / f"u{i}.wav"
        sf.write(path, y, sr, subtype="FLOAT")
        records.append(
            Utterance(path=str(path), corpus="t", emotion="happy", speaker="s", text=f"w{i}")
        )
    return records


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "wav"
    folder.mkdir()
    return write_corpus(folder)


def test_extract_features_rows_equal_compute_features_and_flags_silence(corpus, tmp_path):
    config = FeatureConfig(**SMALL)
    feats = extract_features(corpus, config, tmp_path / "cache", workers=1, progress=False)
    assert feats.x.shape == (len(corpus), 32, 128) and feats.x.dtype == np.float32
    for i, r in enumerate(corpus):
        y, _ = sf.read(r.path, dtype="float32")
        np.testing.assert_array_equal(feats.x[i], compute_features(y, config))
    assert feats.silent.tolist() == [False] * (len(corpus) - 1) + [True]
    assert feats.path.exists() and feats.path.parent == tmp_path / "cache"


def test_second_call_is_a_cache_hit(corpus, tmp_path, monkeypatch):
    config = FeatureConfig(**SMALL)
    first = extract_features(corpus, config, tmp_path / "cache", workers=1, progress=False)
    mtime = first.path.stat().st_mtime_ns

    def no_loading(path, sr):
        raise AssertionError("a cache hit must not read audio")

    monkeypatch.setattr(F, "_load", no_loading)
    second = extract_features(corpus, config, tmp_path / "cache", workers=1, progress=False)
    np.testing.assert_array_equal(second.x, first.x)
    np.testing.assert_array_equal(second.silent, first.silent)
    assert second.path.stat().st_mtime_ns == mtime


def test_parallel_runs_that_need_the_same_features_extract_them_once(corpus, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """Two callers at once (as two runs of a sweep): one extracts, the other waits on the
    cache's lock and reads what the first built; both get the same arrays."""
    import threading
    import time

    config = FeatureConfig(**SMALL)
    extract, builds = F._extract_into, []

    def slow_extract(*args, **kwargs):
        builds.append(1)
        time.sleep(0.5)  # long enough for the second caller to arrive while this one builds
        return extract(*args, **kwargs)

    monkeypatch.setattr(F, "_extract_into", slow_extract)
    out = [None, None]

    def call(i):
        out[i] = extract_features(corpus, config, tmp_path / "cache", workers=1, progress=False)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    np.testing.assert_array_equal(out[0].x, out[1].x)
    np.testing.assert_array_equal(out[0].silent, out[1].silent)


def test_changed_file_rebuilds_the_cache(corpus, tmp_path):
    config = FeatureConfig(**SMALL)
    first = np.array(extract_features(corpus, config, tmp_path / "c", workers=1, progress=False).x)
    new = np.random.default_rng(99).uniform(-0.5, 0.5, 2000)
    sf.write(corpus[2].path, new, 8000, subtype="FLOAT")
    st = os.stat(corpus[2].path)
    os.utime(corpus[2].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = extract_features(corpus, config, tmp_path / "c", workers=1, progress=False)
    expected = compute_features(new.astype(np.float32), config)
    np.testing.assert_allclose(second.x[2], expected, rtol=1e-6)
    assert not np.allclose(first[2], second.x[2])
    np.testing.assert_array_equal(second.x[[0, 1, 3]], first[[0, 1, 3]])


def test_changed_config_uses_another_cache(corpus, tmp_path):
    a = extract_features(corpus, FeatureConfig(**SMALL), tmp_path / "c", workers=1, progress=False)
    config_b = FeatureConfig(kind="logmel", n_mels=32, **SMALL)
    b = extract_features(corpus, config_b, tmp_path / "c", workers=1, progress=False)
    assert a.path != b.path and b.x.shape == (len(corpus), 32, 32)
    y, _ = sf.read(corpus[0].path, dtype="float32")
    np.testing.assert_array_equal(b.x[0], compute_features(y, config_b))


def test_corrupted_cache_is_detected_and_rebuilt(corpus, tmp_path):
    config = FeatureConfig(**SMALL)
    good = np.array(extract_features(corpus, config, tmp_path / "c", workers=1, progress=False).x)
    path = next((tmp_path / "c").glob("*.npy"))
    with open(path, "r+b") as fh:  # flip bytes in the data, past the .npy header
        fh.seek(-64, os.SEEK_END)
        fh.write(b"\x7f" * 64)
    with pytest.warns(UserWarning, match="corrupted"):
        again = extract_features(corpus, config, tmp_path / "c", workers=1, progress=False)
    np.testing.assert_array_equal(again.x, good)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == F._sha256_file(path)


def test_worker_count_does_not_change_results(tmp_path):
    folder = tmp_path / "wav"
    folder.mkdir()
    records = write_corpus(folder, n=20)
    config = FeatureConfig(kind="logmel", **SMALL)
    one = extract_features(records, config, tmp_path / "c1", workers=1, progress=False)
    two = extract_features(records, config, tmp_path / "c2", workers=2, progress=False)
    np.testing.assert_array_equal(one.x, two.x)
    np.testing.assert_array_equal(one.silent, two.silent)


def test_missing_file_and_bad_arguments(corpus, tmp_path):
    config = FeatureConfig(**SMALL)
    gone = Utterance(
        path=str(tmp_path / "gone.wav"), corpus="t", emotion="sad", speaker="s", text="w"
    )
    with pytest.raises(FileNotFoundError, match=r"gone\.wav"):
        extract_features([*corpus, gone], config, tmp_path / "c", progress=False)
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    bad = Utterance(path=str(broken), corpus="t", emotion="sad", speaker="s", text="w")
    with pytest.raises(ValueError, match=r"broken\.wav"):  # raised in a worker process
        extract_features([*corpus, bad], config, tmp_path / "c", workers=2, progress=False)
    # Nothing half-written was kept (the build's lock file stays, empty, as every kit lock).
    assert [p.suffix for p in (tmp_path / "c").iterdir()] == [".lock"]
    with pytest.raises(ValueError, match="workers=0"):
        extract_features(corpus, config, tmp_path / "c", workers=0, progress=False)
    with pytest.raises(ValueError, match="records"):
        extract_features([], config, tmp_path / "c", progress=False)


# --------------------------------------------------------------------------------------------
# Normaliser, labels, dataset


def test_normalizer_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (30, 9, 6)).astype(np.float32)
    x[20:] = x[20:] * 5 + 10  # the "test" items come from another distribution
    train = rng.permutation(20)[:15]
    norm = Normalizer.fit(x, train, block=4)  # several blocks: exercises the merge
    flat = x[train].astype(np.float64).reshape(-1, 6)
    np.testing.assert_allclose(norm.mean, flat.mean(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(norm.std, flat.std(axis=0), rtol=1e-10)
    assert not np.allclose(norm.mean, x.reshape(-1, 6).mean(axis=0), atol=0.5)
    z = norm(x[train]).reshape(-1, 6)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-5)
    restored = Normalizer.from_state_dict(json.loads(json.dumps(norm.state_dict())))
    np.testing.assert_array_equal(restored(x), norm(x))


def records_for_labels():
    return [
        Utterance("/a/1.wav", "t", "sad", "spk2", "yes", valence=1.5, arousal=2.0, dominance=3.0),
        Utterance("/a/2.wav", "t", "neutral", "spk1", "no"),
        Utterance("/a/3.wav", "t", "angry", "spk2", "no", valence=-1.0, arousal=4.0, dominance=0.5),
    ]


def test_label_space_orders_and_encodes():
    recs = records_for_labels()
    space = LabelSpace.from_records(recs)
    assert space.emotions == ("neutral", "sad", "angry")  # EMOTIONS order
    assert space.speakers == ("spk1", "spk2") and space.words == ("no", "yes")
    enc = space.encode(recs)
    assert enc["emotion"].tolist() == [1, 0, 2] and enc["emotion"].dtype == np.int64
    assert enc["speaker"].tolist() == [1, 0, 1] and enc["word"].tolist() == [1, 0, 0]
    np.testing.assert_array_equal(enc["valence"], np.array([1.5, np.nan, -1.0], np.float32))
    assert enc["arousal"].dtype == np.float32
    assert LabelSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


def test_label_space_unseen_label_names_label_and_field():
    space = LabelSpace.from_records(records_for_labels())
    with pytest.raises(ValueError, match="emotion label 'happy'"):
        space.encode([Utterance("/a/4.wav", "t", "happy", "spk1", "no")])
    with pytest.raises(ValueError, match="word label 'maybe'"):
        space.encode([Utterance("/a/5.wav", "t", "sad", "spk1", "maybe")])


def test_ser_dataset_holds_normalised_contiguous_tensors():
    recs = records_for_labels()
    x = np.random.default_rng(3).normal(2, 3, (3, 8, 5)).astype(np.float32)
    space = LabelSpace.from_records(recs)
    norm = Normalizer.fit(x, [0, 2])
    ds = SERDataset(x, recs, [2, 0], space, norm)
    assert ds.x.shape == (2, 1, 8, 5) and ds.x.dtype == torch.float32 and ds.x.is_contiguous()
    np.testing.assert_allclose(ds.x[:, 0].numpy(), (x[[2, 0]] - norm.mean) / norm.std, rtol=1e-5)
    assert ds.labels["emotion"].tolist() == [2, 1]
    item_x, item_labels = ds[1]
    assert torch.equal(item_x, ds.x[1]) and item_labels["index"] == 0
    assert item_labels["speaker"] == 1 and len(ds) == 2
    with pytest.raises(ValueError, match="indices"):
        SERDataset(x, recs, [3], space, norm)


# --------------------------------------------------------------------------------------------
# The cache key is the files' content


@pytest.mark.parametrize("how", ["new inode (rsync -a, tar)", "same inode (cp -p)"])
def test_same_size_replacement_with_the_mtime_kept_rebuilds(corpus, tmp_path, how):
    config = FeatureConfig(**SMALL)
    target = Path(corpus[2].path)
    first = np.array(extract_features(corpus, config, tmp_path / "c", workers=1, progress=False).x)
    st = target.stat()
    new = np.random.default_rng(7).uniform(-0.5, 0.5, sf.info(target).frames)
    replacement = tmp_path / "replacement.wav"
    sf.write(replacement, new, 8000, subtype="FLOAT")
    assert replacement.stat().st_size == st.st_size
    if how.startswith("new inode"):
        os.replace(replacement, target)
    else:  # cp -p onto an existing file: rewritten in place, then the old times restored
        with open(target, "r+b") as fh:
            fh.write(replacement.read_bytes())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = target.stat()
    assert (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert (now.st_ino == st.st_ino) == how.startswith("same inode")
    second = extract_features(corpus, config, tmp_path / "c", workers=1, progress=False)
    np.testing.assert_allclose(
        second.x[2], compute_features(new.astype(np.float32), config), rtol=1e-6
    )
    assert not np.allclose(first[2], second.x[2])
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".json", ".lock", ".npy"]


def test_a_new_mtime_with_the_same_content_is_still_a_cache_hit(corpus, tmp_path, monkeypatch):
    config = FeatureConfig(**SMALL)
    extract_features(corpus, config, tmp_path / "c", workers=1, progress=False)
    for r in corpus:
        os.utime(r.path, ns=(1, 10**18))  # e.g. a copy without -p

    def no_loading(path, sr):
        raise AssertionError("same content: the cache must be used")

    monkeypatch.setattr(F, "_load", no_loading)
    extract_features(corpus, config, tmp_path / "c", workers=1, progress=False)


KILLED_EXTRACTION = """
import sys, time
from qat.data import features as F
from qat.data.records import Utterance

real_load = F._load


def slow_load(path, sample_rate):  # inherited by the forked workers
    time.sleep(0.5)
    return real_load(path, sample_rate)


if __name__ == "__main__":
    F._load = slow_load
    records = [Utterance(p, "t", "happy", "s", "w") for p in sys.argv[2:]]
    config = F.FeatureConfig(sample_rate=8000, segment_seconds=0.5)
    F.extract_features(records, config, sys.argv[1], workers=2, progress=False)
"""


def test_a_killed_extraction_leaves_no_orphan_and_the_next_call_cleans_up(tmp_path):
    from process_tools import kill_and_list_survivors, spawn, wait_until

    folder, cache, log = tmp_path / "wav", tmp_path / "cache", tmp_path / "child.log"
    folder.mkdir()
    records = write_corpus(folder, n=40)
    child = spawn(KILLED_EXTRACTION, cache, *(r.path for r in records), log=log)

    def extracting() -> bool:
        import psutil

        workers = psutil.Process(child.pid).children()
        return len(workers) >= 2 and any(p.name.endswith(".tmp") for p in cache.glob(".*"))

    wait_until(extracting, child, log)
    assert kill_and_list_survivors(child) == []  # the workers ended with their parent
    stale = [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert stale and f".{child.pid}." in stale[0].name  # the case to clean up
    config = FeatureConfig(**SMALL)
    feats = extract_features(records, config, cache, workers=1, progress=False)
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".lock", ".npy"]
    y, _ = sf.read(records[5].path, dtype="float32")
    np.testing.assert_array_equal(feats.x[5], compute_features(y, config))
