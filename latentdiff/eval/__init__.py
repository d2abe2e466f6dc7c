"""Evaluation: FD-EffNet with its floor, class accuracy of a trained classifier, and likelihood in bits/dim."""

from .classifier import SmallCNN, class_accuracy, load_or_train_classifier, train_classifier
from .fd import cache_dir, fd_effnet, fd_with_floor, feature_stats, frechet_distance, real_stats
from .features import EffNetFeatures, effnet_features, load_effnet_lite0
from .likelihood_ode import bits_per_dim, dequantize, ode_log_likelihood
from .likelihood_vlb import importance_proposal, uniform_proposal, vlb_bits_per_dim

__all__ = [
    "EffNetFeatures",
    "SmallCNN",
    "bits_per_dim",
    "dequantize",
    "importance_proposal",
    "ode_log_likelihood",
    "uniform_proposal",
    "vlb_bits_per_dim",
    "cache_dir",
    "class_accuracy",
    "effnet_features",
    "fd_effnet",
    "fd_with_floor",
    "feature_stats",
    "frechet_distance",
    "load_effnet_lite0",
    "load_or_train_classifier",
    "real_stats",
    "train_classifier",
]
