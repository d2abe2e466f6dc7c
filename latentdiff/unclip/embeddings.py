"""CLIP embeddings as unCLIP trains and samples on them (Ramesh et al. 2022): the image embeddings of
a whole dataset, computed once and kept on disk; a fingerprint that names the CLIP model they came
from; and spherical interpolation between two embeddings (section 3.2's interpolations).

The cache, one file per (CLIP weights, dataset, split)::

    cache_dir()/clip/<key>.safetensors    image_embeds (N, D) float32

written to ``<key>.tmp`` and renamed, so a crash never leaves a partial file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm


def clip_fingerprint(model: nn.Module) -> str:
    """A CLIP model's weights fingerprint (``io.checkpoint.weights_fingerprint``): a prior and a
    decoder must share one."""
    from latentdiff.io.checkpoint import weights_fingerprint

    return weights_fingerprint(model)


@torch.no_grad()
def dataset_image_embeds(model, fingerprint: str, dataset, data_key: dict, to_clip, batch_size: int = 500,
                         progress: bool = True) -> torch.Tensor:
    """The unit CLIP image embeddings (N, D) of every item of ``dataset`` (its ``get_batch``'s "x"),
    from the disk cache when present. ``data_key`` (a JSON-able dict: the data config and split)
    and ``fingerprint`` key the cache; ``to_clip`` maps a batch of images to what the CLIP model
    reads (``pipelines.clip.images_for_clip``)."""
    from latentdiff.eval.fd import cache_dir

    key = hashlib.sha1((fingerprint + json.dumps(data_key, sort_keys=True) + str(len(dataset))).encode())
    path = cache_dir() / "clip" / f"{key.hexdigest()[:16]}.safetensors"
    if path.is_file():
        return load_file(path)["image_embeds"]
    out = []
    for i in tqdm(range(0, len(dataset), batch_size), desc="CLIP image embeddings", disable=not progress,
                  unit="batch"):
        images = dataset.get_batch(torch.arange(i, min(i + batch_size, len(dataset))))["x"]
        out.append(model.encode_image(to_clip(images)).float())
    embeds = torch.cat(out).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"image_embeds": embeds}, str(tmp))
    os.replace(tmp, path)
    return embeds


def slerp(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of unit vectors a, b (D,) at weights (K,) in [0, 1] -> (K, D) unit vectors:
    sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b, theta the angle between a and b
    (Shoemake 1985); linear (then renormalised) where a and b are nearly parallel."""
    a, b = nn.functional.normalize(a.float(), dim=-1), nn.functional.normalize(b.float(), dim=-1)
    w = weights.float()[:, None]
    theta = torch.arccos((a * b).sum().clamp(-1, 1))
    if theta < 1e-4:
        return nn.functional.normalize((1 - w) * a + w * b, dim=-1)
    return (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)
