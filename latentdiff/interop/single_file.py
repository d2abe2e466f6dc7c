"""The original Latent Diffusion / Stable Diffusion 1.x single-file checkpoint layout (CompVis'
``LatentDiffusion`` state dict, as ``.safetensors``), split into and joined from its parts:

    model.diffusion_model.*            the U-Net            (interop/unet.py: unet_from_ldm / unet_to_ldm)
    first_stage_model.*                the KL autoencoder   (interop/vae.py: vae_from_ldm / vae_to_ldm)
    cond_stage_model.transformer.*     the CLIP text model, in transformers' own names (a prefix only)
    model_ema.*                        the U-Net's EMA copy: its LDM name with the dots removed
                                       (``model_ema.diffusion_modelinput_blocks00weight``), plus
                                       ``model_ema.decay`` and ``model_ema.num_updates``
    betas, alphas_cumprod, ...         DDPM's schedule buffers (``DDPM.register_schedule``): all
                                       closed forms of ``betas``, recomputed here

Any other key is refused by name, so an SD 2.x (OpenCLIP, ``cond_stage_model.model.*``) or SDXL
(``conditioner.*``) file fails with a message instead of losing its text encoder.
"""

from __future__ import annotations

from typing import Mapping

import torch

from latentdiff.interop.keys import LayoutError
from latentdiff.schedules import SCHEDULES, make_betas

PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text": "cond_stage_model.transformer.",
            "ema": "model_ema."}
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")
_REFUSED = {"cond_stage_model.model.": "an OpenCLIP text encoder (Stable Diffusion 2.x): convert its diffusers "
                                       "folder instead", "conditioner.": "SDXL's conditioner (not supported)"}


def split_single_file(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A single-file state dict -> {"unet", "vae", "text", "ema", "schedule"}: each part's tensors with
    its prefix removed (absent parts are empty). Raises LayoutError naming keys of no known part."""
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in (*PREFIXES, "schedule")}
    unknown = []
    for key, value in state.items():
        part = next((name for name, prefix in PREFIXES.items() if key.startswith(prefix)), None)
        if part is not None:
            parts[part][key[len(PREFIXES[part]):]] = value
        elif key in SCHEDULE_BUFFERS or key == "logvar":  # logvar: LDM's (unused) learned log-variance per t
            parts["schedule"][key] = value
        else:
            for prefix, why in _REFUSED.items():
                if key.startswith(prefix):
                    raise LayoutError(f"single-file checkpoint: {key!r} belongs to {why}")
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:12])
        raise LayoutError(f"single-file checkpoint: {len(unknown)} key(s) of no known part "
                          f"(model.diffusion_model., first_stage_model., cond_stage_model.transformer., model_ema., "
                          f"schedule buffers): {shown}")
    return parts


def ema_key(ldm_unet_key: str) -> str:
    """The ``model_ema`` name of a U-Net tensor: ``diffusion_model.`` + its LDM name, dots removed."""
    return ("diffusion_model." + ldm_unet_key).replace(".", "")


def ema_state(ema: Mapping[str, torch.Tensor], unet_keys: list[str]) -> dict[str, torch.Tensor] | None:
    """The EMA U-Net under LDM U-Net names (None when the file has no EMA); every EMA tensor placed."""
    if not ema:
        return None
    flat = {k: v for k, v in ema.items() if k not in ("decay", "num_updates")}
    out = {key: flat.pop(ema_key(key)) for key in unet_keys if ema_key(key) in flat}
    missing = [k for k in unet_keys if k not in out]
    if flat or missing:
        raise LayoutError(f"single-file checkpoint: model_ema does not match the U-Net (unplaced: "
                          f"{sorted(flat)[:8]}, U-Net tensors without an EMA copy: {missing[:8]})")
    return out


def schedule_name(buffers: Mapping[str, torch.Tensor], timesteps: int = 1000) -> str | None:
    """Our schedule whose betas equal the file's ``betas`` (float32 precision); None if it has none."""
    if "betas" not in buffers:
        return None
    betas = buffers["betas"].double()
    for name in SCHEDULES:
        ours = make_betas(name, len(betas))
        if torch.allclose(betas, ours, rtol=1e-5, atol=1e-8):
            return name
    raise LayoutError(f"single-file checkpoint: its betas ({float(betas[0]):.6g} ... {float(betas[-1]):.6g}, "
                      f"T={len(betas)}) match none of latentdiff's schedules ({', '.join(SCHEDULES)})")


def schedule_buffers(name: str, timesteps: int = 1000) -> dict[str, torch.Tensor]:
    """DDPM's schedule buffers for our schedule ``name`` (Ho et al. 2020, eqs. 4, 6, 7; float32)."""
    betas = make_betas(name, timesteps)
    alpha_bar = torch.cumprod(1 - betas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
    posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    out = {"betas": betas, "alphas_cumprod": alpha_bar, "alphas_cumprod_prev": alpha_bar_prev,
           "sqrt_alphas_cumprod": alpha_bar.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - alpha_bar).sqrt(),
           "log_one_minus_alphas_cumprod": (1 - alpha_bar).log(), "sqrt_recip_alphas_cumprod": alpha_bar.rsqrt(),
           "sqrt_recipm1_alphas_cumprod": (1 / alpha_bar - 1).sqrt(), "posterior_variance": posterior_variance,
           "posterior_log_variance_clipped": posterior_variance.clamp_min(1e-20).log(),  # LDM clips at 1e-20
           "posterior_mean_coef1": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
           "posterior_mean_coef2": (1 - alpha_bar_prev) * (1 - betas).sqrt() / (1 - alpha_bar)}
    return {k: v.float() for k, v in out.items()}


def join_single_file(unet: Mapping, vae: Mapping | None = None, text: Mapping | None = None,
                     schedule: str | None = None, timesteps: int = 1000) -> dict[str, torch.Tensor]:
    """The parts (each under its own names) -> one single-file state dict."""
    out = {PREFIXES["unet"] + k: v for k, v in unet.items()}
    out |= {PREFIXES["vae"] + k: v for k, v in (vae or {}).items()}
    out |= {PREFIXES["text"] + k: v for k, v in scoped_text(text or {}).items()}
    if schedule is not None:
        out |= schedule_buffers(schedule, timesteps)
    return out


def text_state(part: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """``cond_stage_model.transformer.*`` (prefix removed) -> a transformers CLIPTextModel state dict
    with the keys ``expected`` (with or without the ``text_model.`` scope, which transformers 5 drops);
    the ``position_ids`` buffer is dropped (transformers recomputes it)."""
    scoped = any(k.startswith("text_model.") for k in expected)
    out = {}
    for key, value in part.items():
        bare = key.removeprefix("text_model.")
        if not bare.endswith("position_ids"):
            out["text_model." + bare if scoped else bare] = value
    missing, extra = sorted(expected - set(out)), sorted(set(out) - expected)
    if missing or extra:
        raise LayoutError(f"single-file checkpoint: its text encoder does not fit the CLIP text config given "
                          f"(missing: {missing[:8]}, unplaced: {extra[:8]})")
    return out


def scoped_text(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel state dict in the single file's names: every key under ``text_model.``."""
    return {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()}
