"""Text embeddings computed once per set of captions and kept on disk (DESIGN.md section 3).

A captioned dataset has few distinct captions (``shapes``: about 3,000 over 50,000 images;
Fashion-MNIST from templates: about 150), so the frozen encoder runs once per distinct caption and
training looks rows up by caption index. One file per (encoder, max_length, captions)::

    cache_dir()/text/<key>.safetensors   tokens (U, L, D) float16, pooled (U, D), mask (U, L) uint8

written to ``<key>.tmp`` and renamed, so a crash never leaves a partial file under the final name.
The empty caption "" is always in the table: it is the null condition (see ``conditioning/text.py``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentdiff.conditioning.text import TextConfig, TextEncoder, default_text_encoder_path, text_encoder


class TextTable:
    """Encoded captions: ``rows(ids (B,))`` or ``condition(prompts)`` -> {"text" (B, L, D) float32,
    "text_mask" (B, L) bool, "pooled" (B, D)}, the conditioning dict of a text-to-image model."""

    def __init__(self, prompts: list[str], tokens: torch.Tensor, pooled: torch.Tensor, mask: torch.Tensor):
        self.prompts, self.tokens, self.pooled, self.mask = list(prompts), tokens, pooled, mask.bool()
        self.index = {p: i for i, p in enumerate(self.prompts)}

    def ids(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in self.index]
        if missing:
            raise KeyError(f"prompt not in the text table: {missing[0]!r}")
        return torch.tensor([self.index[p] for p in prompts], dtype=torch.long)

    def rows(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"text": self.tokens[ids].float(), "text_mask": self.mask[ids], "pooled": self.pooled[ids].float()}

    def condition(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.rows(self.ids(prompts))


def encode_in_batches(encoder: TextEncoder, prompts: list[str], batch_size: int = 256):
    """``encoder.encode`` over many prompts: (tokens (N, L, D), pooled (N, D), mask (N, L))."""
    parts = [encoder.encode(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    return tuple(torch.cat(p) for p in zip(*parts))


def _table_key(cfg: TextConfig, prompts: list[str]) -> str:
    h = hashlib.sha1(str(Path(cfg.encoder or default_text_encoder_path()).resolve()).encode())
    h.update(f"{cfg.max_length}\n{'all' if cfg.attend_padding else 'masked'}\n".encode() + "\n".join(prompts).encode())
    return h.hexdigest()[:16]


def text_table(cfg: TextConfig, prompts: list[str], encoder: TextEncoder | None = None) -> TextTable:
    """The table of every distinct prompt in ``prompts`` (and ""), from the disk cache when present."""
    from latentdiff.eval.fd import cache_dir

    unique = sorted(set(prompts) | {""})
    path = cache_dir() / "text" / f"{_table_key(cfg, unique)}.safetensors"
    if path.is_file():
        stored = load_file(path)
        return TextTable(unique, stored["tokens"], stored["pooled"], stored["mask"])
    encoder = encoder or text_encoder(cfg)
    tokens, pooled, mask = encode_in_batches(encoder, unique)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"tokens": tokens.half().contiguous(), "pooled": pooled.contiguous(),
               "mask": mask.to(torch.uint8).contiguous()}, str(tmp))
    os.replace(tmp, path)
    return TextTable(unique, tokens.half(), pooled, mask)


class TextConditioned:
    """A dataset (``get_batch``) whose items carry captions: batches gain the caption's text condition.

    ``get_batch(index)`` -> the base batch plus {"text", "text_mask", "pooled"} of each item's caption.
    """

    def __init__(self, base, captions: list[str], table: TextTable):
        if len(captions) != len(base):
            raise ValueError(f"{len(captions)} captions for a dataset of {len(base)} items")
        self.base, self.table, self.caption_ids = base, table, table.ids(captions)
        self.num_classes = getattr(base, "num_classes", 0)

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        return {**self.base.get_batch(index), **self.table.rows(self.caption_ids[index])}


class BlendedText(TextConditioned):
    """A recaptioned dataset whose batches carry both captions' text conditions, for DALL·E 3's blend
    (``objectives.blend``): {"text", "text_mask", "pooled"} of the synthetic caption and the same keys
    with ``_original`` appended of the original caption (``original_captions``, one per item)."""

    def __init__(self, base, captions: list[str], original_captions: list[str], table: TextTable):
        super().__init__(base, captions, table)
        self.original_ids = table.ids(original_captions)

    def get_batch(self, index: torch.Tensor) -> dict:
        index = torch.as_tensor(index, dtype=torch.long)
        original = self.table.rows(self.original_ids[index])
        return {**super().get_batch(index), **{f"{k}_original": v for k, v in original.items()}}
