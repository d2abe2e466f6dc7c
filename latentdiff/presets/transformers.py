"""Transformer-denoiser presets (issue 21): DiT (Peebles & Xie 2023) and MMDiT (Esser et al. 2024)
trained with rectified flow (logit-normal t), sized to within 10% of the U-Net they are compared
with (``benchmarks/backbones.py`` prints the counts), with their tiny test versions."""

from __future__ import annotations

from latentdiff.nn.transformer import TransformerConfig
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.presets.configs import RunConfig
from latentdiff.presets.diffusion import fmnist_ddpm, shapes_t2i_pixel, tiny, tiny_t2i

FLOW = DiffusionConfig(parameterisation="flow", cond_drop_prob=0.1)  # SD3's logit-normal(0, 1) t


def _transformer_run(base: RunConfig, description: str, transformer: TransformerConfig) -> RunConfig:
    """``base``'s data, text, interface and sampling with a transformer backbone trained by flow matching
    (AdamW at 5e-4 after a 200-step warm-up: transformers want a lower rate than the U-Net's 1e-3)."""
    lr = min(base.train.lr, 5e-4)
    return base.replace(description=description, transformer=transformer, diffusion=FLOW,
                        train=base.train.replace(lr=lr, warmup_steps=max(base.train.warmup_steps, 200)))


def shapes_t2i_dit() -> RunConfig:
    """DiT on shapes in pixel space (2 x 2 patches of 32 px: 256 tokens), cross-attention to MiniLM's
    tokens in every block, pooled text in adaLN; 5.6M parameters against the U-Net's 6.0M."""
    return _transformer_run(shapes_t2i_pixel(), "DiT text-to-image on shapes (pixel 32 px, patch 2, cross-attention, "
                            "rectified flow); 30 min on 2 CPU cores",
                            TransformerConfig(kind="dit", patch_size=4, dim=192, depth=6, heads=4, qk_norm=True))


def shapes_t2i_mmdit() -> RunConfig:
    """MMDiT on shapes in pixel space: image and text streams with one joint attention, pooled text in
    adaLN, q/k RMS-norm; sized to the U-Net's parameter count."""
    return _transformer_run(shapes_t2i_pixel(), "MMDiT text-to-image on shapes (pixel 32 px, patch 2, joint "
                            "attention, rectified flow); 30 min on 2 CPU cores",
                            TransformerConfig(kind="mmdit", patch_size=4, dim=208, depth=4, heads=4, qk_norm=True))


def fmnist_dit() -> RunConfig:
    """Class-conditional DiT on Fashion-MNIST (the demo's data, guidance and budget), rectified flow."""
    return _transformer_run(fmnist_ddpm(), "class-conditional DiT on Fashion-MNIST 32x32 (patch 2, rectified flow; "
                            "the demo's 12 min on 2 CPU cores)",
                            TransformerConfig(kind="dit", patch_size=4, dim=192, depth=7, heads=4, qk_norm=True))


def tiny_dit() -> RunConfig:
    return _transformer_run(tiny(), "tiny class-conditional DiT (rectified flow), for tests",
                            TransformerConfig(kind="dit", patch_size=4, dim=32, depth=2, heads=2))


def tiny_mmdit() -> RunConfig:
    return _transformer_run(tiny_t2i(), "tiny MMDiT text-to-image on 64 shapes images (rectified flow), for tests",
                            TransformerConfig(kind="mmdit", patch_size=4, dim=32, depth=2, heads=2, qk_norm=True))
