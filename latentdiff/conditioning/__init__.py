"""Conditioning: frozen text encoders, their on-disk embedding cache, captioned datasets."""

from latentdiff.conditioning.text import (TextConfig, TextEncoder, default_text_encoder_path, null_condition,
                                          text_encoder)
from latentdiff.conditioning.text_cache import TextConditioned, TextTable, text_table

__all__ = ["TextConfig", "TextEncoder", "default_text_encoder_path", "null_condition", "text_encoder",
           "TextConditioned", "TextTable", "text_table"]
