"""Eval: Fréchet distance maths, EffNet features, FD caching, classifier accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import latentdiff.eval.classifier as classifier_module
import latentdiff.eval.fd as fd_module
from latentdiff.eval import (
    EffNetFeatures,
    SmallCNN,
    class_accuracy,
    fd_with_floor,
    feature_stats,
    frechet_distance,
    load_or_train_classifier,
    real_stats,
    train_classifier,
)


def random_covariance(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    factor = rng.normal(size=(dim, rank or 2 * dim))
    return factor @ factor.T / factor.shape[1]


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_by_eigh(mu1, sigma1, mu2, sigma2) -> float:
    """Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}, a symmetric PSD matrix: use eigh."""
    root1 = psd_sqrt(sigma1)
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def test_frechet_identical_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), random_covariance(rng, 16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_frechet_full_covariance_matches_eigh():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    sigma1, sigma2 = random_covariance(rng, 12), random_covariance(rng, 12)
    expected = frechet_by_eigh(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_frechet_singular_covariances_stay_finite():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    sigma1, sigma2 = random_covariance(rng, 20, rank=5), random_covariance(rng, 20, rank=5)
    got = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(got)
    assert got == pytest.approx(frechet_by_eigh(mu1, sigma1, mu2, sigma2), rel=1e-4)


def test_feature_stats_matches_numpy():
    features = np.random.default_rng(4).normal(size=(50, 6))
    mu, sigma = feature_stats(torch.from_numpy(features))
    np.testing.assert_allclose(mu, features.mean(0))
    np.testing.assert_allclose(sigma, np.cov(features.T))


@pytest.fixture(scope="module")
def extractor() -> EffNetFeatures:
    return EffNetFeatures(progress=False)


def test_effnet_features_shape_and_grey_equals_rgb(extractor):
    grey = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    features = extractor(grey)
    assert features.shape == (3, 1280) and features.dtype == np.float64
    np.testing.assert_allclose(features, extractor(grey.repeat(1, 3, 1, 1)), rtol=1e-5, atol=1e-6)
    assert extractor.preprocess(grey).shape == (3, 3, 128, 128)
    assert not np.allclose(features[0], features[1])  # different images, different features


class TinyImages(torch.utils.data.Dataset):
    """Random images with the latentdiff dict interface (no real data needed)."""

    channels, num_classes, image_size = 1, 10, 32

    def __init__(self, n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, 32, 32, generator=generator) * 2 - 1
        self.labels = torch.randint(0, 10, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": self.labels[i]}

    def get_batch(self, index):
        return {"x": self.x[index], "label": self.labels[index]}


def test_real_stats_cached_and_fd_with_floor(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDIFF_CACHE", str(tmp_path))
    test_ds, train_ds = TinyImages(12, seed=1), TinyImages(12, seed=2)
    mu, sigma = real_stats(test_ds, "test", n=6, seed=0)
    assert mu.shape == (1280,) and sigma.shape == (1280, 1280)
    assert len(list((tmp_path / "fd_stats").glob("*_test_s32_n6_seed0_*.npz"))) == 1

    class NoFeatures:  # a cache hit must not recompute features
        def __call__(self, images):
            raise AssertionError("features recomputed despite the cache")

    with monkeypatch.context() as patch:
        patch.setattr(fd_module, "EffNetFeatures", NoFeatures)
        mu_again, sigma_again = real_stats(test_ds, "test", n=6, seed=0)
    np.testing.assert_array_equal(mu, mu_again)
    np.testing.assert_array_equal(sigma, sigma_again)

    result = fd_with_floor(train_ds.x[:8], test_ds, train_ds, n=6)
    assert set(result) == {"fd_effnet", "fd_floor", "n_eval"} and result["n_eval"] == 6
    # N=6 images in 1280 dims: both estimates are large but finite and positive.
    assert result["fd_effnet"] > 0 and result["fd_floor"] > 0


class FixedLogits(nn.Module):
    """Predicts class round(10 * x[0, 0, 0]) mod 10 through one-hot logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        predicted = (x[:, 0, 0, 0] * 10).round().long() % 10
        return nn.functional.one_hot(predicted, 10).float()


def test_class_accuracy_exact_fraction():
    predicted = torch.arange(23) % 10
    images = (predicted.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    labels = predicted.clone()
    wrong = torch.tensor([0, 5, 6, 12, 22])
    labels[wrong] = (labels[wrong] + 1) % 10
    model = FixedLogits().train()
    assert class_accuracy(model, images, labels, batch_size=6) == pytest.approx(18 / 23, abs=0)
    assert model.training  # mode restored


def test_train_classifier_deterministic_and_restores_threads():
    data = TinyImages(96, seed=3)
    threads = torch.get_num_threads()
    first = train_classifier(data, epochs=1, seed=5, batch_size=32)
    second = train_classifier(data, epochs=1, seed=5, batch_size=32)
    assert torch.get_num_threads() == threads
    assert not first.training
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert first(data.x[:4]).shape == (4, 10)


def test_load_or_train_classifier_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDIFF_CACHE", str(tmp_path))
    import latentdiff.data as data_module

    monkeypatch.setattr(data_module, "build_dataset", lambda cfg, split: TinyImages(40, seed=7))
    monkeypatch.setattr(classifier_module, "train_classifier",
                        lambda ds, epochs, seed: SmallCNN().eval())
    trained = load_or_train_classifier("fmnist", 32)
    meta = json.loads(next((tmp_path / "classifiers").glob("*.json")).read_text())
    assert 0 <= meta["test_accuracy"] <= 1 and meta["seed"] == 0

    monkeypatch.setattr(classifier_module, "train_classifier", None)  # must not train again
    loaded = load_or_train_classifier("fmnist", 32)
    x = TinyImages(4, seed=8).x
    torch.testing.assert_close(loaded(x), trained(x))
