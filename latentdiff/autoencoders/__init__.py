"""Autoencoders for latent diffusion: KL-VAE, VQ-VAE, the identity for pixel space, and their losses."""

from latentdiff.autoencoders.models import (AutoencoderConfig, DiagonalGaussian, IdentityAutoencoder,
                                            KLAutoencoder, LatentAutoencoder, VQAutoencoder, build_autoencoder)
from latentdiff.autoencoders.vq import VectorQuantizer

__all__ = ["AutoencoderConfig", "DiagonalGaussian", "IdentityAutoencoder", "KLAutoencoder", "LatentAutoencoder",
           "VQAutoencoder", "VectorQuantizer", "build_autoencoder"]
