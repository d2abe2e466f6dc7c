"""Model-agnostic training: the accelerate loop, EMA, optimiser and loss plots."""

from latentdiff.training.ema import EMA
from latentdiff.training.optim import LinearWarmup, build_optimizer, warmup_schedule
from latentdiff.training.plots import plot_loss, read_metrics
from latentdiff.training.batches import BatchStream, epoch_permutation
from latentdiff.training.trainer import Trainer, TrainConfig

__all__ = [
    "EMA",
    "BatchStream",
    "LinearWarmup",
    "TrainConfig",
    "Trainer",
    "build_optimizer",
    "epoch_permutation",
    "plot_loss",
    "read_metrics",
    "warmup_schedule",
]
