"""What a CLIP-style model is measured by: zero-shot classification, retrieval recall, CLIP score.

All scores here come from latentdiff's own CLIP-style model (DESIGN.md section 5): say which
checkpoint, and never compare them with published CLIP numbers (Radford et al. 2021), which come
from another model, other data and other prompts.

``text_table`` is anything with ``condition(prompts) -> {"text" (B, L, D), "text_mask" (B, L)}``:
a ``TextTable`` holding the prompts, or a ``TextEncoder``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_images(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Images (N, C, S, S) in [-1, 1] -> unit-norm embeddings (N, D) float32 on CPU."""
    device = _device(model)
    return torch.cat([model.encode_image(images[i:i + batch_size].to(device, torch.float32)).float().cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def embed_prompts(model: nn.Module, prompts: Sequence[str], text_table, batch_size: int = 500) -> torch.Tensor:
    """Prompts (N strings) -> unit-norm text embeddings (N, D) float32 on CPU."""
    device, out = _device(model), []
    for i in range(0, len(prompts), batch_size):
        cond = text_table.condition(list(prompts[i:i + batch_size]))
        out.append(model.encode_text(cond["text"].to(device), cond["text_mask"].to(device)).float().cpu())
    return torch.cat(out)


def class_embeddings(model: nn.Module, class_prompts: Sequence[str | Sequence[str]], text_table) -> torch.Tensor:
    """One unit-norm embedding per class (K, D): the normalised mean of the embeddings of its
    prompts (CLIP's prompt ensembling, Radford et al. 2021 section 3.1.4); a class may have one prompt."""
    groups = [[p] if isinstance(p, str) else list(p) for p in class_prompts]
    flat = embed_prompts(model, [p for g in groups for p in g], text_table)
    means, start = [], 0
    for g in groups:
        means.append(flat[start:start + len(g)].mean(dim=0))
        start += len(g)
    return torch.nn.functional.normalize(torch.stack(means), dim=-1)


def zero_shot_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       class_prompts: Sequence[str | Sequence[str]], text_table) -> float:
    """Fraction of ``images`` (N, C, S, S) whose nearest class embedding (cosine) is their label (N,).

    ``class_prompts[k]``: the prompt, or the list of prompts (templates), of class k; no
    classifier is trained (CLIP section 3.1.2)."""
    classes = class_embeddings(model, class_prompts, text_table)
    predicted = (embed_images(model, images) @ classes.T).argmax(dim=1)
    return float((predicted == torch.as_tensor(labels).long().cpu()).float().mean())


def recall_from_similarity(sim: torch.Tensor, caption_of: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict:
    """Retrieval recall from a similarity matrix ``sim`` (N images, U distinct captions) and each
    image's caption index ``caption_of`` (N,) in [0, U).

    * text -> image, one query per image (its caption): a hit at k when any image carrying that
      caption is among the k images most similar to it; ``t2i_chance@k`` is a random ranking's
      expected recall, 1 - C(N - m, k) / C(N, k) for a caption shared by m images, averaged (k/N
      when all captions differ).
    * image -> text, over the U distinct captions: a hit at k when the image's caption is among
      the k captions most similar to it; ``i2t_chance@k`` = k/U.

    Returns {"t2i_recall@k", "i2t_recall@k", "t2i_chance@k", "i2t_chance@k", "chance@k" (= k/N)}
    for each k, and "n_images", "n_captions".
    """
    N, U = sim.shape
    caption_of = caption_of.long()
    counts = torch.bincount(caption_of, minlength=U)
    out = {}
    for k in ks:
        top_images = sim.topk(min(k, N), dim=0).indices.T                          # (U, k) per caption
        caption_hit = (caption_of[top_images] == torch.arange(U)[:, None]).any(dim=1)  # (U,)
        top_captions = sim.topk(min(k, U), dim=1).indices                          # (N, k) per image
        out[f"t2i_recall@{k}"] = float(caption_hit[caption_of].float().mean())
        out[f"i2t_recall@{k}"] = float((top_captions == caption_of[:, None]).any(dim=1).float().mean())
        miss = [math.comb(N - int(m), k) / math.comb(N, k) for m in counts[caption_of].tolist()]
        out[f"t2i_chance@{k}"] = 1.0 - sum(miss) / N
        out[f"i2t_chance@{k}"] = min(1.0, k / U)
        out[f"chance@{k}"] = min(1.0, k / N)
    out["n_images"], out["n_captions"] = N, U
    return out


def retrieval_recall(model: nn.Module, images: torch.Tensor, captions: Sequence[str], text_table,
                     ks: Sequence[int] = (1, 5)) -> dict:
    """Text -> image and image -> text Recall@k among N images (N, C, S, S) and their captions (N).

    A caption's correct image is its own; where several images share a caption, any of them
    counts (and image -> text ranks the distinct captions): see ``recall_from_similarity`` for the
    keys and the chance levels."""
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    distinct = list(dict.fromkeys(captions))
    index = {c: i for i, c in enumerate(distinct)}
    sim = embed_images(model, images) @ embed_prompts(model, distinct, text_table).T
    return recall_from_similarity(sim, torch.tensor([index[c] for c in captions]), ks)


def clip_score(model: nn.Module, images: torch.Tensor, prompts: Sequence[str], text_table) -> float:
    """100 x the mean cosine similarity of each image (N, C, S, S) with its prompt (N strings), with
    latentdiff's CLIP-style model (torchmetrics' CLIPScore also clips each cosine at 0; this does not)."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    distinct = list(dict.fromkeys(prompts))
    lookup = {p: i for i, p in enumerate(distinct)}
    text = embed_prompts(model, distinct, text_table)[torch.tensor([lookup[p] for p in prompts])]
    return 100.0 * float((embed_images(model, images) * text).sum(dim=1).mean())
