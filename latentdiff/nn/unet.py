"""The U-Net denoiser backbone (Ho et al. 2020; Dhariwal & Nichol 2021), assembled from nn/blocks.py.

Layout for channel multipliers (m_0, ..., m_L) and N res blocks per level:
conv_in -> for each level: N x [ResBlock (+ attention)] then a 2x downsample
(except the last) -> middle ResBlock, attention, ResBlock -> for each level in
reverse: N+1 x [ResBlock on (h, skip) concatenated (+ attention)] then a 2x
upsample (except the first level) -> GroupNorm, SiLU, zero-initialised conv_out.
Self-attention sits at the feature-map sizes listed in ``attention_resolutions``; with
``context_dim`` > 0 each is followed by cross-attention on text tokens. A learned null token is
placed before the text tokens of every sample, so a sample with no text (``text_mask`` all False,
or no ``text`` at all: the empty prompt, classifier-free guidance's unconditional branch) attends
to it alone (the learned null embedding of CFG training; Ho & Salimans 2022). With ``null_token``
false (a Stable Diffusion U-Net imported by ``interop.unet``, which has none) the context is the text
tokens alone: every sample must have text with at least one attended token (the unconditional branch
gets the empty prompt's states), and ``text=None`` raises ValueError.
With ``low_res_channels`` > 0 the U-Net is a super-resolution model (SR3, Saharia et al. 2021; CDM;
Imagen): the low-resolution image is upsampled to the input's size (``nn.superres``) and
concatenated to it on channels, and its noise-augmentation level ``aug_level`` in [0, 1] has a
sinusoidal embedding of its own, added to the time embedding (Imagen, section 2.5).
With ``image_embed_dim`` > 0 the U-Net is an unCLIP decoder (Ramesh et al. 2022, section 2.1): a
CLIP image embedding (B, image_embed_dim) is projected and added to the time embedding, and
projected into ``image_embed_tokens`` extra context tokens after the text tokens; a missing
embedding is the zero vector, the null condition its training dropped to.
With ``patch_size`` p > 1 the image is folded into p x p patches first (space-to-depth,
as Hoogeboom et al. 2023 do for high resolutions), so every level runs at 1/p the size.
With ``position_embedding`` the first feature map gets fixed 2D sine-cosine positions (the
transformers' ``sincos_2d``), so every layer knows where it is: a convolution alone learns absolute
position only from the zero padding at the borders, slowly, and prompts that say "in the top left"
or "left of" need it (README, transformer denoisers).
``norm_eps``, ``transformer_norm_eps``, ``linear_projection``, ``freq_shift`` and
``asymmetric_downsample`` leave our own models' maths at their defaults; they exist so that imported
DDPM and Stable Diffusion U-Nets compute exactly what they computed before (``interop.unet``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.config import Config
from latentdiff.nn.blocks import Downsample, EmbedSequential, ResBlock, Upsample, attention_layers, res_stage
from latentdiff.nn.layers import TimestepMLP, group_norm, sincos_2d, zero_module
from latentdiff.nn.superres import AUG_LEVEL_SCALE, low_res_input


@dataclasses.dataclass(frozen=True)
class UNetConfig(Config):
    image_size: int = 32                  # side of the (square) input, pixels or latents
    in_channels: int = 1                  # input channels: image channels, or the autoencoder's latent channels
    out_channels: int | None = None       # default: in_channels (doubled by learned variance)
    channels: int = 64                    # base width
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per resolution level (a 2x downsampling between)
    num_res_blocks: int = 2               # ResBlocks per level
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sides that get self-attention
    num_heads: int | None = 1             # or None with head_dim
    head_dim: int | None = None           # channels per attention head (instead of num_heads)
    dropout: float = 0.1                  # dropout inside the ResBlocks
    num_classes: int = 0                  # > 0: class embedding with a null class at index num_classes
    scale_shift_norm: bool = True         # time embedding as scale and shift of the GroupNorm (Improved DDPM)
    norm_groups: int = 32                 # GroupNorm groups
    patch_size: int = 1                   # > 1: space-to-depth at the input, depth-to-space at the output
    context_dim: int = 0                  # > 0: cross-attention on text tokens (B, L, context_dim) at every attention
    pooled_dim: int = 0                   # > 0: a pooled text embedding (B, pooled_dim) joins the time embedding
    transformer: bool = False             # attention as Stable Diffusion's transformer layers (nn/attention.py)
    low_res_channels: int = 0             # > 0: super-resolution: a low-res image of these channels joins the input
    image_embed_dim: int = 0              # > 0: unCLIP decoder: a CLIP image embedding of this width conditions it
    image_embed_tokens: int = 4           # context tokens projected from the image embedding (DALL·E 2: 4)
    null_token: bool = True               # a learned null token before the text (False: text always given, as SD)
    linear_projection: bool = False       # transformer layers' proj_in/proj_out as Linears on tokens (SD 2.x)
    norm_eps: float = 1e-5                # eps of the ResBlock, attention and output GroupNorms (DDPM's: 1e-6)
    transformer_norm_eps: float = 1e-5    # eps of the transformer layers' GroupNorm (Stable Diffusion's: 1e-6)
    freq_shift: float = 0.0               # time embedding frequencies max_period^(-i/(C/2 - shift)) (DDPM's: 1)
    asymmetric_downsample: bool = False   # downsampling pads bottom and right only (DDPM's TensorFlow padding)
    position_embedding: bool = False      # fixed 2D sine-cosine positions added to conv_in's output

    def __post_init__(self):
        # sizes a network cannot have, refused by name when the config is made (not as a torch error)
        for name in ("image_size", "in_channels", "channels", "num_res_blocks", "norm_groups", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"model.channel_mult must be a non-empty list of integers >= 1, "
                             f"got {list(self.channel_mult)}")
        for name in ("num_classes", "context_dim", "pooled_dim", "low_res_channels", "image_embed_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.image_embed_dim and not (self.context_dim and self.image_embed_tokens >= 1):
            raise ValueError("model.image_embed_dim > 0 (an unCLIP decoder) must come with model.context_dim > 0 and "
                             "model.image_embed_tokens >= 1: its image tokens join the cross-attention context")
        for name in ("norm_eps", "transformer_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.position_embedding and self.channels % 4:
            raise ValueError(f"model.position_embedding=true needs model.channels divisible by 4 (sine and cosine "
                             f"of rows and columns), got {self.channels}")
        if self.linear_projection and not self.transformer:
            raise ValueError("model.linear_projection=true must come with model.transformer=true (it is a layout "
                             "of the transformer layers' projections)")


class UNetEncoder(nn.Module):
    """The U-Net's encoder half: time/class/pooled embeddings, the null text token, conv_in, the down
    blocks and the middle block. ``UNet`` adds the decoder half; ``ControlNet`` (nn/controlnet.py)
    is a trainable copy of this half. ``skip_channels`` lists the width of every skip connection."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, emb_dim, p = cfg.channels, 4 * cfg.channels, cfg.patch_size
        if cfg.image_size % p:
            raise ValueError(f"image_size {cfg.image_size} is not divisible by patch_size {p}")
        self.time_embed = TimestepMLP(ch, emb_dim, cfg.freq_shift)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.pooled_embed = nn.Linear(cfg.pooled_dim, emb_dim) if cfg.pooled_dim else None
        has_null = cfg.context_dim and cfg.null_token
        self.null_token = nn.Parameter(torch.zeros(1, 1, cfg.context_dim)) if has_null else None
        self.aug_embed = TimestepMLP(ch, emb_dim) if cfg.low_res_channels else None
        d, n = cfg.image_embed_dim, cfg.image_embed_tokens
        self.image_embed = nn.Linear(d, emb_dim) if d else None
        self.image_tokens = nn.Linear(d, n * cfg.context_dim) if d else None
        self.stage = dict(emb_dim=emb_dim, dropout=cfg.dropout, scale_shift=cfg.scale_shift_norm,
                          groups=cfg.norm_groups, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                          context_dim=cfg.context_dim, transformer=cfg.transformer, eps=cfg.norm_eps,
                          transformer_eps=cfg.transformer_norm_eps, linear_projection=cfg.linear_projection)

        self.conv_in = nn.Conv2d((cfg.in_channels + cfg.low_res_channels) * p * p, ch, 3, padding=1)
        if cfg.position_embedding:  # (1, ch, H/p, W/p), not saved: a function of the config
            side = cfg.image_size // p
            self.register_buffer("pos", sincos_2d(ch, side, side).T.reshape(1, ch, side, side), persistent=False)
        self.down = nn.ModuleList()
        self.skip_channels, width, res = [ch], ch, cfg.image_size // p
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(res_stage(width, ch * mult, attention=res in cfg.attention_resolutions, **self.stage))
                width = ch * mult
                self.skip_channels.append(width)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(EmbedSequential([Downsample(width, cfg.asymmetric_downsample)]))
                self.skip_channels.append(width)
                res //= 2
        self.width, self.bottom_resolution = width, res

        res_args = (emb_dim, cfg.dropout, cfg.scale_shift_norm, cfg.norm_groups, cfg.norm_eps)
        self.middle = EmbedSequential([
            ResBlock(width, width, *res_args),
            *attention_layers(width, cfg.context_dim, cfg.num_heads, cfg.head_dim, cfg.norm_groups,
                              cfg.transformer, eps=cfg.norm_eps, transformer_eps=cfg.transformer_norm_eps,
                              linear_projection=cfg.linear_projection),
            ResBlock(width, width, *res_args),
        ])

    def embed(self, t: torch.Tensor, class_labels: torch.Tensor | None,
              pooled: torch.Tensor | None = None, aug_level: torch.Tensor | None = None,
              image_embed: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(t)
        if self.image_embed is not None:
            emb = emb + self.image_embed(image_embed.to(emb.dtype))
        if self.aug_embed is not None:  # no level given: 0, the clean low-res input
            aug_level = torch.zeros_like(t) if aug_level is None else aug_level.to(t.device).expand(t.shape[0])
            emb = emb + self.aug_embed(aug_level.float() * AUG_LEVEL_SCALE)
        if self.pooled_embed is not None:  # no pooled embedding: the empty prompt's, zero
            pooled = torch.zeros(t.shape[0], self.cfg.pooled_dim, device=t.device) if pooled is None else pooled
            emb = emb + self.pooled_embed(pooled.to(emb.dtype))
        if self.class_embed is not None:
            if class_labels is None:  # no label given: the null (unconditional) class
                class_labels = torch.full((t.shape[0],), self.cfg.num_classes, device=t.device, dtype=torch.long)
            emb = emb + self.class_embed(class_labels)
        return emb

    def context(self, batch_size: int, text: torch.Tensor | None, text_mask: torch.Tensor | None,
                image_embed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The learned null token (unless ``null_token`` is false), the text tokens, then an unCLIP
        decoder's image tokens: ((B, n_null + L + n, D), mask (B, n_null + L + n) bool, or None when
        every token is attended to, which lets attention skip the mask)."""
        null = [] if self.null_token is None else [self.null_token.expand(batch_size, 1, -1)]
        if text is None and not null and self.image_tokens is None:
            raise ValueError("this U-Net has no learned null token (model.null_token false, as an imported Stable "
                             "Diffusion U-Net): give text states for every sample, the empty prompt's for the "
                             "unconditional branch")
        tokens = null if text is None else [*(n.to(text.dtype) for n in null), text]
        if self.image_tokens is not None:
            dtype = tokens[-1].dtype if tokens else self.image_tokens.weight.dtype
            image_tokens = self.image_tokens(image_embed.to(dtype))       # (B, n * D)
            tokens.append(image_tokens.unflatten(1, (self.cfg.image_embed_tokens, -1)))
        context = torch.cat(tokens, 1)
        if text is None or text_mask is None:  # every token attended to
            return context, None
        if not null and self.image_tokens is None and not bool(text_mask.any(1).all()):
            raise ValueError("a sample's text_mask is all False and this U-Net has no null token to attend to "
                             "(model.null_token false): give the empty prompt's states with its mask")
        keep = lambda n: torch.ones(batch_size, n, dtype=torch.bool, device=text.device)  # noqa: E731
        extra = [keep(tokens[-1].shape[1])] if self.image_tokens is not None else []
        return context, torch.cat([keep(len(null)), text_mask.bool(), *extra], 1)

    def encode(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
               text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
               pooled: torch.Tensor | None = None, hint: torch.Tensor | None = None,
               low_res: torch.Tensor | None = None, aug_level: torch.Tensor | None = None,
               image_embed: torch.Tensor | None = None):
        """-> (skips: list of (B, C_i, H_i, W_i), middle output h, emb (B, E), text, text_mask), the
        text with the null token (if any) in front. ``hint`` (B, channels, H/p, W/p) is added after conv_in.
        ``low_res`` (B, low_res_channels, h, w) and ``aug_level`` (B,) for a super-resolution U-Net;
        ``image_embed`` (B, image_embed_dim) for an unCLIP decoder (None: the zero embedding)."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if self.image_embed is not None and image_embed is None:
            image_embed = torch.zeros(x.shape[0], self.cfg.image_embed_dim, device=x.device)
        if self.cfg.context_dim:
            text, text_mask = self.context(x.shape[0], text, text_mask, image_embed)
        emb = self.embed(t, class_labels, pooled, aug_level, image_embed).to(x.dtype)
        if self.cfg.low_res_channels:
            x = torch.cat([x, low_res_input(low_res, x.shape[-1], self.cfg.low_res_channels).to(x.dtype)], dim=1)
        if self.cfg.patch_size > 1:  # (B, C, H, W) -> (B, C p^2, H/p, W/p)
            x = F.pixel_unshuffle(x, self.cfg.patch_size)
        h = self.conv_in(x)
        if self.cfg.position_embedding:
            h = h + self.pos.to(h.dtype)
        if hint is not None:
            h = h + hint
        hs = [h]
        for block in self.down:
            h = block(h, emb, text, text_mask)
            hs.append(h)
        return hs, self.middle(h, emb, text, text_mask), emb, text, text_mask


class UNet(UNetEncoder):
    """``forward(x (B,C,H,W), t (B,) float, class_labels (B,) int64 | None, text (B,L,D) | None,
    text_mask (B,L) bool | None, pooled (B,D) | None, residuals | None, low_res (B,C',h,w) | None,
    aug_level (B,) | None, image_embed (B, image_embed_dim) | None) -> (B, C_out, H, W)``.
    Missing labels mean the null class; missing text means the null token alone (an error without
    one, ``null_token`` false). ``residuals``
    (ControlNet's output: one tensor per skip connection, then one for the middle block) are
    added to the skips and to the middle block's output."""

    def __init__(self, cfg: UNetConfig, learned_variance: bool = False):
        super().__init__(cfg)
        out_channels = (cfg.out_channels or cfg.in_channels) * (2 if learned_variance else 1)
        ch, p = cfg.channels, cfg.patch_size
        skips, width, res = list(self.skip_channels), self.width, self.bottom_resolution
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                block = res_stage(width + skips.pop(), ch * mult, attention=res in cfg.attention_resolutions,
                                  **self.stage)
                width = ch * mult
                if level > 0 and i == cfg.num_res_blocks:
                    block.append(Upsample(width))
                    res *= 2
                self.up.append(block)

        self.norm_out = group_norm(width, cfg.norm_groups, cfg.norm_eps)
        self.conv_out = zero_module(nn.Conv2d(width, out_channels * p * p, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None, residuals: list[torch.Tensor] | None = None,
                low_res: torch.Tensor | None = None, aug_level: torch.Tensor | None = None,
                image_embed: torch.Tensor | None = None) -> torch.Tensor:
        hs, h, emb, text, text_mask = self.encode(x, t, class_labels, text, text_mask, pooled,
                                                  low_res=low_res, aug_level=aug_level, image_embed=image_embed)
        if residuals is not None:
            if len(residuals) != len(hs) + 1:
                raise ValueError(f"expected {len(hs) + 1} residuals (skips + middle), got {len(residuals)}")
            hs = [skip + r for skip, r in zip(hs, residuals)]
            h = h + residuals[-1]
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, text, text_mask)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.cfg.patch_size) if self.cfg.patch_size > 1 else out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
