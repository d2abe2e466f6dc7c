"""MMDiT, the multimodal diffusion transformer of Stable Diffusion 3 (Esser et al. 2024, "Scaling
Rectified Flow Transformers for High-Resolution Image Synthesis", section 4 and Figure 2).

Two token streams, the image patches (``nn.transformer.PatchEmbed``, 2D sine-cosine positions) and
the text tokens (a Linear from the text encoder's width), each with weights of its own: its own
adaLN-Zero modulation from the shared condition c (time + pooled text), its own q/k/v and output
projections and its own MLP. The one thing they share is the attention: a single softmax over the
concatenated sequence [image tokens, text tokens], so image attends to text and text to image in
every block. q and k are RMS-normalised per head when ``transformer.qk_norm`` (section 5.3.2).
The last block's text stream is only read (SD3's ``context_pre_only``): it gives keys and values,
its modulation is a shift and scale, and it has no output projection or MLP.

Padding: text tokens with ``text_mask`` False are never attended to (SD3 attends to T5's padding;
here a padded prompt gives exactly the image stream of the unpadded one), and a sample with no text
(classifier-free guidance's empty prompt) attends to its image tokens alone.

``MMDiT(model, cfg)(x (B, C, S, S), t (B,), text (B, L, D), text_mask (B, L), pooled (B, P),
class_labels) -> (B, C_out, S, S)``, the denoiser contract of DESIGN.md section 3.
"""

from __future__ import annotations

import torch
from torch import nn

from latentdiff.nn.attention import GELUMLP, token_attention
from latentdiff.nn.blocks import maybe_checkpoint
from latentdiff.nn.dit import SelfAttention
from latentdiff.nn.transformer import AdaLN, TransformerBackbone, TransformerConfig, modulate, plain_norm


class Stream(nn.Module):
    """One modality's weights in a joint block: adaLN (6 vectors; 2 when ``read_only``), LayerNorms,
    q/k/v and output projections (``SelfAttention``), and an MLP (none when ``read_only``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, read_only: bool = False):
        super().__init__()
        self.read_only = read_only
        self.ada = AdaLN(dim, dim, 2 if read_only else 6)
        self.norm1 = plain_norm(dim)
        self.attn = SelfAttention(dim, heads, qk_norm)
        if read_only:
            del self.attn.out
        else:
            self.norm2 = plain_norm(dim)
            self.mlp = GELUMLP(dim, mlp_ratio)

    def qkv(self, x: torch.Tensor, c: torch.Tensor):
        """-> (q, k, v) of the modulated stream, and the modulation left for ``update``."""
        shift, scale, *rest = self.ada(c)
        return self.attn.project(modulate(self.norm1(x), shift, scale)), rest

    def update(self, x: torch.Tensor, attended: torch.Tensor, rest) -> torch.Tensor:
        """x + gate1 * out(attended), then x + gate2 * MLP(modulate(LN(x)))."""
        gate1, shift2, scale2, gate2 = rest
        x = x + gate1[:, None] * self.attn.out(attended)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


def joint_attention(q: tuple, k: tuple, v: tuple, heads: int, text_mask: torch.Tensor | None):
    """Attention over [image, text]: q, k, v are (image (B, N, C), text (B, L, C)) pairs, text_mask (B, L)
    marks real text tokens (image tokens are always attended to) -> (image (B, N, C), text (B, L, C))."""
    N = q[0].shape[1]
    mask = None
    if text_mask is not None:
        mask = torch.cat([text_mask.new_ones(text_mask.shape[0], N), text_mask], 1).bool()
    h = token_attention(torch.cat(q, 1), torch.cat(k, 1), torch.cat(v, 1), heads, mask)
    return h[:, :N], h[:, N:]


class JointBlock(nn.Module):
    """One MMDiT block: image stream x (B, N, C) and text stream y (B, L, C), condition c (B, C),
    text_mask (B, L) -> (x', y') (y' unchanged in the last, read-only block)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False, last: bool = False):
        super().__init__()
        self.heads = heads
        self.image = Stream(dim, heads, mlp_ratio, qk_norm)
        self.text = Stream(dim, heads, mlp_ratio, qk_norm, read_only=last)

    def forward(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor,
                text_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        (qx, kx, vx), rest_x = self.image.qkv(x, c)
        (qy, ky, vy), rest_y = self.text.qkv(y, c)
        hx, hy = joint_attention((qx, qy), (kx, ky), (vx, vy), self.heads, text_mask)
        x = self.image.update(x, hx, rest_x)
        return x, (y if self.text.read_only else self.text.update(y, hy, rest_y))


class MMDiT(TransformerBackbone):
    """The MMDiT backbone (``nn.transformer.TransformerBackbone``: ``model`` its interface, ``cfg`` its sizes)."""

    def __init__(self, model, cfg: TransformerConfig, learned_variance: bool = False):
        super().__init__(model, cfg, learned_variance)
        self.context_embedder = nn.Linear(model.context_dim, cfg.dim)
        self.blocks = nn.ModuleList(JointBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.qk_norm, last=i == cfg.depth - 1)
                                    for i in range(cfg.depth))
        self.add_final_layer()

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, S, S), t (B,) -> (B, C_out, S, S); text (B, L, D) with text_mask (B, L), pooled (B, P);
        no text: the image tokens attend to themselves alone."""
        c = self.embed(t.to(x.device), class_labels, pooled)
        if text is None:
            text, text_mask = x.new_zeros(len(x), 0, self.cfg.context_dim), None
        h, y = self.patch(x), self.context_embedder(text.to(x.dtype))
        for block in self.blocks:
            h, y = maybe_checkpoint(self.grad_checkpointing, block, h, y, c, text_mask)
        return self.to_image(h, c)
