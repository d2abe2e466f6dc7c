"""The symmetric contrastive loss of CLIP (Radford et al. 2021, Figure 3), with repeated captions.

For a batch of B (image, caption) pairs with unit-norm embeddings I, T (B, D) and log logit scale
s, the logits are ``exp(s) * I T^T`` (B, B) and the loss is the mean of the two cross-entropies,
image -> text over the rows and text -> image over the columns, the target of row i being
column i (InfoNCE, van den Oord et al. 2018).

Repeated captions: ``shapes`` and Fashion-MNIST batches hold several images with the same caption
(Fashion-MNIST has about 150 distinct captions). With ``caption_ids`` (B,) the items with equal ids
are all positives of each other: the target of row i is uniform over {j : id_j = id_i} (a
multi-positive, supervised-contrastive target, Khosla et al. 2020). With all ids distinct it *is*
plain InfoNCE (the same code path). Note: when equal ids mean equal text embeddings (one caption,
a deterministic text tower, as here), the multi-positive loss equals plain InfoNCE in value and in
every parameter's gradient (uniform weights over equal logits change no cross-entropy, and the
tied text rows' gradients add up the same); both then have a floor above 0 (log m for a caption
repeated m times). It differs, and matters, when ids group texts whose embeddings differ (class
labels as ids, stochastic text augmentation); the in-batch accuracies logged here count any
positive as a hit, which is where repeated captions do change what is reported.

In a multi-process run each process contrasts its own batch (open_clip's loss without
``gather_with_grad``): the negatives are the per-process batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def positives(caption_ids: torch.Tensor) -> torch.Tensor:
    """(B,) caption ids -> (B, B) bool, True where two items share a caption (the diagonal included)."""
    return caption_ids[:, None] == caption_ids[None, :]


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
             caption_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: (CE(logits, targets) + CE(logits^T, targets)) / 2, logits = exp(s) I T^T.

    Args:
        image_emb: (B, D) unit-norm image embeddings.
        text_emb: (B, D) unit-norm text embeddings; row i is image i's caption.
        logit_scale: the log logit scale s (a 0-d tensor or a float), already clamped.
        caption_ids: (B,) int, optional: items with equal ids are all positives of each other
            (targets uniform over them); None or all distinct: plain InfoNCE.

    Returns:
        The scalar loss.
    """
    logits = torch.as_tensor(logit_scale, device=image_emb.device).float().exp() * (
        image_emb.float() @ text_emb.float().T)
    B = logits.shape[0]
    if caption_ids is None or int(torch.unique(caption_ids).numel()) == B:
        target = torch.arange(B, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    same = positives(caption_ids.to(logits.device)).to(logits.dtype)
    target = same / same.sum(dim=1, keepdim=True)  # symmetric: the same targets serve both directions
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@torch.no_grad()
def in_batch_accuracy(image_emb: torch.Tensor, text_emb: torch.Tensor,
                      caption_ids: torch.Tensor | None = None) -> tuple[float, float]:
    """(image -> text, text -> image) top-1 accuracy within the batch; a pick counts when it shares
    the query's caption."""
    sim = image_emb @ text_emb.T
    ids = torch.arange(len(sim), device=sim.device) if caption_ids is None else caption_ids.to(sim.device)
    i2t = (ids[sim.argmax(dim=1)] == ids).float().mean()
    t2i = (ids[sim.argmax(dim=0)] == ids).float().mean()
    return float(i2t), float(t2i)


class CLIPLoss:
    """``loss_fn(model, batch, generator) -> (loss, logs)`` for the trainer (training/trainer.py).

    ``batch``: "x" (B, C, S, S) images, "text" (B, L, text_dim) frozen token states, "text_mask"
    (B, L) bool and, optionally, "caption_id" (B,) int (``clip.data.CaptionIds`` adds it). Logs the
    temperature's inverse ``exp(scale)`` and the in-batch top-1 accuracies. No randomness: the
    generator is unused.
    """

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        image_emb, text_emb, scale = model(batch["x"], batch["text"], batch["text_mask"])
        ids = batch.get("caption_id")
        loss = info_nce(image_emb, text_emb, scale, ids)
        i2t, t2i = in_batch_accuracy(image_emb.detach(), text_emb.detach(), ids)
        return loss, {"logit_scale": float(scale.detach().exp()), "i2t_acc": i2t, "t2i_acc": t2i}
