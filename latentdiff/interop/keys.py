"""Strict renaming of state dicts between checkpoint layouts: every source key is placed and every
target key is filled, or the error names the keys that were not (never a silent drop).

A key map reads its source through a :class:`StrictReader` (a read-only dict that records what was
read); ``reader.finish()`` then refuses any key that no rule read, and :func:`check_keys` refuses a
result that misses or adds keys against the model it is meant for.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Iterator, Mapping

import torch


class LayoutError(ValueError):
    """A checkpoint whose keys do not fit the layout it was read as."""


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class StrictReader(Mapping):
    """A read-only view of a state dict that records which keys were read.

    Args:
        state: the source tensors by name.
        layout: the layout's name, said in every error (e.g. "diffusers UNet2DConditionModel").
    """

    def __init__(self, state: Mapping[str, torch.Tensor], layout: str):
        self.state, self.layout, self.used = state, layout, set()

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise LayoutError(f"{self.layout}: the checkpoint has no key {key!r}")
        self.used.add(key)
        return self.state[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)

    def with_prefix(self, prefix: str) -> list[str]:
        """The source keys that start with ``prefix`` (listing them reads none)."""
        return [k for k in self.state if k.startswith(prefix)]

    def skip(self, *patterns: str) -> None:
        """Mark the keys matching these fnmatch patterns as deliberately unused (buffers that the
        target recomputes, such as position ids)."""
        self.used.update(k for k in self.state if any(fnmatch.fnmatchcase(k, p) for p in patterns))

    def finish(self) -> None:
        """Raise LayoutError naming every source key that no rule read."""
        unused = sorted(set(self.state) - self.used)
        if unused:
            raise LayoutError(f"{self.layout}: {len(unused)} key(s) of the checkpoint could not be placed: "
                              f"{_listing(unused)}")


def check_keys(result: Mapping[str, torch.Tensor], expected: Iterable[str], layout: str) -> None:
    """Raise LayoutError when ``result`` misses keys of ``expected`` or has keys outside it."""
    expected = set(expected)
    missing, extra = sorted(expected - set(result)), sorted(set(result) - expected)
    if missing:
        raise LayoutError(f"{layout}: {len(missing)} weight(s) of the target were not filled: {_listing(missing)}")
    if extra:
        raise LayoutError(f"{layout}: {len(extra)} weight(s) have no place in the target: {_listing(extra)}")


def rename(state: Mapping[str, torch.Tensor], pairs: Iterable[tuple[str, str]], layout: str) -> dict:
    """A state dict renamed by (source, target) name pairs, each source key used once, every key of
    ``state`` placed (else LayoutError naming the rest)."""
    reader, out = StrictReader(state, layout), {}
    for src, dst in pairs:
        out[dst] = reader[src]
    reader.finish()
    return out


def check_like(state: Mapping[str, torch.Tensor], build: Callable[[], torch.nn.Module], layout: str,
               what: str) -> None:
    """Raise LayoutError unless ``state`` has exactly the keys and tensor shapes of the module ``build()``
    (built on the meta device: no memory, no init); ``what`` names the module in the message."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in build().state_dict().items()}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v)})" for k, v in expected.items()
             if k in state and state[k].shape != v]
    for problem, keys in (("is missing", missing), ("has unknown", extra), ("has wrongly shaped", wrong)):
        if keys:
            raise LayoutError(f"{layout}: the {what} state {problem} key(s): {_listing(keys)}")
