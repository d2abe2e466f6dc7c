"""Named, documented run presets: a ``RunConfig`` is everything a training run and its sampling need.

``latentdiff presets`` lists them; ``latentdiff train --preset NAME --set train.lr=1e-3`` overrides
any field. The config is saved with every checkpoint, so a checkpoint rebuilds its own model.
One module per family: ``diffusion`` (pixel, latent, text-to-image), ``autoencoders``,
``controlnet``, ``dmd``, ``cascade`` (base, upsamplers, the single-stage comparison), ``clip``,
``unclip`` (priors and decoders), ``captioning``, ``lora`` (LoRA fine-tuning on an image folder); the config
classes in ``configs``.
"""

from __future__ import annotations

from latentdiff.presets.autoencoders import fmnist_vae, fmnist_vqvae, shapes_vae, tiny_vae
from latentdiff.presets.captioning import (CaptionerRunConfig, is_captioner_config, shapes_captioner, shapes_upsampler,
                                           tiny_captioner, tiny_upsampler)
from latentdiff.presets.cascade import photo_sr4, shapes64_base, shapes64_single, shapes64_sr, tiny_sr
from latentdiff.presets.clip import CLIPRunConfig, fmnist_clip, is_clip_config, shapes_clip, tiny_clip
from latentdiff.presets.configs import (AutoencoderRunConfig, ControlNetRunConfig, DMDRunConfig, PairsConfig,
                                        RunConfig, SampleConfig, check_sampling, is_autoencoder_config,
                                        is_controlnet_config, is_dmd_config, is_superres_config)
from latentdiff.presets.controlnet import (fmnist_controlnet_edges, shapes_controlnet_edges, shapes_controlnet_mask,
                                           tiny_controlnet)
from latentdiff.presets.diffusion import (fmnist_ddpm, fmnist_ddpm_paper, fmnist_iddpm, fmnist_ldm, fmnist_t2i,
                                          shapes_t2i, shapes_t2i_flow, shapes_t2i_pixel, tiny, tiny_ldm, tiny_t2i)
from latentdiff.presets.dmd import fmnist_dmd, fmnist_dmd2, tiny_dmd, tiny_dmd2
from latentdiff.presets.lora import LoRARunConfig, is_lora_config, lora
from latentdiff.presets.transformers import fmnist_dit, shapes_t2i_dit, shapes_t2i_mmdit, tiny_dit, tiny_mmdit
from latentdiff.presets.unclip import (PriorRunConfig, fmnist_prior, fmnist_unclip_decoder, is_prior_config,
                                       shapes_prior, shapes_unclip_decoder, tiny_prior, tiny_unclip_decoder)

PRESETS = {
    "fmnist-ddpm": fmnist_ddpm,
    "fmnist-vae": fmnist_vae,
    "fmnist-vqvae": fmnist_vqvae,
    "fmnist-ldm": fmnist_ldm,
    "shapes-vae": shapes_vae,
    "shapes-t2i": shapes_t2i,
    "shapes-t2i-pixel": shapes_t2i_pixel,
    "shapes-t2i-flow": shapes_t2i_flow,
    "fmnist-t2i": fmnist_t2i,
    "shapes-controlnet-edges": shapes_controlnet_edges,
    "shapes-controlnet-mask": shapes_controlnet_mask,
    "fmnist-controlnet-edges": fmnist_controlnet_edges,
    "tiny-vae": tiny_vae,
    "tiny-t2i": tiny_t2i,
    "tiny-controlnet": tiny_controlnet,
    "fmnist-dmd": fmnist_dmd,
    "fmnist-dmd2": fmnist_dmd2,
    "tiny-dmd": tiny_dmd,
    "tiny-dmd2": tiny_dmd2,
    "tiny-ldm": tiny_ldm,
    "fmnist-ddpm-paper": fmnist_ddpm_paper,
    "fmnist-iddpm": fmnist_iddpm,
    "tiny": tiny,
    "shapes64-base": shapes64_base,
    "shapes64-single": shapes64_single,
    "shapes64-sr": shapes64_sr,
    "photo-sr4": photo_sr4,
    "tiny-sr": tiny_sr,
    "fmnist-clip": fmnist_clip,
    "shapes-clip": shapes_clip,
    "tiny-clip": tiny_clip,
    "shapes-prior": shapes_prior,
    "shapes-unclip-decoder": shapes_unclip_decoder,
    "fmnist-prior": fmnist_prior,
    "fmnist-unclip-decoder": fmnist_unclip_decoder,
    "tiny-prior": tiny_prior,
    "tiny-unclip-decoder": tiny_unclip_decoder,
    "shapes-captioner": shapes_captioner,
    "tiny-captioner": tiny_captioner,
    "shapes-upsampler": shapes_upsampler,
    "tiny-upsampler": tiny_upsampler,
    "shapes-t2i-dit": shapes_t2i_dit,
    "shapes-t2i-mmdit": shapes_t2i_mmdit,
    "fmnist-dit": fmnist_dit,
    "tiny-dit": tiny_dit,
    "tiny-mmdit": tiny_mmdit,
    "lora": lora,
}


def get_preset(name: str) -> RunConfig | AutoencoderRunConfig | ControlNetRunConfig | DMDRunConfig:
    """The preset called ``name``; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]()


def run_config_from_dict(config: dict) -> RunConfig | AutoencoderRunConfig | ControlNetRunConfig | DMDRunConfig:
    """A run's config dict (a checkpoint's or run folder's config.json) as its config class, by its ``task``."""
    kinds = ((is_autoencoder_config, AutoencoderRunConfig), (is_controlnet_config, ControlNetRunConfig),
             (is_dmd_config, DMDRunConfig), (is_clip_config, CLIPRunConfig), (is_prior_config, PriorRunConfig),
             (is_captioner_config, CaptionerRunConfig), (is_lora_config, LoRARunConfig))
    cls = next((cls for test, cls in kinds if test(config)), RunConfig)
    return cls.from_dict(config)


def describe_presets() -> list[tuple[str, str]]:
    return [(name, make().description) for name, make in PRESETS.items()]


__all__ = ["AutoencoderRunConfig", "CLIPRunConfig", "CaptionerRunConfig", "ControlNetRunConfig", "DMDRunConfig",
           "LoRARunConfig", "PRESETS", "PairsConfig",
           "PriorRunConfig", "RunConfig", "SampleConfig", "check_sampling", "describe_presets", "get_preset",
           "is_autoencoder_config", "is_captioner_config", "is_clip_config", "is_controlnet_config", "is_dmd_config", "is_lora_config", "is_prior_config",
           "is_superres_config", "run_config_from_dict"]
