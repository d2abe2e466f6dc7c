"""DALL·E 3's recaptioning (Betker et al. 2023): an image captioner trained here on the labelled share
of ``shapes``, writing short and descriptive captions (greedy or beam decoding); the prompt
upsampler, its decoder conditioned on a short prompt instead of an image. Training, loading,
batched captioning and evaluation: ``latentdiff.pipelines.captioning``; presets:
``latentdiff.presets.captioning``."""

from latentdiff.captioning.data import LabelledShare, labelled_indices, style_captions
from latentdiff.captioning.model import STYLES, Captioner, CaptionerConfig, PromptUpsampler, TextDecoder
from latentdiff.captioning.text import (CaptionLoss, beam, build_vocab, caption_loss, decode_ids, encode_captions,
                                        greedy, sample)

__all__ = ["STYLES", "CaptionLoss", "Captioner", "CaptionerConfig", "LabelledShare", "PromptUpsampler",
           "TextDecoder", "beam", "build_vocab", "caption_loss", "decode_ids", "encode_captions", "greedy",
           "labelled_indices", "sample", "style_captions"]
