"""Fréchet distance between Gaussians fitted to features (FD-EffNet).

For feature distributions summarised by means mu_1, mu_2 and covariances
Sigma_1, Sigma_2, the Fréchet (2-Wasserstein) distance of the Gaussians is
(Dowson & Landau, 1982; used as FID by Heusel et al., 2017, eq. 6)

    d^2 = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2}).

The plug-in estimator is strongly biased upwards at small N, so every FD that
latentdiff reports comes with its floor: the FD between two real subsets
(train vs test) of the same size N (DESIGN.md section 5).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch.utils.data import Dataset

from .features import FEATURE_IMAGE_SIZE, EffNetFeatures

# Bumped whenever the feature protocol changes, so stale caches are not reused.
_FEATURE_PROTOCOL = f"effnet-lite0-{FEATURE_IMAGE_SIZE}px-v1"


def cache_dir() -> Path:
    """latentdiff's cache folder: ``$LATENTDIFF_CACHE``, else ``~/.cache/latentdiff`` (created)."""
    path = Path(os.environ.get("LATENTDIFF_CACHE") or Path.home() / ".cache" / "latentdiff")
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), both float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {features.shape}")
    mu = features.mean(axis=0)
    sigma = np.cov(features, rowvar=False)
    return mu, np.atleast_2d(sigma)


def _single_blas_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS/LAPACK to one thread where threadpoolctl is installed.

    The Schur-based sqrtm gains little from threads, and on a busy machine
    oversubscribed BLAS threads made a 1280x1280 sqrtm 15x slower (42 s vs 2.8 s).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _sqrtm_quiet(matrix: np.ndarray) -> np.ndarray:
    """scipy's sqrtm on one BLAS thread, without its "matrix is singular" warning.

    Feature covariances from N < D samples are always singular; the result is
    still usable, and non-finite output is handled by the caller.
    """
    with warnings.catch_warnings(), _single_blas_thread():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(matrix)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) covariances.
        eps: ridge added to both covariances if the matrix square root of
            their product is not finite (singular product).

    Returns:
        d^2 as a Python float (computed in float64).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    mean_term = float(np.sum((mu1 - mu2) ** 2))

    sqrt_product = _sqrtm_quiet(sigma1 @ sigma2)
    if not np.isfinite(sqrt_product).all():
        # A singular product can make sqrtm fail; a small ridge makes it well posed.
        ridge = eps * np.eye(sigma1.shape[0])
        sqrt_product = _sqrtm_quiet((sigma1 + ridge) @ (sigma2 + ridge))

    if np.iscomplexobj(sqrt_product):
        # Round-off gives tiny imaginary parts (in conjugate pairs); keep the real part.
        largest_imag = np.max(np.abs(np.diagonal(sqrt_product).imag))
        if largest_imag > 1e-3:
            warnings.warn(f"frechet_distance: sqrtm has imaginary diagonal up to {largest_imag:.3g}; "
                          "using its real part", RuntimeWarning, stacklevel=2)
        sqrt_product = sqrt_product.real

    trace_term = float(np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(sqrt_product))
    return mean_term + trace_term


def fd_effnet(images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """FD-EffNet between two image sets, each (N, C, H, W) in [-1, 1]."""
    extractor = EffNetFeatures()
    mu_a, sigma_a = feature_stats(extractor(images_a))
    mu_b, sigma_b = feature_stats(extractor(images_b))
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def _dataset_key(dataset: Dataset) -> str:
    """A short, file-name-safe identity of a dataset for cache keys."""
    name = type(dataset).__name__.lower()
    if getattr(dataset, "cache_key", None):
        return dataset.cache_key
    if name == "fashionmnist":
        return "fmnist"
    root = getattr(dataset, "root", None)
    if root is not None:
        digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:10]
        return f"{name}-{digest}-c{getattr(dataset, 'channels', 0)}"
    return name


def random_subset(dataset: Dataset, n: int, seed: int) -> torch.Tensor:
    """(n, C, S, S) images in [-1, 1]: a seeded random subset without replacement."""
    if n > len(dataset):
        raise ValueError(f"asked for {n} images but the dataset has only {len(dataset)}")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(dataset), generator=generator)[:n]
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(index)["x"]
    return torch.stack([dataset[i]["x"] for i in index.tolist()])


def real_stats(dataset_name_or_dataset: str | Dataset, split: str = "test", n: int = 1000,
               seed: int = 0, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """EffNet feature statistics of ``n`` random real images, cached on disk.

    Args:
        dataset_name_or_dataset: a dataset object (with the latentdiff dict
            interface) or a name for ``build_dataset`` ("fmnist").
        split: which split (used to build a named dataset, and in the key).
        n: subset size.
        seed: seed of the subset choice.
        image_size: image side when building a named dataset.

    Returns:
        mu (1280,) and sigma (1280, 1280), float64. Cached as
        ``cache_dir()/fd_stats/<dataset>_<split>_s<size>_n<n>_seed<seed>.npz``.
    """
    if isinstance(dataset_name_or_dataset, str):
        from ..data import DataConfig, build_dataset

        dataset = build_dataset(DataConfig(name=dataset_name_or_dataset, image_size=image_size), split)
    else:
        dataset = dataset_name_or_dataset
    size = getattr(dataset, "image_size", image_size)
    key = f"{_dataset_key(dataset)}_{split}_s{size}_n{n}_seed{seed}_{_FEATURE_PROTOCOL}"
    path = cache_dir() / "fd_stats" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return cached["mu"], cached["sigma"]

    features = EffNetFeatures()(random_subset(dataset, n, seed))
    mu, sigma = feature_stats(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, mu=mu, sigma=sigma)
    tmp.replace(path)  # atomic, so concurrent workers never read half a file
    return mu, sigma


def fd_with_floor(generated_images: torch.Tensor, real_test_dataset: Dataset,
                  real_train_dataset: Dataset, n: int | None = None, seed: int = 0) -> dict:
    """FD-EffNet of generated images against the test split, with its floor at the same N.

    Args:
        generated_images: (M, C, H, W) in [-1, 1]; the first ``n`` are used.
        real_test_dataset: held-out real images (reference set).
        real_train_dataset: real training images (for the floor).
        n: evaluation size N (default M).
        seed: seed of the real subsets.

    Returns:
        ``{"fd_effnet": FD(generated, test), "fd_floor": FD(train, test), "n_eval": N}``
        where every set has N images.
    """
    n = generated_images.shape[0] if n is None else n
    if generated_images.shape[0] < n:
        raise ValueError(f"need {n} generated images, got {generated_images.shape[0]}")
    mu_test, sigma_test = real_stats(real_test_dataset, "test", n, seed)
    mu_train, sigma_train = real_stats(real_train_dataset, "train", n, seed)
    mu_gen, sigma_gen = feature_stats(EffNetFeatures()(generated_images[:n]))
    return {
        "fd_effnet": frechet_distance(mu_gen, sigma_gen, mu_test, sigma_test),
        "fd_floor": frechet_distance(mu_train, sigma_train, mu_test, sigma_test),
        "n_eval": n,
    }
