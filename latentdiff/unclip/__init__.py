"""unCLIP (DALL·E 2, Ramesh et al. 2022) on latentdiff's own CLIP-style model: the image embeddings
of a dataset (cached), the CLIP fingerprint that ties a prior to a decoder, spherical interpolation,
and the batches the prior and decoder train on. The prior network is ``nn.prior``, the decoder is
the U-Net with ``image_embed_dim`` (``nn.unet``); pipelines in ``pipelines.unclip``."""

from latentdiff.unclip.data import ImageEmbedded, PriorPairs
from latentdiff.unclip.embeddings import clip_fingerprint, dataset_image_embeds, slerp

__all__ = ["ImageEmbedded", "PriorPairs", "clip_fingerprint", "dataset_image_embeds", "slerp"]
