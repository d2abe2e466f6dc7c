"""DreamBooth's class-specific prior-preservation loss (Ruiz et al. 2023, section 3.3, eq. 2).

Fine-tuning on a few images of a subject makes a model forget its class (language drift) and lose
diversity. DreamBooth adds the denoising loss of class images x_pr, generated once by the frozen
pre-trained model from the class prompt c_pr:

    L = E[ w_t || x_hat(a_t x + s_t eps, c) - x ||^2 ]
        + lambda E[ w_t' || x_hat(a_t' x_pr + s_t' eps', c_pr) - x_pr ||^2 ]

The first term is the run's own diffusion loss on the instance images and their prompts c, the
second the same loss on the class images (the paper uses lambda = 1). Here both terms are whatever
``loss_fn`` the base model trains with (its parameterisation, weighting and condition dropout), so
L = loss_fn(instance batch) + lambda loss_fn(class batch).
"""

from __future__ import annotations

import torch
from torch import nn

PRIOR_PREFIX = "prior_"


def split_batch(batch: dict) -> tuple[dict, dict]:
    """A paired batch -> (instance batch, class batch): the class items' keys carry ``PRIOR_PREFIX``."""
    instance = {k: v for k, v in batch.items() if not k.startswith(PRIOR_PREFIX)}
    prior = {k[len(PRIOR_PREFIX):]: v for k, v in batch.items() if k.startswith(PRIOR_PREFIX)}
    return instance, prior


class PriorPreservation:
    """``loss_fn(model, batch, generator) -> (loss, logs)``: ``instance + weight * prior`` (eq. 2), each
    term ``loss_fn`` on its half of the paired batch (``split_batch``), the instance term first (so it
    draws its noise and timesteps first from ``generator``)."""

    def __init__(self, loss_fn, weight: float):
        self.loss_fn, self.weight = loss_fn, float(weight)

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        instance, prior = split_batch(batch)
        loss_instance, logs = self.loss_fn(model, instance, generator)
        loss_prior, prior_logs = self.loss_fn(model, prior, generator)
        logs = {**logs, **{f"prior_{k}": v for k, v in prior_logs.items()},
                "instance_loss": float(loss_instance.detach()), "prior_loss": float(loss_prior.detach())}
        return loss_instance + self.weight * loss_prior, logs


class PairedDataset:
    """Instance items paired with class items for prior preservation: ``get_batch(index)`` -> the
    instance batch, plus the class batch of items ``index mod len(prior)`` under ``PRIOR_PREFIX`` keys."""

    def __init__(self, instance, prior):
        self.instance, self.prior = instance, prior

    def __len__(self) -> int:
        return len(self.instance)

    def __getattr__(self, name):  # captions, table, num_classes, ... of the instance data
        if name in ("instance", "prior"):
            raise AttributeError(name)
        return getattr(self.instance, name)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        prior = self.prior.get_batch(index % len(self.prior))
        return {**self.instance.get_batch(index), **{PRIOR_PREFIX + k: v for k, v in prior.items()}}


__all__ = ["PRIOR_PREFIX", "PairedDataset", "PriorPreservation", "split_batch"]
