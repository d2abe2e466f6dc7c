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
    downsampling, which it does until the U-Net's input resolution is reached)."""

    control_channels: int = 1
    control_size: int = 32
    hint_channels: int = 16


class HintEncoder(nn.Module):
    """(B, C_c, S, S) control in [0, 1] -> (B, width, R, R) at the U-Net's conv_in resolution R, by
    3x3 convolutions with SiLU and a stride-2 convolution per halving; the last convolution is zero."""

    def __init__(self, in_channels: int, size: int, resolution: int, hint_channels: int, out_channels: int):
        super().__init__()
        halvings = math.log2(size / resolution) if size >= resolution else -1
        if halvings < 0 or halvings != int(halvings):
            raise ValueError(f"control size {size} must be the U-Net's input resolution {resolution} "
                             "times a power of 2")
        width = hint_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(int(halvings)):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                       nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU()]
            width *= 2
        layers.append(zero_module(nn.Conv2d(width, out_channels, 3, padding=1)))
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
        self.hint = HintEncoder(cfg.control_channels, cfg.control_size, resolution, cfg.hint_channels,
                                unet_cfg.channels)
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
    has weight 1 (the ControlNet reference implementation's "soft" control scales)."""
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
