"""Model-agnostic training: the accelerate loop, EMA, optimiser, loss plots, and what keeps runs safe
(one writer per run folder, resume rules, finiteness checks)."""

from latentdiff.training.batches import BatchStream, epoch_permutation
from latentdiff.training.divergence import DivergenceError
from latentdiff.training.ema import EMA
from latentdiff.training.optim import LinearWarmup, build_optimizer, warmup_schedule
from latentdiff.training.plots import plot_loss, read_metrics
from latentdiff.training.lock import RunLocked, run_lock
from latentdiff.training.train_config import TrainConfig
from latentdiff.training.signals import TrainingStopped
from latentdiff.training.start import seeded_run
from latentdiff.training.trainer import Trainer

__all__ = [
    "EMA",
    "BatchStream",
    "DivergenceError",
    "LinearWarmup",
    "RunLocked",
    "TrainConfig",
    "Trainer",
    "TrainingStopped",
    "build_optimizer",
    "epoch_permutation",
    "plot_loss",
    "read_metrics",
    "run_lock",
    "seeded_run",
    "warmup_schedule",
]
