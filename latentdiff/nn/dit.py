"""DiT, the diffusion transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

The image is cut into p x p patches (``nn.transformer.PatchEmbed``: a linear map per patch plus fixed
2D sine-cosine positions), the tokens go through ``depth`` adaLN-Zero blocks (section 3.2: the
condition c = time + class (+ pooled text) embedding regresses each block's LayerNorm shift and
scale and a gate on each residual branch; all start at zero, so every block starts as the identity)
and a final adaLN LayerNorm + Linear maps each token back to its p x p x C patch.

Text (beyond the paper, as PixArt-alpha, Chen et al. 2023, does): with ``model.context_dim`` > 0
and ``transformer.cross_attention`` each block also cross-attends to the text tokens after its
self-attention (an output projection started at zero). A learned null token is placed before the
text tokens, so a sample with no text (the empty prompt of classifier-free guidance) attends to it
alone (as the U-Net does).

``DiT(model, cfg)(x (B, C, S, S), t (B,), class_labels=None, text=None, text_mask=None, pooled=None)
-> (B, C_out, S, S)``: the denoiser contract of DESIGN.md section 3, as ``nn.unet.UNet``.
"""

from __future__ import annotations

import torch
from torch import nn

from latentdiff.nn.attention import GELUMLP, token_attention
from latentdiff.nn.blocks import maybe_checkpoint
from latentdiff.nn.transformer import AdaLN, HeadNorm, TransformerBackbone, TransformerConfig, modulate, plain_norm


class SelfAttention(nn.Module):
    """Multi-head self-attention on tokens (B, N, C): q, k, v from one Linear (with bias), optional
    per-head q/k RMS-norm, an output Linear."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = (HeadNorm(dim, heads), HeadNorm(dim, heads)) if qk_norm else (None, None)
        self.out = nn.Linear(dim, dim)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, N, C) -> q, k, v (B, N, C), q and k normalised per head when ``qk_norm``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(token_attention(*self.project(x), self.heads))


class CrossAttention(nn.Module):
    """Residual cross-attention of tokens (B, N, C) on text (B, L, D) with mask (B, L) (True: a real
    token): LayerNorm, q from x, k and v from the text, an output Linear started at zero."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        k, v = self.kv(context.to(x.dtype)).chunk(2, dim=-1)
        return x + self.out(token_attention(self.q(self.norm(x)), k, v, self.heads, mask))


class DiTBlock(nn.Module):
    """One adaLN-Zero block (DiT Figure 3): with (shift1, scale1, gate1, shift2, scale2, gate2) = adaLN(c),
    x += gate1 * Attn(modulate(LN(x))); [x = CrossAttn(x, text)]; x += gate2 * MLP(modulate(LN(x)))."""

    def __init__(self, dim: int, heads: int, context_dim: int = 0, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 ff_norm_eps: float = 1e-6):
        super().__init__()
        self.ada = AdaLN(dim, dim, 6)
        self.norm1, self.norm2 = plain_norm(dim), plain_norm(dim, ff_norm_eps)
        self.attn = SelfAttention(dim, heads, qk_norm)
        self.cross = CrossAttention(dim, context_dim, heads) if context_dim else None
        self.mlp = GELUMLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None:
            x = self.cross(x, context, mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(TransformerBackbone):
    """The DiT backbone (``nn.transformer.TransformerBackbone``: ``model`` its interface, ``cfg`` its sizes)."""

    def __init__(self, model, cfg: TransformerConfig, learned_variance: bool = False):
        super().__init__(model, cfg, learned_variance)
        context_dim = model.context_dim if cfg.cross_attention else 0
        self.null_token = nn.Parameter(torch.zeros(1, 1, context_dim)) if context_dim else None
        self.blocks = nn.ModuleList(DiTBlock(cfg.dim, cfg.heads, context_dim, cfg.mlp_ratio, cfg.qk_norm,
                                             cfg.ff_norm_eps) for _ in range(cfg.depth))
        self.add_final_layer()

    def text_context(self, B: int, text: torch.Tensor | None, text_mask: torch.Tensor | None, device):
        """The cross-attention context: [null token, text tokens] (B, 1 + L, D) and its mask (B, 1 + L)."""
        null = self.null_token.expand(B, -1, -1)
        if text is None:
            return null, torch.ones(B, 1, dtype=torch.bool, device=device)
        mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device) if text_mask is None else text_mask.bool()
        return torch.cat([null, text.to(null.dtype)], 1), torch.cat([mask.new_ones(B, 1), mask], 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, S, S), t (B,) -> (B, C_out, S, S); text (B, L, D) with text_mask (B, L), pooled (B, P)."""
        c = self.embed(t.to(x.device), class_labels, pooled)
        context = mask = None
        if self.null_token is not None:
            context, mask = self.text_context(len(x), text, text_mask, x.device)
        h = self.patch(x)
        for block in self.blocks:
            h = maybe_checkpoint(self.grad_checkpointing, block, h, c, context, mask)
        return self.to_image(h, c)
