"""Network layers and the U-Net backbone."""

from latentdiff.nn.unet import UNet, UNetConfig, count_parameters

__all__ = ["UNet", "UNetConfig", "count_parameters"]
