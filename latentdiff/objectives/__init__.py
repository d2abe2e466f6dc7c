"""Training objectives: denoising losses (Algorithm 1, v/x0 targets, min-SNR) and learned variance."""

from latentdiff.objectives.diffusion import DiffusionConfig, DiffusionLoss, snr_weight
from latentdiff.objectives.learned_variance import vlb_term

__all__ = ["DiffusionConfig", "DiffusionLoss", "snr_weight", "vlb_term"]
