"""What samples are conditioned on, as ``generate`` takes it: one :class:`Conditioning` for the n
images of a call, turned batch by batch into the (cond, uncond) dicts of the denoiser contract
(DESIGN.md section 3: ``class_labels``, ``text`` + ``text_mask`` + ``pooled``, ``control`` +
``control_scale``, ``low_res`` + ``aug_level``), and the guidance wrappers built on them. No maths
here: guidance itself is ``sampling.guidance``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import nn

from latentdiff.precond import Denoiser
from latentdiff.sampling import CFGDenoiser, ControlWindow, ThresholdedDenoiser, control_sigma_window


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """The conditions of n samples (every field optional; none: the unconditional model).

    Attributes:
        class_labels: (n,) int64 labels, guided against the null class.
        prompts: n prompts, guided against ``negative_prompt`` ("" = the unconditional model);
            they need a ``text_encoder`` with ``condition(prompts) -> {"text", "text_mask", "pooled"}``
            (a TextEncoder or TextTable).
        negative_prompt: the unconditional branch's prompt.
        text_encoder: encodes the prompts.
        control: (n, sum C_k, S, S) control images in [0, 1] for a ControlledUNet.
        control_scale: one residual scale per ControlNet (guess mode: the unconditional branch has 0).
        control_steps: (start, end): the fraction of the sampling steps in which the ControlNets act.
        shared: per-image entries (n, ...) that both guidance branches get as they are: a
            super-resolution stage's ``low_res`` (n, C, h, w) and ``aug_level`` (n,).
        image_embeds: (n, D) unit CLIP image embeddings for an unCLIP decoder, guided against the
            zero embedding (the null condition its training dropped to).
    """

    class_labels: torch.Tensor | None = None
    prompts: Sequence[str] | None = None
    negative_prompt: str = ""
    text_encoder: Any = None
    control: torch.Tensor | None = None
    control_scale: Sequence[float] = (1.0,)
    control_steps: tuple[float, float] = (0.0, 1.0)
    shared: dict[str, torch.Tensor] | None = None
    image_embeds: torch.Tensor | None = None

    def replace(self, **changes) -> "Conditioning":
        return dataclasses.replace(self, **changes)

    def rows(self, start: int, stop: int) -> "Conditioning":
        """The conditions of images start..stop-1 (the per-image fields sliced)."""
        cut = lambda v: None if v is None else v[start:stop]  # noqa: E731
        shared = None if self.shared is None else {k: v[start:stop] for k, v in self.shared.items()}
        return self.replace(class_labels=cut(self.class_labels), prompts=cut(self.prompts),
                            control=cut(self.control), shared=shared, image_embeds=cut(self.image_embeds))


def conditions(denoiser: Denoiser, c: Conditioning) -> tuple[dict, dict]:
    """(cond, uncond) dicts for one batch: labels against the null class, prompts against the
    negative prompt, control in both branches (except guess mode's unconditional one), ``shared``
    entries in both (guidance is on the text or label alone), image embeddings against none (zero)."""
    cond, uncond = {}, {}
    device = next(denoiser.net.parameters()).device
    for key, value in (c.shared or {}).items():
        cond[key] = uncond[key] = value.to(device)
    if c.control is not None:
        scale = torch.tensor([list(c.control_scale)], device=device).expand(len(c.control), -1)
        cond.update(control=c.control.to(device), control_scale=scale)
        guess = getattr(denoiser.net, "guess_mode", False)
        uncond.update(control=c.control.to(device), control_scale=torch.zeros_like(scale) if guess else scale)
    if c.image_embeds is not None:
        cond["image_embed"] = c.image_embeds.to(device)
        uncond["image_embed"] = torch.zeros_like(cond["image_embed"])  # the null embedding (as none at all)
    if c.class_labels is not None:
        cond["class_labels"] = c.class_labels
        uncond["class_labels"] = torch.full_like(c.class_labels, denoiser.net.cfg.num_classes)
    if c.prompts is not None:
        if c.text_encoder is None:
            raise ValueError("prompts need a text_encoder")
        cond.update({k: v.to(device) for k, v in c.text_encoder.condition(list(c.prompts)).items()})
        negative = c.text_encoder.condition([c.negative_prompt])  # one encoder pass, shared by the batch
        uncond.update({k: v.to(device).expand(len(c.prompts), *v.shape[1:]) for k, v in negative.items()})
    return cond, uncond


def guided(denoiser: nn.Module, cond: dict, uncond: dict, guidance: float, threshold: str = "none",
           percentile: float = 0.995) -> nn.Module:
    """The denoiser with classifier-free guidance (when guidance != 1 and there is a condition) and
    x0 clipping: ``threshold`` none | static ([-1, 1]) | dynamic (Imagen, at ``percentile``)."""
    model = denoiser if guidance == 1.0 or not cond else CFGDenoiser(denoiser, guidance, uncond)
    if threshold not in ("none", "static", "dynamic"):
        raise ValueError(f"threshold must be none, static or dynamic; got {threshold!r}")
    if threshold != "none":
        model = ThresholdedDenoiser(model, percentile if threshold == "dynamic" else None)
    return model


def windowed(denoiser: Denoiser, sigmas: torch.Tensor, control_steps: tuple[float, float]) -> nn.Module:
    """The denoiser with its ControlNets active only in the ``control_steps`` fraction of the grid."""
    if tuple(control_steps) == (0.0, 1.0):
        return denoiser
    return ControlWindow(denoiser, *control_sigma_window(sigmas, *control_steps))
