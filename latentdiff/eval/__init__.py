"""Evaluation: FD-EffNet with its floor, and class accuracy of a trained classifier."""

from .classifier import SmallCNN, class_accuracy, load_or_train_classifier, train_classifier
from .fd import cache_dir, fd_effnet, fd_with_floor, feature_stats, frechet_distance, real_stats
from .features import EffNetFeatures, effnet_features, load_effnet_lite0

__all__ = [
    "EffNetFeatures",
    "SmallCNN",
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
