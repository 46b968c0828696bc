"""Invariance probe: pooled tap activations and the linear probe's held-out accuracy."""

import numpy as np
import pytest
import torch

from qat.models import vgg16
from qat.probe import fit_logistic, pooled_activations, probe_accuracy


def _linear_features(labels, num_classes, dim, rng, noise=0.3):
    """Features = a fixed linear map of the one-hot label plus Gaussian noise."""
    directions = rng.normal(size=(num_classes, dim)) * 3.0
    return np.eye(num_classes)[labels] @ directions + noise * rng.normal(size=(len(labels), dim))


def test_probe_decodes_linearly_encoded_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=600)
    feats = _linear_features(labels, 4, 10, rng)
    accuracy = probe_accuracy(feats[:300], labels[:300], feats[300:], labels[300:])
    assert accuracy >= 0.98


def test_probe_on_random_features_is_at_chance_within_binomial_band():
    rng = np.random.default_rng(1)
    num_classes, n_test = 4, 2000
    train_labels = rng.integers(0, num_classes, size=400)
    test_labels = np.repeat(np.arange(num_classes), n_test // num_classes)  # balanced
    # With balanced test labels independent of the features, any classifier's accuracy is
    # Binomial(n_test, 1/K) / n_test; 4 standard deviations make a false alarm ~6e-5.
    chance = 1 / num_classes
    band = 4 * np.sqrt(chance * (1 - chance) / n_test)
    accuracy = probe_accuracy(
        rng.normal(size=(400, 8)), train_labels, rng.normal(size=(n_test, 8)), test_labels
    )
    assert abs(accuracy - chance) <= band


def test_test_labels_unseen_in_training_count_as_errors():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=400)
    feats = _linear_features(labels, 3, 6, rng)
    test_labels = labels[200:].copy()
    test_labels[:50] = 7  # a word never heard in training
    accuracy = probe_accuracy(feats[:200], labels[:200], feats[200:], test_labels)
    seen_accuracy = probe_accuracy(feats[:200], labels[:200], feats[250:], labels[250:])
    assert accuracy == pytest.approx(seen_accuracy * 150 / 200)


def test_probe_rejects_bad_inputs():
    feats, labels = np.ones((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"train_labels must be 1-D with one label per row"):
        probe_accuracy(feats, labels[:3], feats, labels)
    with pytest.raises(ValueError, match="train_feats has 3 features per item, test_feats 2"):
        probe_accuracy(feats, labels, feats[:, :2], labels)
    with pytest.raises(ValueError, match="at least two classes"):
        probe_accuracy(feats, np.zeros(4, dtype=int), feats, labels)
    with pytest.raises(ValueError, match="test_feats must be a non-empty"):
        probe_accuracy(feats, labels, np.ones(3), labels[:3])
    with pytest.raises(ValueError, match="NaN"):
        probe_accuracy(np.full((4, 3), np.nan), labels, feats, labels)


def test_pooled_activations_match_a_manual_mean_and_restore_train_mode():
    model = vgg16(num_classes=5, width=1 / 16)
    x = torch.randn(7, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    model.train()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    pooled = pooled_activations(model, "conv2_1", x, batch_size=3)  # 3 + 3 + 1
    assert model.training
    for name, value in model.state_dict().items():  # eval: running stats untouched
        torch.testing.assert_close(value, state_before[name], rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        activation = model.truncated("conv2_1")(x)
    assert activation.ndim == 4
    expected = activation.double().mean(dim=(2, 3)).numpy()
    assert pooled.shape == (7, activation.shape[1])
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)
    penultimate = pooled_activations(model, "penultimate", x.numpy(), batch_size=4)
    with torch.no_grad():
        np.testing.assert_allclose(penultimate, model.embed(x).numpy(), rtol=1e-5, atol=1e-6)


def test_pooled_activations_rejects_bad_arguments():
    model = vgg16(num_classes=5, width=1 / 16)
    x = torch.zeros(2, 1, 32, 32)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        pooled_activations(model, "conv1_1", x, batch_size=0)
    with pytest.raises(ValueError, match="conv9_9"):
        pooled_activations(model, "conv9_9", x)
    with pytest.raises(ValueError, match="non-empty batch"):
        pooled_activations(model, "conv1_1", torch.zeros(0, 1, 32, 32))


def test_all_taps_in_one_pass_equal_the_taps_one_by_one():
    from qat.probe import pooled_at_taps

    torch.manual_seed(0)
    for quaternion, channels in ((False, 1), (True, 4)):
        net = vgg16(3, in_channels=channels, quaternion=quaternion, width=1 / 16).train()
        x = torch.randn(10, channels, 32, 32)
        taps = ["conv1_2", "conv3_1", "conv5_3", "penultimate"]
        together = pooled_at_taps(net, taps, x, batch_size=4)
        assert net.training  # mode restored
        for tap in taps:
            np.testing.assert_allclose(
                together[tap], pooled_activations(net, tap, x), rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("dims, classes", [(8, 2), (64, 12), (256, 40)])
def test_the_probe_predicts_as_scikit_learns_logistic_regression(dims, classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(dims)
    labels = rng.integers(0, classes, 1200)
    centres = rng.normal(size=(classes, dims))
    feats = centres[labels] * 0.3 + rng.normal(size=(1200, dims)) * rng.uniform(0.1, 5, dims)
    feats[:, 0] = 7.0  # a constant feature is only centred, as StandardScaler does
    fit, held = slice(0, 800), slice(800, None)
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, tol=1e-6))
    expected = reference.fit(feats[fit], labels[fit]).predict(feats[held])
    weight, bias, mean, scale = fit_logistic(feats[fit], labels[fit], classes, max_iter=3000,
                                             tol=1e-6)  # fmt: skip
    x = (torch.as_tensor(feats[held], dtype=torch.float32) - mean) / scale
    ours = (x @ weight + bias).argmax(1).numpy()
    assert np.mean(ours == expected) >= 0.97  # float32 vs float64, the same optimum
    accuracy = probe_accuracy(feats[fit], labels[fit], feats[held], labels[held])
    assert accuracy == pytest.approx(np.mean(expected == labels[held]), abs=0.02)
