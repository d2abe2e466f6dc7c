"""A dataset encoded once into latents, stored as memory-mapped shards, read by the diffusion trainer.

Encoding with the autoencoder every step would cost an encoder pass per training step; Latent
Diffusion's latents are a fixed function of the data (``encode`` uses the posterior mean), so they
are computed once. Layout of a cache folder::

    meta.json              {"n", "latent_shape", "shard_size", "num_classes", "source"}
    latents_00000.npy      float32 (shard_size, c, h, w), the last shard shorter
    ...
    labels.npy             int64 (n,)

The folder is written as ``<folder>.tmp`` and renamed when complete, so a crash never leaves a
half-written cache that looks whole. Shards are opened with ``np.load(mmap_mode="r")``: a batch
reads only its own rows, and several processes share the pages.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

META_FILE = "meta.json"


@torch.no_grad()
def write_latent_cache(encode: Callable[[torch.Tensor], torch.Tensor], dataset, folder: str | Path,
                       shard_size: int = 10_000, batch_size: int = 500, source: str = "",
                       progress: bool = True) -> Path:
    """Encode every item of ``dataset`` (``get_batch`` -> {"x", "label"}) into ``folder``.

    ``encode``: (B, C, H, W) images -> (B, c, h, w) latents. Returns ``folder``.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n, shape, labels = len(dataset), None, []
    bar = tqdm(total=n, desc="encode latents", unit="img", disable=not progress)
    for s, start in enumerate(range(0, n, shard_size)):
        chunks = []
        for b in range(start, min(start + shard_size, n), batch_size):
            batch = dataset.get_batch(torch.arange(b, min(b + batch_size, start + shard_size, n)))
            chunks.append(encode(batch["x"]).float().cpu())
            labels.append(batch["label"])
            bar.update(len(batch["x"]))
        shard = torch.cat(chunks).numpy()
        shape = list(shard.shape[1:])
        np.save(tmp / f"latents_{s:05d}.npy", shard)
    bar.close()
    np.save(tmp / "labels.npy", torch.cat(labels).numpy().astype(np.int64))
    meta = {"n": n, "latent_shape": shape, "shard_size": shard_size,
            "num_classes": getattr(dataset, "num_classes", 0), "source": source}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


class LatentDataset:
    """The dict interface of latentdiff's datasets over a latent cache folder.

    ``get_batch(index (B,)) -> {"x": (B, c, h, w) float32, "label": (B,) int64}``; attributes
    ``num_classes``, ``channels`` and ``image_size`` describe the latents.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no latent cache at {self.folder} (missing {META_FILE})")
        self.meta = json.loads(meta_path.read_text())
        self.shard_size = int(self.meta["shard_size"])
        self.shards = [np.load(p, mmap_mode="r") for p in sorted(self.folder.glob("latents_*.npy"))]
        self.labels = torch.from_numpy(np.load(self.folder / "labels.npy"))
        if sum(len(s) for s in self.shards) != self.meta["n"] or len(self.labels) != self.meta["n"]:
            raise ValueError(f"latent cache {self.folder} is incomplete: meta says {self.meta['n']} items")
        self.channels, self.image_size = self.meta["latent_shape"][0], self.meta["latent_shape"][-1]
        self.num_classes = self.meta["num_classes"]

    def __len__(self) -> int:
        return int(self.meta["n"])

    def get_batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(index, dtype=torch.long)
        out = torch.empty(len(index), *self.meta["latent_shape"])
        shard_of, row = index // self.shard_size, index % self.shard_size
        for s in shard_of.unique().tolist():
            where = (shard_of == s).nonzero().flatten()
            out[where] = torch.from_numpy(np.ascontiguousarray(self.shards[s][row[where].numpy()]))
        return {"x": out, "label": self.labels[index]}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self.get_batch(torch.tensor([i]))
        return {k: v[0] for k, v in batch.items()}
