"""ControlNet (Zhang, Rao & Agrawala 2023): a trainable copy of a frozen U-Net's encoder half that
reads a control image (edges, a mask, ...) and adds one residual to every skip connection and to
the middle block of the frozen U-Net.

    c_f = E(control)                                  hint encoder: control size -> U-Net input size
    h_0 = conv_in(x_t) + c_f                           in the copy only
    r_i = Z_i(h_i)   for every skip h_i of the copy    Z_i: zero-initialised 1x1 convolutions
    r_mid = Z_mid(middle(h))
    D(x_t, t, c, control) = U-Net decoder(skips + r_i, middle + r_mid)

Every Z starts at zero (and so does E's last convolution), so at initialisation the controlled model
is exactly the base model and training starts from it (the paper's section 3.1). The base U-Net is
never modified; ``ControlledUNet`` sums the residuals of several ControlNets, each with its own scale.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from latentdiff.config import Config
from latentdiff.nn.layers import zero_module
from latentdiff.nn.unet import UNet, UNetConfig, UNetEncoder


@dataclasses.dataclass(frozen=True)
class ControlNetConfig(Config):
    """``control_channels`` and ``control_size``: the control image (B, C, S, S) it reads, at the
    data's pixel resolution; ``hint_channels``: the hint encoder's first width (doubled at every 2x
    downsampling, which it does until the U-Net's input resolution is reached); ``hint_widths``: the
    hint encoder's width at every resolution instead, one more than the 2x downsamplings (diffusers'
    ``conditioning_embedding_out_channels``, e.g. (16, 32, 96, 256) for a control 8x the latents)."""

    control_channels: int = 1
    control_size: int = 32
    hint_channels: int = 16
    hint_widths: tuple[int, ...] | None = None    # width per resolution; None: hint_channels doubling

    def __post_init__(self):
        for name in ("control_channels", "control_size", "hint_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"controlnet.{name} must be at least 1, got {getattr(self, name)}")
        if self.hint_widths is not None and (not self.hint_widths or min(self.hint_widths) < 1):
            raise ValueError(f"controlnet.hint_widths must be null or a non-empty list of integers >= 1, "
                             f"got {list(self.hint_widths)}")

    def widths(self, resolution: int) -> tuple[int, ...]:
        """The hint encoder's widths (w_0, ..., w_n) from ``control_size`` down to ``resolution`` (the
        U-Net's conv_in side), n = log2(control_size / resolution) stride-2 steps."""
        size = self.control_size
        halvings = math.log2(size / resolution) if size >= resolution else -1
        if halvings < 0 or halvings != int(halvings):
            raise ValueError(f"control size {size} must be the U-Net's input resolution {resolution} "
                             "times a power of 2")
        if self.hint_widths is None:
            return tuple(self.hint_channels * 2 ** i for i in range(int(halvings) + 1))
        if len(self.hint_widths) != int(halvings) + 1:
            raise ValueError(f"controlnet.hint_widths {list(self.hint_widths)} has {len(self.hint_widths)} widths, "
                             f"but control size {size} down to the U-Net's input resolution {resolution} takes "
                             f"{int(halvings)} halvings, so {int(halvings) + 1} widths")
        return tuple(self.hint_widths)


class HintEncoder(nn.Module):
    """(B, C_c, S, S) control in [0, 1] -> (B, out_channels, S / 2^n, S / 2^n), n = len(widths) - 1:
    a 3x3 convolution to w_0, then per halving i a 3x3 convolution w_i -> w_i and a stride-2 one
    w_i -> w_{i+1}, each followed by SiLU; the last convolution (w_n -> out_channels) is zero.

    ``net`` is one Sequential: index 0 the first convolution, 2 + 4i and 4 + 4i halving i's two
    convolutions, 2 + 4n the zero convolution (the odd indices are the SiLUs)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], out_channels: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.SiLU()]
        for w, w_next in zip(widths, widths[1:]):
            layers += [nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
                       nn.Conv2d(w, w_next, 3, stride=2, padding=1), nn.SiLU()]
        layers.append(zero_module(nn.Conv2d(widths[-1], out_channels, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, control: torch.Tensor) -> torch.Tensor:
        return self.net(control)


class ControlNet(UNetEncoder):
    """``forward(x (B,C,H,W), t (B,), control (B, C_c, S, S), **cond) -> residuals``: a list of
    (B, C_i, H_i, W_i), one per skip connection of the base U-Net, then one for its middle block.

    Build it with :meth:`from_unet`, which copies the base's encoder half with its weights."""

    def __init__(self, unet_cfg: UNetConfig, cfg: ControlNetConfig):
        super().__init__(unet_cfg)
        self.control_cfg = cfg
        resolution = unet_cfg.image_size // unet_cfg.patch_size
        self.hint = HintEncoder(cfg.control_channels, cfg.widths(resolution), unet_cfg.channels)
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in self.skip_channels)
        self.zero_middle = zero_module(nn.Conv2d(self.width, self.width, 1))

    @classmethod
    def from_unet(cls, unet: UNet, cfg: ControlNetConfig) -> "ControlNet":
        """A ControlNet whose encoder half starts as a copy of ``unet``'s (same weights)."""
        net = cls(unet.cfg, cfg).to(next(unet.parameters()).device)
        ours = net.state_dict()
        copied = {k: v for k, v in unet.state_dict().items() if k in ours}
        missing = [k for k in ours if k not in copied and not k.startswith(("hint.", "zero_"))]
        if missing:
            raise RuntimeError(f"the U-Net lacks ControlNet weights {missing[:3]}")
        net.load_state_dict(copied, strict=False)
        return net

    def check_base(self, unet_cfg: UNetConfig) -> None:
        """Refuse a base U-Net other than the one this ControlNet was made from (both configs named)."""
        if unet_cfg != self.cfg:
            raise ValueError(f"this ControlNet was made from a U-Net with config\n  {self.cfg}\n"
                             f"but the base U-Net has config\n  {unet_cfg}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, control: torch.Tensor,
                class_labels: torch.Tensor | None = None, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> list[torch.Tensor]:
        hint = self.hint(control.to(x.dtype))
        hs, h, *_ = self.encode(x, t, class_labels, text, text_mask, pooled, hint=hint)
        return [z(skip) for z, skip in zip(self.zero_convs, hs)] + [self.zero_middle(h)]


def guess_mode_weights(n: int, decay: float = 0.825) -> list[float]:
    """Residual weights in guess mode, shallow to deep: decay^(n-1-i), so the middle block's residual
    has weight 1 (the ControlNet reference implementation's "soft" control scales; diffusers' guess
    mode is decay = 10^(-1/(n-1)), from 0.1 to 1)."""
    return [decay ** (n - 1 - i) for i in range(n)]


class ControlledUNet(nn.Module):
    """A frozen base U-Net with K ControlNets: ``forward(x, t, control=None, control_scale=None, **cond)``.

    ``control`` (B, sum_k C_k, S, S): the K control images concatenated along channels, in the order
    of ``controlnets``; ``control_scale`` (B, K): each sample's scale for each ControlNet (default 1).
    The residuals are the scale-weighted sum over ControlNets; a ControlNet whose scales are all zero
    is not run, so scale 0 is exactly the base model. ``guess_mode`` weights the residuals by depth
    (:func:`guess_mode_weights`), for sampling without a prompt. ``cfg`` is the base's config, so
    a ``Denoiser`` wraps this like a plain U-Net.
    """

    def __init__(self, unet: nn.Module, controlnets: list[nn.Module], guess_mode: bool = False):
        super().__init__()
        self.unet, self.controlnets, self.guess_mode = unet, nn.ModuleList(controlnets), guess_mode

    @property
    def cfg(self) -> UNetConfig:
        return self.unet.cfg

    def control_channels(self) -> list[int]:
        return [_unwrap(cn).control_cfg.control_channels for cn in self.controlnets]

    def residuals(self, x: torch.Tensor, t: torch.Tensor, control: torch.Tensor, control_scale: torch.Tensor | None,
                  cond: dict) -> list[torch.Tensor] | None:
        """The scale-weighted sum of every ControlNet's residuals (None when every scale is zero)."""
        channels = self.control_channels()
        if control.shape[1] != sum(channels):
            raise ValueError(f"control has {control.shape[1]} channels; the ControlNets read {channels}")
        if control_scale is None:
            control_scale = torch.ones(x.shape[0], len(channels), device=x.device)
        total = None
        for cn, c, s in zip(self.controlnets, control.split(channels, dim=1), control_scale.unbind(1)):
            if not bool((s != 0).any()):
                continue
            s = s.to(x.dtype).view(-1, 1, 1, 1)
            rs = [r * s for r in cn(x, t, c, **cond)]
            total = rs if total is None else [a + b for a, b in zip(total, rs)]
        if total is not None and self.guess_mode:
            total = [r * w for r, w in zip(total, guess_mode_weights(len(total)))]
        return total

    def forward(self, x: torch.Tensor, t: torch.Tensor, control: torch.Tensor | None = None,
                control_scale: torch.Tensor | None = None, **cond) -> torch.Tensor:
        residuals = None if control is None else self.residuals(x, t, control, control_scale, cond)
        return self.unet(x, t, residuals=residuals, **cond)


def _unwrap(module: nn.Module) -> nn.Module:
    """The ControlNet inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def resize_control(control: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), bilinear (antialiased when shrinking)."""
    return F.interpolate(control, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
