"""``latentdiff prepare SRC DST``: write a data set as webdataset tar shards for streaming training.

SRC is an image folder (class subfolders -> labels, ``<stem>.txt`` or ``metadata.jsonl`` -> captions, as
``latentdiff train --data`` reads it), a dataset name (``shapes``, ``fmnist``, ``photos``) or a preset
(its data config, and its text encoder for ``--text-embeddings``); ``--set data.KEY=VALUE`` (and
``text.KEY=VALUE``) change them. With ``--latents AE_CKPT`` each item also holds the autoencoder's
latent, with ``--text-embeddings`` the frozen text encoder's embedding of its caption, so a run on the
shards (``--set data.name=shards data.root=DST``) never runs either per step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from latentdiff.conditioning.text import TextConfig
from latentdiff.config import Config
from latentdiff.data import DATASET_NAMES, DataConfig


@dataclasses.dataclass(frozen=True)
class PrepareConfig(Config):
    """What ``prepare`` writes when SRC is a folder or a dataset name: the data and the text encoder."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)


def source_config(src: str, overrides: list[str]) -> tuple[DataConfig, TextConfig | None, dict]:
    """SRC and ``--set`` -> (data config, text config or None, the manifest's ``source``)."""
    from latentdiff.config import apply_overrides
    from latentdiff.presets import PRESETS, get_preset

    if Path(src).expanduser().is_dir():
        from latentdiff.data.resolve import inspect_folder

        facts = inspect_folder(src)
        size = facts.sizes[0][0] if len(facts.sizes) == 1 and facts.sizes[0][0] == facts.sizes[0][1] else 32
        base = PrepareConfig(data=DataConfig(name="folder", root=str(src), channels=facts.channels,
                                             image_size=size, class_names=facts.class_names))
        cfg = apply_overrides(base, overrides)
        return cfg.data, cfg.text, {"kind": "folder", "path": str(Path(src).resolve()), "data": cfg.data.to_dict()}
    if src in PRESETS:
        cfg = apply_overrides(get_preset(src), overrides)
        return cfg.data, getattr(cfg, "text", None), {"kind": "preset", "preset": src, "data": cfg.data.to_dict()}
    if src in DATASET_NAMES and src not in ("folder", "shards"):
        defaults = {"shapes": {"channels": 3}, "photos": {"channels": 3}}.get(src, {})
        cfg = apply_overrides(PrepareConfig(data=DataConfig(name=src, **defaults)), overrides)
        return cfg.data, cfg.text, {"kind": "dataset", "data": cfg.data.to_dict()}
    raise ValueError(f"SRC {src!r} is neither an image folder, a dataset ({', '.join(DATASET_NAMES[:4])}) nor a "
                     f"preset (`latentdiff presets` lists them)")


def prepare(src: str, dst: str, shard_size: int = 1000, latents: str | None = None, text_embeddings: bool = False,
            overrides: list[str] | None = None, split: str = "train", progress: bool = True) -> dict:
    """Write SRC's ``split`` as shards into DST -> the manifest (see ``data.shards`` for the layout)."""
    import torch

    from latentdiff.data import build_dataset
    from latentdiff.data.shards import autoencoder_hash, dataset_items, write_shards

    data, text, source = source_config(src, list(overrides or []))
    dataset = build_dataset(data, split)
    source["split"] = split
    captions = getattr(dataset, "captions", None)
    holds = {"image": {"format": "png", "channels": data.channels, "size": data.image_size},
             "caption": bool(captions), "label": True, "latent": None, "text_embedding": None}
    latent_fn = text_fn = None
    if latents is not None:
        from latentdiff.pipelines.autoencoder import load_autoencoder

        ae, _ = load_autoencoder(latents)
        latent_fn = torch.no_grad()(ae.encode)
        holds["latent"] = {"autoencoder": str(Path(latents).resolve()), "autoencoder_hash": autoencoder_hash(latents),
                           "shape": list(ae.latent_shape)}
    if text_embeddings:
        if not captions:
            raise ValueError(f"--text-embeddings: {src} has no captions to encode")
        from latentdiff.conditioning.text import text_encoder

        encoder = text_encoder(text or TextConfig())
        text_fn = encoder.encode
        holds["text_embedding"] = {"text": (text or TextConfig()).to_dict()}
    extra = {"num_classes": int(getattr(dataset, "num_classes", 0)), "class_names": list(data.class_names),
             "preview_captions": list(dict.fromkeys(captions))[:64] if captions else []}
    return write_shards(dataset_items(dataset, latent_fn, text_fn), dst, shard_size, holds, source,
                        total=len(dataset), extra=extra, progress=progress)


def cmd_prepare(args) -> None:
    import json

    manifest = prepare(args.src, args.dst, args.shard_size, args.latents, args.text_embeddings, args.set or [],
                       args.split)
    summary = {k: manifest[k] for k in ("items", "num_shards", "shard_size")}
    print(json.dumps({**summary, "dst": args.dst, "holds": [k for k, v in manifest["holds"].items() if v]}))


def add_prepare_parser(sub) -> None:
    """``latentdiff prepare`` on the CLI's subparsers."""
    p = sub.add_parser("prepare", help="write a data set as webdataset tar shards (with latents, text embeddings)",
                       description=__doc__.split("\n\n", 1)[1].replace("``", ""))
    p.add_argument("src", help="an image folder, a dataset name (shapes, fmnist, photos) or a preset")
    p.add_argument("dst", help="the shard folder to write (DST/shard-000000.tar, ..., DST/manifest.json)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="items per shard (default 1000)")
    p.add_argument("--latents", metavar="AE_CKPT", help="also store each image's latent from this autoencoder")
    p.add_argument("--text-embeddings", action="store_true", help="also store each caption's frozen text-encoder "
                   "embedding (tokens, mask, pooled; the encoder of text.* or the preset's)")
    p.add_argument("--split", default="train", choices=("train", "test"), help="which split (default train)")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="change the data (or text) config, e.g. --set data.n=1000 data.image_size=64")
    p.set_defaults(func=cmd_prepare)
