"""Streaming training batches from a shard folder (``data.name=shards``, ``data.root=DIR``).

The stream never holds the data set in memory: each data-loader worker reads its own shards one
after another and keeps at most a shuffle buffer of decoded items.

Split. With R ranks and W workers per rank there are P = R * W *parts*; part p = r * W + w reads the
shards s with ``s % P == p`` (an exact split: no shard is read twice, none is left out), in an order
permuted per epoch by (seed, epoch, p).

Order. Within a part, a shuffle buffer of K items (webdataset's ``shuffle``: once full, each new
item replaces a uniformly drawn one, which is emitted) mixes the items. The draws depend on
(seed, epoch, p) and on the item *counts* in the manifest only, never on the bytes, so the order is
known before anything is read (:meth:`ShardStream.emission_order`). Window k of a part is emitted
items ``[k B, (k + 1) B)``; every part gives the same number of windows per epoch (the smallest
part's; the rest of the larger parts is dropped that epoch, as ``BatchStream`` drops a remainder).

Batches. Batch j of an epoch on rank r is window ``j // W`` of part ``r * W + j % W``: the order a
``DataLoader`` takes batches from its workers in, round robin. So the position (epoch, j) is all
resume needs: a resumed stream computes which items come next and reads only the shards (and of
them only the members) it still needs: it continues where it was, not from the start.

Corrupt members (an undecodable PNG or array, a truncated or damaged tar) are skipped: their item
is left out of its batch (which is then smaller) and counted in the batch's ``"corrupt"`` entry; a
window with no item left is yielded as ``{"corrupt": B}`` alone, so positions still count windows
(``training.batches.ShardBatchStream`` steps over it).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .shards import read_manifest

_REQUIRED = ("png", "cls")


def decode_item(members: dict[str, bytes], want_latent: bool, want_text: bool, captioned: bool) -> dict:
    """One item's tar members (extension -> bytes) -> {"image" (C, S, S) uint8, "label", "caption",
    "latent", "text", "text_mask", "pooled"}; raises on anything missing or undecodable."""
    from PIL import Image

    with Image.open(io.BytesIO(members["png"])) as pil:
        pil.load()
        array = np.array(pil)
    image = torch.from_numpy(array[:, :, None] if array.ndim == 2 else array).permute(2, 0, 1).contiguous()
    item = {"image": image, "label": int(members["cls"].decode())}
    if captioned:
        item["caption"] = members["txt"].decode("utf-8")
    if want_latent:
        item["latent"] = torch.from_numpy(np.load(io.BytesIO(members["latent.npy"]), allow_pickle=False))
    if want_text:
        for name in ("text", "text_mask", "pooled"):
            item[name] = torch.from_numpy(np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False))
    return item


def collate(items: list[dict], use_latent: bool, want_text: bool, captioned: bool) -> dict:
    """Decoded items -> the batch dict every latentdiff dataset gives: {"x" (B, C, S, S) in [-1, 1]
    (or the latents (B, c, h, w)), "label" (B,) int64[, "caption" list[str]][, "text" (B, L, D)
    float32, "text_mask" (B, L) bool, "pooled" (B, D)]}."""
    if use_latent:
        x = torch.stack([it["latent"] for it in items]).float()
    else:
        x = torch.stack([it["image"] for it in items]).float().div(127.5).sub(1.0)
    batch = {"x": x, "label": torch.tensor([it["label"] for it in items], dtype=torch.long)}
    if captioned:
        batch["caption"] = [it["caption"] for it in items]
    if want_text:
        batch["text"] = torch.stack([it["text"] for it in items]).float()
        batch["text_mask"] = torch.stack([it["text_mask"] for it in items]).bool()
        batch["pooled"] = torch.stack([it["pooled"] for it in items]).float()
    return batch


def buffer_order(n: int, buffer_size: int, generator: torch.Generator) -> torch.Tensor:
    """The emission order (n,) of read indices 0..n-1 through a shuffle buffer of ``buffer_size``."""
    draws = torch.randint(max(buffer_size, 1), (n,), generator=generator).tolist()
    buffer, out = [], []
    for r in range(n):
        if len(buffer) < buffer_size:
            buffer.append(r)
        else:
            j = draws[r]
            out.append(buffer[j])
            buffer[j] = r
    out.extend(buffer[i] for i in torch.randperm(len(buffer), generator=generator).tolist())
    return torch.tensor(out, dtype=torch.long)


class ShardStream(IterableDataset):
    """Endless per-rank batches from a shard folder, for a ``DataLoader(batch_size=None)``.

    Args:
        root: the shard folder (``latentdiff prepare``).
        batch_size: B, items per batch (a batch with corrupt items is smaller).
        seed: the run's seed (shard order and shuffle buffer).
        rank, world_size: this process and the process count.
        num_workers: W, the loader's workers (0: read in the main process, one part per rank).
        shuffle_buffer: K, decoded items held per worker.
        latent_hash: take ``x`` from the latents of this autoencoder (``shards.autoencoder_hash``).
        text: add the stored text embeddings ({"text", "text_mask", "pooled"}).

    Yields ``{**collate(...), "corrupt": int}`` (only ``{"corrupt": B}`` for a window with nothing left), starting
    at :attr:`start` = (epoch, batch index).
    """

    def __init__(self, root: str | Path, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, shuffle_buffer: int = 1000, latent_hash: str | None = None,
                 text: bool = False) -> None:
        self.root, self.manifest = Path(root).expanduser(), read_manifest(root)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.workers = max(num_workers, 1)
        self.parts = world_size * self.workers
        self.shuffle_buffer, self.text, self.latent_hash = shuffle_buffer, text, latent_hash
        holds = self.manifest["holds"]
        self.captioned = bool(holds.get("caption"))
        if latent_hash is not None:
            stored = (holds.get("latent") or {}).get("autoencoder_hash")
            if stored != latent_hash:
                raise ValueError(f"{root} holds no latents of autoencoder {latent_hash} (it holds: {stored}); "
                                 f"write them with `latentdiff prepare SRC {root} --latents AE_CKPT`")
        if text and not holds.get("text_embedding"):
            raise ValueError(f"{root} holds no text embeddings: write them with `latentdiff prepare ... "
                             f"--text-embeddings`")
        shards = self.manifest["shards"]
        if len(shards) < self.parts:
            raise ValueError(f"{root} has {len(shards)} shards for {world_size} process(es) x {self.workers} "
                             f"worker(s): write at least {self.parts} (a smaller --shard-size)")
        counts = [sum(s["items"] for s in shards[p::self.parts]) for p in range(self.parts)]
        self.windows_per_part = min(counts) // batch_size
        if self.windows_per_part == 0:
            raise ValueError(f"{root}: {min(counts)} items per part are too few for batch_size {batch_size}")
        self.batches_per_epoch = self.windows_per_part * self.workers
        self.start = (0, 0)

    def part_shards(self, part: int, epoch: int) -> list[dict]:
        """The shards of ``part`` in the order it reads them in ``epoch``."""
        mine = self.manifest["shards"][part::self.parts]
        g = torch.Generator().manual_seed(self._seed(part, epoch, 1))
        return [mine[i] for i in torch.randperm(len(mine), generator=g).tolist()]

    def emission_order(self, part: int, epoch: int) -> torch.Tensor:
        """(windows_per_part * B,) read indices (positions in the part's read order) in emission order."""
        n = sum(s["items"] for s in self.part_shards(part, epoch))
        g = torch.Generator().manual_seed(self._seed(part, epoch, 2))
        return buffer_order(n, self.shuffle_buffer, g)[: self.windows_per_part * self.batch_size]

    def _seed(self, part: int, epoch: int, purpose: int) -> int:
        return (((self.seed * 1_000_003 + epoch) * 4099 + part) * 7 + purpose) % 2**63

    def __iter__(self):
        info = get_worker_info()
        physical = 0 if info is None else info.id
        epoch, index = self.start
        # the loader takes its first batch from worker 0: that one serves batch `index`
        worker = (physical + index) % self.workers
        part = self.rank * self.workers + worker
        first = -(-(index - worker) // self.workers)  # the first window k with k * W + worker >= index
        while True:
            yield from self._epoch_windows(part, epoch, first)
            epoch, first = epoch + 1, 0

    def _epoch_windows(self, part: int, epoch: int, first_window: int):
        """Windows ``first_window..`` of ``part`` in ``epoch``, reading only the items they need."""
        B = self.batch_size
        order = self.emission_order(part, epoch)
        needed = set(order[first_window * B:].tolist())
        ready: dict[int, dict] = {}
        window, cursor = first_window, 0  # cursor: every read index below it has been read (or lost)
        for shard in self.part_shards(part, epoch):
            start, stop = cursor, cursor + shard["items"]
            if needed.intersection(range(start, stop)):
                self._read_shard(shard, start, needed, ready)
            cursor = stop
            while window < self.windows_per_part:
                rows = order[window * B:(window + 1) * B].tolist()
                if max(rows) >= cursor:
                    break
                items = [ready.pop(r) for r in rows if r in ready]
                window += 1
                # a window whose items are all corrupt still counts as a position: {"corrupt": B} alone
                batch = collate(items, self.latent_hash is not None, self.text, self.captioned) if items else {}
                yield {**batch, "corrupt": len(rows) - len(items)}

    def _read_shard(self, shard: dict, start: int, needed: set[int], ready: dict[int, dict]) -> None:
        """Decode the items of ``shard`` (its first read index ``start``) that are in ``needed`` into ``ready``;
        a damaged tar ends the shard there (its remaining items count as corrupt when their window comes)."""
        first = int(shard["first"])
        group: dict[str, bytes] = {}
        key = None
        try:
            with tarfile.open(self.root / shard["name"], "r:") as tar:
                for member in tar:
                    stem, _, ext = member.name.partition(".")
                    if stem != key:
                        self._finish(key, group, first, start, needed, ready)
                        key, group = stem, {}
                    try:
                        r = start + int(stem) - first
                    except ValueError:
                        continue
                    if r in needed and member.isfile():
                        group[ext] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError):
            group = {}  # the item being read when the tar broke is lost with it
        self._finish(key, group, first, start, needed, ready)

    def _finish(self, key, group, first, start, needed, ready) -> None:
        if key is None or not group:
            return
        r = start + int(key) - first
        if r not in needed or not all(e in group for e in _REQUIRED):
            return
        try:
            ready[r] = decode_item(group, self.latent_hash is not None, self.text, self.captioned)
        except Exception:  # noqa: BLE001 - a corrupt member: skipped, counted when its window comes
            pass


class ShardDataset:
    """A shard folder as a training data set: what the trainer's batch stream asks of it.

    ``stream(batch_size, seed, rank, world_size, num_workers) -> ShardStream``; attributes
    ``num_classes``, ``channels``, ``image_size`` (of ``x``: the latents' when ``latent_hash`` is set),
    ``class_names``, ``preview_captions`` and ``len()`` (items in the folder).
    """

    def __init__(self, root: str | Path, latent_hash: str | None = None, text: bool = False,
                 shuffle_buffer: int = 1000) -> None:
        self.root, self.manifest = Path(root).expanduser(), read_manifest(root)
        self.latent_hash, self.text, self.shuffle_buffer = latent_hash, text, shuffle_buffer
        holds = self.manifest["holds"]
        shape = (holds["latent"]["shape"] if latent_hash is not None
                 else [holds["image"]["channels"], holds["image"]["size"], holds["image"]["size"]])
        self.channels, self.image_size = int(shape[0]), int(shape[-1])
        self.num_classes = int(self.manifest.get("num_classes", 0))
        self.class_names = tuple(self.manifest.get("class_names", ()))
        self.preview_captions = list(self.manifest.get("preview_captions", []))

    def __len__(self) -> int:
        return int(self.manifest["items"])

    def stream(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
               num_workers: int = 0) -> ShardStream:
        return ShardStream(self.root, batch_size, seed, rank, world_size, num_workers, self.shuffle_buffer,
                           self.latent_hash, self.text)
