"""Webdataset tar shards of a latentdiff dataset: the writer and the manifest (``latentdiff prepare``).

A shard folder, written by :func:`write_shards`::

    manifest.json          counts, per-shard sha256, what each item holds, the source (``read_manifest``)
    shard-000000.tar       ``shard_size`` items, the last shard shorter
    shard-000001.tar
    ...

Each item is a group of tar members sharing one key, the item's global index (``000000042``), as
webdataset reads them (``key.ext``):

    000000042.png              the image, PNG (grey ``L`` or ``RGB``)
    000000042.txt              its caption, UTF-8 (absent for an uncaptioned source)
    000000042.cls              its class label, decimal text
    000000042.latent.npy       optional: the autoencoder's latent (c, h, w) float32; the manifest's
                               ``holds.latent.autoencoder_hash`` names the autoencoder (its files' sha1)
    000000042.text.npy         optional: the frozen text encoder's token states (L, D) float16,
    000000042.text_mask.npy    its mask (L,) uint8 and
    000000042.pooled.npy       its pooled embedding (D,) float32 (``conditioning.text_cache``'s dtypes)

Each shard is written to ``<name>.tmp`` and renamed when complete, the manifest last, so a folder with a
manifest is whole. Members carry fixed metadata (mtime 0, uid 0), so the same items give the same bytes.
The streaming reader is ``data.shard_stream``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

MANIFEST_FILE = "manifest.json"
FORMAT_NAME = "latentdiff-shards"
FORMAT_VERSION = 1


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def item_key(index: int) -> str:
    return f"{index:09d}"


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def autoencoder_hash(ckpt: str | Path) -> str:
    """The sha1 (16 hex digits) of an autoencoder checkpoint's config and weights files: the key of the
    latents that autoencoder gives (as ``pipelines.autoencoder``'s latent cache keys them)."""
    from latentdiff.io.checkpoint import files_digest

    return files_digest(ckpt).hexdigest()[:16]


def png_bytes(image: torch.Tensor) -> bytes:
    """(C, S, S) uint8, C = 1 or 3 -> PNG bytes (mode ``L`` or ``RGB``)."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array, "L" if array.shape[2] == 1 else "RGB")
    out = io.BytesIO()
    pil.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def npy_bytes(array: torch.Tensor | np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array.numpy() if torch.is_tensor(array) else array), allow_pickle=False)
    return out.getvalue()


def item_members(index: int, item: dict[str, Any]) -> list[tuple[str, bytes]]:
    """One item as its tar members ``(name, bytes)``.

    ``item``: ``"image"`` (C, S, S) uint8; ``"label"`` int; optional ``"caption"`` str, ``"latent"``
    (c, h, w), ``"text"`` (L, D), ``"text_mask"`` (L,), ``"pooled"`` (D,).
    """
    key = item_key(index)
    members = [(f"{key}.png", png_bytes(item["image"])), (f"{key}.cls", str(int(item["label"])).encode())]
    if item.get("caption") is not None:
        members.append((f"{key}.txt", item["caption"].encode("utf-8")))
    if item.get("latent") is not None:
        members.append((f"{key}.latent.npy", npy_bytes(item["latent"].float())))
    if item.get("text") is not None:
        members += [(f"{key}.text.npy", npy_bytes(item["text"].half())),
                    (f"{key}.text_mask.npy", npy_bytes(item["text_mask"].to(torch.uint8))),
                    (f"{key}.pooled.npy", npy_bytes(item["pooled"].float()))]
    return members


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    tar.addfile(info, io.BytesIO(data))


def _write_one_shard(path: Path, first_index: int, items: list[dict]) -> dict:
    """Write ``items`` (global indices from ``first_index``) as the shard ``path``, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for offset, item in enumerate(items):
            for name, data in item_members(first_index + offset, item):
                _add_member(tar, name, data)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"name": path.name, "first": first_index, "items": len(items), "bytes": path.stat().st_size,
            "sha256": sha256_of(path)}


def write_shards(items: Iterable[dict], dst: str | Path, shard_size: int, holds: dict, source: dict,
                 total: int | None = None, extra: dict | None = None, progress: bool = True) -> dict:
    """Write ``items`` (dicts as :func:`item_members` takes them) as shards of ``shard_size`` into ``dst``.

    Args:
        holds: what each item holds, for the manifest (``{"image": {...}, "caption": bool, ...}``).
        source: where the items come from (a folder, a data config), for the manifest.
        total: the item count, for the progress bar.
        extra: more manifest fields (``num_classes``, ``class_names``, ``preview_captions``).

    Returns:
        the manifest (also written to ``dst/manifest.json``, last, atomically).
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / MANIFEST_FILE).unlink(missing_ok=True)  # the folder is whole again only when it is rewritten
    for old in list(dst.glob("shard-*.tar")) + list(dst.glob("shard-*.tar.tmp")):
        old.unlink()
    shards, pending, count = [], [], 0
    bar = tqdm(total=total, desc=f"write shards to {dst}", unit="img", disable=not progress)
    for item in items:
        pending.append(item)
        if len(pending) == shard_size:
            shards.append(_write_one_shard(dst / shard_name(len(shards)), count, pending))
            count += len(pending)
            bar.update(len(pending))
            pending = []
    if pending:
        shards.append(_write_one_shard(dst / shard_name(len(shards)), count, pending))
        count += len(pending)
        bar.update(len(pending))
    bar.close()
    if count == 0:
        raise ValueError(f"no items to write to {dst}")
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "items": count, "shard_size": shard_size,
                "num_shards": len(shards), "holds": holds, "source": source, **(extra or {}), "shards": shards}
    tmp = dst / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, dst / MANIFEST_FILE)
    return manifest


def read_manifest(root: str | Path) -> dict:
    """``root/manifest.json`` -> dict; FileNotFoundError / ValueError naming the folder when absent or foreign."""
    path = Path(root).expanduser() / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"data.root={root}: no shard folder ({MANIFEST_FILE} missing; write one with "
                                f"`latentdiff prepare SRC {root}`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a {FORMAT_NAME} v{FORMAT_VERSION} manifest")
    return manifest


def verify_shards(root: str | Path) -> list[str]:
    """The names of the shards whose sha256 differs from the manifest's (or that are missing)."""
    root = Path(root)
    bad = []
    for shard in read_manifest(root)["shards"]:
        path = root / shard["name"]
        if not path.is_file() or sha256_of(path) != shard["sha256"]:
            bad.append(shard["name"])
    return bad


def dataset_items(dataset, latent_fn=None, text_fn=None, batch_size: int = 256) -> Iterator[dict]:
    """The items of a latentdiff dataset (``get_batch`` -> {"x" in [-1, 1], "label"[, "caption"]}) as
    :func:`item_members` takes them, with ``latent_fn(x (B, C, S, S)) -> (B, c, h, w)`` and
    ``text_fn(captions) -> (tokens (B, L, D), pooled (B, D), mask (B, L))`` applied per batch."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        batch = dataset.get_batch(torch.arange(start, min(start + batch_size, n)))
        x = batch["x"]
        images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        captions = batch.get("caption")
        latents = latent_fn(x) if latent_fn is not None else None
        text = text_fn(list(captions)) if text_fn is not None else None
        for i in range(len(x)):
            item = {"image": images[i], "label": int(batch["label"][i]),
                    "caption": captions[i] if captions is not None else None}
            if latents is not None:
                item["latent"] = latents[i]
            if text is not None:
                item.update(text=text[0][i], pooled=text[1][i], text_mask=text[2][i])
            yield item
