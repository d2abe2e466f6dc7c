"""Where a text-to-image run's training captions come from (DALL·E 3, Betker et al. 2023, section 2):
``data.captions`` = ``exact`` (the dataset's own captions), ``alt`` (its alt-text: ``shapes``'
deliberately poor web-style captions), or ``recaption:PATH`` (synthetic captions a captioner wrote,
``latentdiff recaption``; the original caption, the alt-text, is kept beside them for blending).

A recaption file is JSON, written by ``save_recaptions`` to a temporary name and renamed::

    {"provenance": {"captioner", "fingerprint", "style", "beam_width", "data", "split", "n"},
     "captions": [str, ...]}          one per item of the split, in item order

and names the data it covers: a file for other data, or one that does not cover every item, is
refused (with the count of missing items).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SOURCES = ("exact", "alt", "recaption:PATH")


def check_source(source: str) -> None:
    """Refuse a ``data.captions`` value that is none of ``SOURCES``."""
    if source not in ("exact", "alt") and not (source.startswith("recaption:") and len(source) > len("recaption:")):
        raise ValueError(f"data.captions must be one of {', '.join(SOURCES)}, got {source!r}")


def data_key(data_cfg) -> dict:
    """What a recaption file must match of a run's data config: everything but the caption source and
    the item count (item i does not depend on it; the count is checked item by item instead)."""
    d = data_cfg.to_dict()
    for key in ("captions", "caption_blend", "n"):
        d.pop(key, None)
    return d


def save_recaptions(path: str | Path, captions: list[str], provenance: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"provenance": provenance, "captions": list(captions)}, indent=1))
    os.replace(tmp, path)
    return path


def load_recaptions(path: str | Path, data_cfg, n: int) -> tuple[list[str], dict]:
    """(captions, provenance) of a recaption file for the n training items of ``data_cfg``."""
    try:
        stored = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"data.captions: no recaption file {path} (write one with `latentdiff recaption`)")
    except json.JSONDecodeError as err:
        raise ValueError(f"data.captions: {path} is not a recaption file ({err})") from None
    captions, provenance = stored.get("captions"), stored.get("provenance", {})
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"data.captions: {path} holds no list of captions")
    if provenance.get("data") != data_key(data_cfg) or provenance.get("split") != "train":
        raise ValueError(f"data.captions: {path} captions other data ({provenance.get('data')}, split "
                         f"{provenance.get('split')}) than this run's training split ({data_key(data_cfg)})")
    if len(captions) != n:
        raise ValueError(f"data.captions: {path} covers {len(captions)} of the {n} training items "
                         f"({n - len(captions)} missing)" if len(captions) < n else
                         f"data.captions: {path} holds {len(captions)} captions for {n} training items")
    return captions, provenance


class Recaptioned:
    """A dataset whose ``captions`` are replaced (alt-text or synthetic), everything else delegated;
    ``original_captions`` (None for alt-text) are what a blend draws the rest of the time."""

    def __init__(self, base, captions: list[str], original_captions: list[str] | None = None):
        if len(captions) != len(base):
            raise ValueError(f"{len(captions)} captions for a dataset of {len(base)} items")
        self.base, self.captions, self.original_captions = base, list(captions), original_captions

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name):  # attributes, alt_texts, num_classes, ... of the base dataset
        return getattr(self.base, name)

    def get_batch(self, index):
        return self.base.get_batch(index)


def with_caption_source(dataset, data_cfg, split: str):
    """The training split with the captions ``data_cfg.captions`` names (test splits keep their own)."""
    source = data_cfg.captions
    if source == "exact" or split != "train":
        return dataset
    if not hasattr(dataset, "alt_texts"):
        raise ValueError(f"data.captions={source}: dataset {data_cfg.name!r} has no alt-text (shapes has)")
    if source == "alt":
        return Recaptioned(dataset, dataset.alt_texts)
    captions, _ = load_recaptions(source[len("recaption:"):], data_cfg, len(dataset))
    return Recaptioned(dataset, captions, dataset.alt_texts)
