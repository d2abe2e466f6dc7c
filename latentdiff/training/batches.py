"""The trainer's batch stream: a deterministic, resumable data order split across ranks.

Data order is a function of (seed, epoch) only, so a resumed run sees the same batches as an
uninterrupted one; ``BatchStream.position`` = (epoch, next batch index) is all resume needs.
A streaming shard data set (``data.shard_stream``, ``data.name=shards``) gets a ``ShardBatchStream``
with the same interface: its order is a function of (seed, epoch) and the shard manifest, so the
same (epoch, batch index), stored by the trainer state (``training.state``), resumes it exactly.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The global data order of one epoch: ``(n,)`` LongTensor, a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=g)


class BatchStream:
    """Per-rank batches in a deterministic, resumable order.

    Each epoch's permutation (:func:`epoch_permutation`) is split across
    ranks as ``perm[rank::world_size]``; every rank takes the same number of
    whole batches of ``batch_size`` (the remainder is dropped). ``position``
    = (epoch, index of the next batch in the epoch) is all resume needs.
    Uses ``dataset.get_batch(index)`` when present, else a ``DataLoader``
    over ``dataset[i]`` with ``num_workers`` workers.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int, world_size: int,
                 num_workers: int, device: torch.device) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.device = num_workers, device
        self.batches_per_epoch = len(dataset) // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"dataset of {len(dataset)} items is too small for batch_size {batch_size} "
                f"on {world_size} process(es)"
            )
        self.epoch, self.index = 0, 0
        self._indices: torch.Tensor | None = None  # this rank's indices for self.epoch
        self._loader = None  # iterator over the DataLoader (slow path)

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.index

    def seek(self, epoch: int, index: int) -> None:
        """Continue at batch ``index`` of ``epoch``."""
        self.epoch, self.index, self._indices, self._loader = epoch, index, None, None

    def next(self) -> dict:
        """The next batch, tensors moved to the device."""
        if self.index >= self.batches_per_epoch:
            self.seek(self.epoch + 1, 0)
        if self._indices is None:
            perm = epoch_permutation(len(self.dataset), self.seed, self.epoch)
            self._indices = perm[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        b = self.batch_size
        if hasattr(self.dataset, "get_batch"):
            batch = self.dataset.get_batch(self._indices[self.index * b : (self.index + 1) * b])
        else:
            if self._loader is None:
                self._loader = iter(self._make_loader(self._indices[self.index * b :].tolist()))
            batch = next(self._loader)
        self.index += 1
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _make_loader(self, indices: list[int]) -> DataLoader:
        # An explicit generator keeps DataLoader from drawing on the global torch RNG.
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1024 + self.rank)
        return DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=indices, num_workers=self.num_workers,
            drop_last=True, generator=g, pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )


class ShardBatchStream:
    """The :class:`BatchStream` interface over a streaming shard data set (``data.shard_stream.ShardDataset``).

    Batches come from a ``DataLoader(batch_size=None)`` over the data set's ``ShardStream``, whose
    workers read disjoint shards; ``position`` = (epoch, index of the next batch in the epoch) and
    ``seek`` restarts the stream there, reading only what it still needs. ``corrupt`` counts the
    corrupt items this process has skipped (logged by the trainer as ``corrupt_members``).
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int, world_size: int,
                 num_workers: int, device: torch.device) -> None:
        self.stream = dataset.stream(batch_size, seed, rank, world_size, num_workers)
        self.num_workers, self.device = num_workers, device
        self.batches_per_epoch = self.stream.batches_per_epoch
        self.epoch, self.index, self.corrupt = 0, 0, 0
        self._loader = None

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.index

    def seek(self, epoch: int, index: int) -> None:
        """Continue at batch ``index`` of ``epoch``."""
        self.epoch, self.index, self._loader = epoch, index, None

    def next(self) -> dict:
        """The next batch, tensors moved to the device."""
        if self._loader is None:
            self.stream.start = (self.epoch, self.index)
            self._loader = iter(DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                                           pin_memory=self.device.type == "cuda", persistent_workers=False))
        batch = {}
        while "x" not in batch:  # a window whose items were all corrupt holds only its count
            batch = next(self._loader)
            self.corrupt += int(batch.pop("corrupt", 0))
            self.index += 1
            if self.index >= self.batches_per_epoch:
                self.epoch, self.index = self.epoch + 1, 0  # the stream itself runs on into the next epoch
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def make_batch_stream(dataset, batch_size: int, seed: int, rank: int, world_size: int, num_workers: int,
                      device: torch.device) -> BatchStream | ShardBatchStream:
    """The batch stream of ``dataset``: a :class:`ShardBatchStream` for a streaming one (it has
    ``stream``), else a :class:`BatchStream`."""
    kind = ShardBatchStream if hasattr(dataset, "stream") else BatchStream
    return kind(dataset, batch_size, seed, rank, world_size, num_workers, device)
