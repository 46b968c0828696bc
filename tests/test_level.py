"""Level-robust input (issue 38, item 2): the run settings `level` (loudness normalisation of
each segment before its features) and `augment` (gain and noise on training batches), each
checked against an independent computation: features recomputed from a gained waveform, the
SNR measured on the mixed power, the RMS of the active blocks measured directly."""

import dataclasses
import hashlib
import json
import math
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from qat import config, experiments, rundata, runs, train, upstream
from qat.config import RunConfig
from qat.data import augment, features
from qat.data.augment import Augmenter, add_noise, gain_shift
from qat.data.dataset import Normalizer
from qat.data.features import (
    FeatureConfig,
    active_rms,
    compute_features,
    extract_features,
    normalise_level,
)
from qat.data.records import Utterance
from qat.train import TrainConfig, fit

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = FeatureConfig(**config.PROFILES["smoke"]["features"])  # logmel, 0.5 s, 32 mels
GAINS_DB = (-20.0, -10.0, 6.0)


def speechlike(seed: int, seconds: float = 0.4, rate: int = 16000) -> np.ndarray:
    """Broadband noise in syllable-like bursts with pauses between them (some of the blocks
    silent, the others at levels 15 dB apart), at about -20 dBFS."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi)), 0, None)
    envelope *= np.where(t < seconds / 2, 1.0, 10 ** (-15 / 20))
    return 0.1 * envelope * rng.standard_normal(n)


def db(ratio: float) -> float:
    return 20 * math.log10(ratio)


# ------------------------------------------------------------------------------------------
# The settings and their keys


def test_the_settings_are_spelled_alike_everywhere():
    assert config.LEVELS == features.LEVELS and config.LEVELS[0] == "raw"
    assert config.AUGMENTS[0] == "none"
    run = RunConfig(profile="smoke")
    assert (run.level, run.augment) == ("raw", "none")


def test_default_settings_keep_every_committed_records_key():
    """A committed record rebuilds its key without either setting; a non-default one adds
    exactly its own entry and reads back from the record."""
    committed = sorted((ROOT / "reports" / "runs").glob("ser-*.json"))
    assert committed
    record = runs.load_record(committed[0])
    rebuilt = RunConfig.from_record(record)
    assert rebuilt.key_dict() == record["config"]
    assert committed[0].name.startswith(runs.record_path("ser", rebuilt.key_dict()).stem)
    assert "level" not in record["config"] and "augment" not in record["config"]
    real = rebuilt.replace(model="real")  # augment is for networks that read features
    for name, value in (("level", "normalise"), ("augment", "gain"),
                        ("augment", "gain+noise")):  # fmt: skip
        changed = real.replace(**{name: value})
        ranges = {"augment_ranges": augment.RANGES} if name == "augment" else {}
        assert changed.key_dict() == {**real.key_dict(), name: value, **ranges}
        assert RunConfig.from_record(changed.key_dict()) == changed
        assert changed.label().endswith(f"{name} {value} seed {real.seed}")


def test_bad_values_and_augmenting_rhemo_embeddings_are_refused():
    with pytest.raises(ValueError, match=r"level='loud': expected one of raw, normalise"):
        RunConfig(profile="smoke", level="loud")
    with pytest.raises(ValueError, match=r"augment='noise': expected one of none, gain"):
        RunConfig(profile="smoke", augment="noise")
    with pytest.raises(ValueError, match=r"augment='gain': expected 'none' .* RH-emo"):
        RunConfig(profile="smoke", model="quaternion", augment="gain")
    RunConfig(profile="smoke", model="quaternion", level="normalise")  # level is for both
    with pytest.raises(ValueError, match=r"FeatureConfig.level='loud'"):
        FeatureConfig(level="loud")


def test_the_cli_options_carry_the_settings():
    import argparse

    from qat import cli

    parser = argparse.ArgumentParser()
    cli.add_config_arguments(parser)
    args = parser.parse_args(["--profile", "smoke", "--level", "normalise", "--augment",
                              "gain+noise"])  # fmt: skip
    run = cli.config_from_args(args)
    assert (run.level, run.augment) == ("normalise", "gain+noise")
    assert (cli.config_from_args(parser.parse_args([])).level) == "raw"


def test_raw_features_keep_their_cache_key_and_normalise_gets_its_own():
    """The cpu profile's feature key as the feature cache has been keyed all along (pinned,
    and recomputed here the way it was before the setting), and as files store it; the
    normalised features are keyed by the level and by normalise_level's constants."""
    raw = rundata.feature_config("cpu")
    assert raw.key() == "000cc5076c132ff4"
    fields = {f.name: getattr(raw, f.name) for f in dataclasses.fields(raw) if f.name != "level"}
    payload = json.dumps({"version": features.FEATURE_VERSION, **fields}, sort_keys=True)
    assert raw.key() == hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert raw.as_dict() == fields
    normalised = rundata.feature_config("cpu", "normalise")
    assert normalised.as_dict() == {**fields, "level": "normalise"}
    assert normalised.key() != raw.key()
    assert FeatureConfig(**normalised.as_dict()) == normalised
    assert FeatureConfig(**raw.as_dict()) == raw


def test_a_changed_normalisation_rebuilds_only_the_normalised_caches(monkeypatch):
    raw, normalised = rundata.feature_config("cpu"), rundata.feature_config("cpu", "normalise")
    keys = raw.key(), normalised.key()
    monkeypatch.setattr(features, "LEVEL_TARGET_DBFS", -26.0)
    assert raw.key() == keys[0] and normalised.key() != keys[1]


def test_upstream_networks_are_keyed_by_the_level():
    quaternion = RunConfig(profile="smoke", model="quaternion")
    assert "level" not in upstream.rhemo_key(quaternion)
    assert upstream.rhemo_key(quaternion.replace(level="normalise"))["level"] == "normalise"
    # augmentation trains the SER network only: RH-emo is shared
    real = RunConfig(profile="smoke", augment="gain")
    assert upstream.rhemo_key(real) == upstream.rhemo_key(real.replace(augment="none"))


# ------------------------------------------------------------------------------------------
# level="normalise"


def test_active_rms_measures_the_loud_blocks_and_scales_with_the_signal():
    """Three 20 ms blocks at constant amplitudes 0.1, 0.01 (20 dB down: active) and 0.001
    (40 dB down: gated out), then silence: the RMS of the first two, computed by hand."""
    block = round(features.LEVEL_BLOCK_SECONDS * 16000)
    y = np.concatenate([np.full(block, 0.1), np.full(block, -0.01), np.full(block, 0.001),
                        np.zeros(3 * block)])  # fmt: skip
    assert active_rms(y, 16000) == pytest.approx(math.sqrt((0.1**2 + 0.01**2) / 2))
    for gain in GAINS_DB:
        a = 10 ** (gain / 20)
        assert active_rms(a * y, 16000) == pytest.approx(a * active_rms(y, 16000), rel=1e-12)
    assert active_rms(np.zeros(100), 16000) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalise_level_hits_its_target_at_any_input_gain(seed):
    y = speechlike(seed)
    out = normalise_level(y, 16000)
    assert db(active_rms(out, 16000)) == pytest.approx(features.LEVEL_TARGET_DBFS, abs=1e-9)
    for gain in GAINS_DB:
        np.testing.assert_allclose(normalise_level(10 ** (gain / 20) * y, 16000), out,
                                   rtol=1e-12, atol=1e-15)  # fmt: skip


def test_clipping_protection_caps_the_peak_whatever_the_input_gain():
    """A click over a quiet tone (crest factor far above the target's headroom): the peak
    lands on the ceiling instead of clipping, at every input gain."""
    y = 0.001 * np.sin(np.arange(8000) / 5.0)
    y[4000] = 0.5
    out = normalise_level(y, 16000)
    assert np.max(np.abs(out)) == pytest.approx(features.LEVEL_PEAK_CEILING)
    assert db(active_rms(out, 16000)) < features.LEVEL_TARGET_DBFS
    for gain in GAINS_DB:
        np.testing.assert_allclose(normalise_level(10 ** (gain / 20) * y, 16000), out, rtol=1e-12)


@pytest.mark.parametrize(
    "fc",
    [
        dataclasses.replace(SMOKE, level="normalise"),
        FeatureConfig(kind="stft", segment_seconds=0.5, level="normalise"),
        FeatureConfig(kind="logmel", segment_seconds=0.5, compression="none", level="normalise"),
    ],
    ids=["logmel", "stft", "melpower"],
)
@pytest.mark.parametrize("seconds", [0.3, 0.8], ids=["padded", "cropped"])
def test_normalised_features_are_invariant_to_gain(fc, seconds):
    """Random speech-like signals at -20, -10 and +6 dB: the same features as the clean one
    within float32 rounding; under "raw" they differ by the gain."""
    for seed in range(3):
        y = speechlike(seed, seconds).astype(np.float32)
        clean = compute_features(y, fc)
        raw = dataclasses.replace(fc, level="raw")
        for gain in GAINS_DB:
            gained = (10 ** (gain / 20) * y.astype(np.float64)).astype(np.float32)
            np.testing.assert_allclose(compute_features(gained, fc), clean, rtol=1e-4,
                                       atol=1e-4 * np.abs(clean).max())  # fmt: skip
            assert not np.allclose(compute_features(gained, raw), compute_features(y, raw),
                                   rtol=1e-2)  # fmt: skip


def test_silence_is_refused_by_normalise_level_and_left_alone_by_the_features():
    with pytest.raises(ValueError, match="digital silence"):
        normalise_level(np.zeros(8000), 16000)
    with pytest.raises(ValueError, match="digital silence"):
        normalise_level(np.zeros(0), 16000)
    normalised = dataclasses.replace(SMOKE, level="normalise")
    zeros = np.zeros(4000, dtype=np.float32)
    np.testing.assert_array_equal(compute_features(zeros, normalised),
                                  compute_features(zeros, SMOKE))  # fmt: skip


def _write_corpus(folder, gains):
    """The same two utterances written at each gain, as float WAVs (no quantisation)."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for gain in gains:
        for i in range(2):
            path = folder / f"u{i}_{gain:+.0f}dB.wav"
            sf.write(path, 10 ** (gain / 20) * speechlike(i), 16000, subtype="FLOAT")
            records.append(Utterance(str(path), "synthemo", ("happy", "sad")[i], "s0", "w",
                                     uid=path.stem))  # fmt: skip
    return records


def test_the_cache_holds_normalised_features_under_their_own_key(tmp_path):
    records = _write_corpus(tmp_path / "audio", (0.0, *GAINS_DB))
    normalised = dataclasses.replace(SMOKE, level="normalise")
    raw = extract_features(records, SMOKE, tmp_path / "cache", workers=1, progress=False)
    norm = extract_features(records, normalised, tmp_path / "cache", workers=1, progress=False)
    assert raw.path != norm.path and normalised.key() in norm.path.name
    sidecar = json.loads(norm.path.with_suffix(".json").read_text())
    assert sidecar["config"]["level"] == "normalise"
    assert "level" not in json.loads(raw.path.with_suffix(".json").read_text())["config"]
    x = np.asarray(norm.x).reshape(1 + len(GAINS_DB), 2, *SMOKE.shape)
    for other in x[1:]:
        np.testing.assert_allclose(other, x[0], atol=1e-4 * np.abs(x[0]).max())
    assert not np.allclose(np.asarray(raw.x)[2:4], np.asarray(raw.x)[:2], rtol=1e-2)


# ------------------------------------------------------------------------------------------
# augment


def _normalised(fc: FeatureConfig, seeds=range(4)):
    """(the clean items' features, a normaliser fitted on them, their normalised tensor
    (N, 1, frames, bins))."""
    clean = np.stack([compute_features(speechlike(s, 0.35), fc) for s in seeds])
    normalizer = Normalizer.fit(clean)
    return clean, normalizer, torch.from_numpy(normalizer(clean)).unsqueeze(1)


@pytest.mark.parametrize(
    "fc",
    [SMOKE, FeatureConfig(kind="stft", segment_seconds=0.5),
     FeatureConfig(kind="logmel", segment_seconds=0.5, compression="none")],
    ids=["logmel", "stft", "melpower"],
)  # fmt: skip
def test_gain_augmentation_equals_the_features_of_the_gained_waveform(fc):
    """The augmented normalised features against compute_features of the waveform scaled by
    the same gain, normalised alike (an independent reference): equal wherever the clean
    features are above the log floor. An entry under the floor (digital silence: the pauses
    of `speechlike`, the weakest bins of a frame at the padding's edge) that a positive gain
    lifts above it cannot be recovered from features stored at the floor: it stays there,
    off by less than the shift (the documented approximation)."""
    gains = torch.tensor([-12.0, -5.5, 3.0, 12.0])
    for hiss in (1e-3, 0.0):  # a recording's noise floor; digital silence between the bursts

        def signal(seed, gain=0.0, hiss=hiss):
            y = speechlike(seed, 0.35)
            y = y + hiss * np.random.default_rng(seed + 10).standard_normal(len(y))
            return 10 ** (gain / 20) * y

        clean = np.stack([compute_features(signal(s), fc) for s in range(4)])
        normalizer = Normalizer.fit(clean)
        x = torch.from_numpy(normalizer(clean)).unsqueeze(1)
        out = Augmenter("gain", fc, normalizer).apply(x, gains)
        assert out.shape == x.shape and out.dtype == x.dtype
        for i, gain in enumerate(gains.tolist()):
            reference = normalizer(compute_features(signal(i, gain), fc)[None])[0]
            off = ~np.isclose(out[i, 0].numpy(), reference, rtol=1e-4, atol=2e-4)
            floor = clean[i] <= math.log(fc.log_floor) + augment.FLOOR_TOLERANCE
            assert not (off & ~floor).any()  # exact above the floor
            assert off.mean() < (0.002 if hiss else 0.01)  # a padding edge's weakest bins
            if fc.kind == "logmel" and fc.compression == "log":
                shift = gain_shift(normalizer, gain).numpy()[None].repeat(len(off), 0)
                assert (np.abs(out[i, 0].numpy() - reference)[off] <= shift[off] + 1e-4).all()


def test_the_gain_is_a_per_bin_shift_of_normalised_log_mel_above_the_floor():
    clean, normalizer, x = _normalised(SMOKE)
    out = Augmenter("gain", SMOKE, normalizer).apply(x, torch.full((4,), 7.0))
    above = torch.from_numpy(clean > math.log(SMOKE.log_floor) + 1).unsqueeze(1)
    shift = gain_shift(normalizer, 7.0).float()  # 7 dB * ln(10) / 10 / std_b
    expected = (x + shift)[above]
    torch.testing.assert_close(out[above], expected, rtol=0, atol=1e-5)
    floor = ~torch.from_numpy(clean > math.log(SMOKE.log_floor) + 1e-3).unsqueeze(1)
    assert floor.any()  # the padding around the 0.35 s utterances
    torch.testing.assert_close(out[floor], x[floor])  # the floor stays where it is


@pytest.mark.parametrize("fc", [SMOKE, FeatureConfig(kind="stft", segment_seconds=0.5)],
                         ids=["logmel", "stft"])  # fmt: skip
def test_noise_augmentation_hits_its_snr_in_the_power_domain(fc):
    """The SNR measured on the mixed features' power (mel power, or STFT magnitude squared):
    the clean power over the added power, summed over each item."""
    clean, normalizer, x = _normalised(fc)
    snrs = torch.tensor([5.0, 10.0, 20.0, 30.0])
    out = Augmenter("gain+noise", fc, normalizer).apply(
        x, torch.zeros(4), snrs, torch.Generator().manual_seed(0)
    )
    raw = out[:, 0].double().numpy() * normalizer.std + normalizer.mean

    def power(v):
        if fc.kind == "logmel":
            return np.exp(v)
        return np.expm1(v) ** 2

    mixed, reference = power(raw), power(clean.astype(np.float64))
    measured = 10 * np.log10(reference.sum((1, 2)) / (mixed - reference).sum((1, 2)))
    np.testing.assert_allclose(measured, snrs.numpy(), atol=0.02)
    assert (mixed >= reference * (1 - 1e-4)).all()  # noise only adds power


def test_add_noise_scales_its_noise_to_the_snr_exactly():
    power = torch.rand(3, 10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    power = power + 0.1
    out = add_noise(power, torch.tensor([0.0, 6.0, 25.0]), torch.Generator().manual_seed(1))
    measured = augment.snr_db(power.numpy(), out.numpy())
    np.testing.assert_allclose(measured, [0.0, 6.0, 25.0], atol=1e-9)
    manual = 10 * np.log10(power.sum((1, 2)).numpy() / (out - power).sum((1, 2)).numpy())
    np.testing.assert_allclose(manual, measured, atol=1e-12)


def test_draws_lie_in_the_declared_ranges_and_follow_the_seed():
    _, normalizer, _ = _normalised(SMOKE, range(2))
    augmenter = Augmenter("gain+noise", SMOKE, normalizer)
    gains, snrs = augmenter.draw(4000, torch.Generator().manual_seed(3))
    assert gains.abs().max() <= augment.GAIN_DB and gains.abs().max() > 0.95 * augment.GAIN_DB
    noised = snrs[~snrs.isnan()]
    assert (noised >= augment.SNR_DB[0]).all() and (noised <= augment.SNR_DB[1]).all()
    assert len(noised) / 4000 == pytest.approx(augment.NOISE_PROBABILITY, abs=0.03)
    again = augmenter.draw(4000, torch.Generator().manual_seed(3))
    assert torch.equal(gains, again[0]) and torch.equal(snrs.nan_to_num(), again[1].nan_to_num())
    gain_only = Augmenter("gain", SMOKE, normalizer).draw(10, torch.Generator().manual_seed(3))
    assert gain_only[1].isnan().all()
    with pytest.raises(ValueError, match="augment='none'"):
        Augmenter("none", SMOKE, normalizer)


# ------------------------------------------------------------------------------------------
# fit: training batches only


def _toy_data(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 8, generator=g)
    return SimpleNamespace(x=x, labels={"emotion": torch.arange(n) % 3}, indices=np.arange(n))


def _toy_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 8, 3))


def _normaliser():
    return Normalizer(np.full(8, -5.0), np.full(8, 2.0))


def test_augmentation_never_reaches_validation_or_the_monitor(monkeypatch):
    """Every input the augmenter gets is a training batch; with the training step made a
    no-op (identical weights), validation and monitor scores are the same with augment on and
    off, while the steps saw different inputs."""
    trainset, val, monitor = _toy_data(0, 20), _toy_data(1, 9), _toy_data(2, 7)
    augmenter = Augmenter("gain+noise", dataclasses.replace(SMOKE, n_mels=8), _normaliser())
    seen, stepped = [], {}

    def spy(x, generator):
        seen.append(x.clone())
        return augmenter(x, generator)

    def no_step(self, x, labels, keys=None, lam=0.0):
        stepped.setdefault(self.tag, []).append(x.clone())
        return {"task": 1.0, "train_acc": 0.0}

    monkeypatch.setattr(train.Step, "__call__", no_step)
    histories = {}
    for tag, transform in (("off", None), ("on", spy)):
        monkeypatch.setattr(train.Step, "tag", tag, raising=False)
        cfg = TrainConfig(epochs=2, batch_size=8, selection="final")
        histories[tag] = fit(_toy_net(), trainset, val, cfg, monitor=monitor, progress=False,
                             augment=transform)["history"]  # fmt: skip
    assert seen and all(
        any(torch.equal(row, t) for t in trainset.x) for x in seen for row in x
    )  # fmt: skip
    scores = ("val_loss", "val_ua", "test_loss", "test_ua")
    assert [[h[k] for k in scores] for h in histories["on"]] == [
        [h[k] for k in scores] for h in histories["off"]
    ]
    assert len(stepped["on"]) == len(stepped["off"])
    assert not any(torch.equal(a, b) for a, b in zip(stepped["on"], stepped["off"], strict=True))


def test_augmented_training_is_reproducible_and_leaves_the_batch_order_alone():
    """The same seed gives the same weights; an identity augmentation gives exactly the run
    without one (its generator is a stream of its own)."""
    trainset, val = _toy_data(0, 20), _toy_data(1, 9)
    augmenter = Augmenter("gain+noise", dataclasses.replace(SMOKE, n_mels=8), _normaliser())

    def weights(transform, seed=0):
        net = _toy_net()
        fit(net, trainset, val, TrainConfig(epochs=2, batch_size=8, seed=seed), progress=False,
            augment=transform)  # fmt: skip
        return [p.detach().clone() for p in net.parameters()]

    first, second = weights(augmenter), weights(augmenter)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other = weights(augmenter, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    plain, identity = weights(None), weights(lambda x, g: (torch.rand(1, generator=g), x)[1])
    assert all(torch.equal(a, b) for a, b in zip(plain, identity, strict=True))


# ------------------------------------------------------------------------------------------
# A run end to end: features, training and the saved model


def test_a_normalised_augmented_run_records_its_settings_and_its_model_normalises(monkeypatch):
    run = RunConfig(profile="smoke", level="normalise", augment="gain+noise")
    given = []

    def spy(*args, **kwargs):
        given.append(kwargs.get("augment"))
        return fit(*args, **kwargs)

    monkeypatch.setattr(experiments, "fit", spy)
    record = experiments.train_ser(run, progress=False)
    assert len(given) == 1 and isinstance(given[0], Augmenter)
    assert given[0].mode == "gain+noise" and given[0].config.level == "normalise"
    assert record["config"]["level"] == "normalise"
    assert record["config"]["augment"] == "gain+noise"
    data = rundata.run_data(run, progress=False)
    assert experiments.augmenter(run, data).config.level == "normalise"
    assert experiments.augmenter(run.replace(augment="none"), data) is None
    from qat.saved import load_model, model_path

    predictor = load_model(model_path(record["config"]))
    assert predictor.feature_config.level == "normalise"
    path = data.records[int(data.test.indices[0])].path
    y, rate = sf.read(path, dtype="float64")
    clean = predictor.classify_batch(y, rate).probabilities
    for gain in GAINS_DB:
        gained = predictor.classify_batch(10 ** (gain / 20) * y, rate).probabilities
        torch.testing.assert_close(gained, clean, rtol=1e-4, atol=1e-5)


def test_augmenting_an_anti_transfer_run_turns_its_target_cache_off():
    from qat.models import vgg16

    run = RunConfig(profile="smoke", method="at", tap="conv2_1")
    data = rundata.run_data(run, progress=False)
    frozen = vgg16(len(data.label_space.emotions), width=run.width).eval()
    kept = experiments._parts(run, data, data.train, frozen).anti_transfer
    off = experiments._parts(run.replace(augment="gain"), data, data.train, frozen).anti_transfer
    assert kept._budget_bytes > 0 and off._budget_bytes == 0
