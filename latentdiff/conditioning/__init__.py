"""Conditioning: frozen text encoders (CFG condition dropout and small CLIP come with text-to-image)."""

from latentdiff.conditioning.text import TextEncoder, default_text_encoder_path

__all__ = ["TextEncoder", "default_text_encoder_path"]
