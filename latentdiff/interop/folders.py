"""diffusers folders on disk: one model (``config.json`` + ``diffusion_pytorch_model.safetensors``,
sharded or not) and whole pipelines (``model_index.json`` naming a folder per part).

Only safetensors are read: a folder holding ``.bin`` / ``.ckpt`` pickles only is refused (latentdiff
never unpickles), with the one-line fix. Writing mirrors diffusers' ``save_pretrained``:
``config.json`` (with ``_class_name`` and ``_diffusers_version``) beside the safetensors file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
DIFFUSERS_VERSION = "0.42.1"  # the version whose layouts the maps are tested against


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def _weights_files(folder: Path) -> list[Path]:
    for name in (WEIGHTS, TRANSFORMERS_WEIGHTS):
        index = folder / f"{name}.index.json"
        if index.is_file():  # sharded: the index maps every tensor to its shard
            shards = sorted(set(read_json(index)["weight_map"].values()))
            return [folder / s for s in shards]
        if (folder / name).is_file():
            return [folder / name]
    pickles = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
    if pickles:
        raise ValueError(f"{folder} holds only pickled weights ({', '.join(pickles)}); latentdiff reads safetensors "
                         "only (it never unpickles): save them as safetensors first, e.g. with diffusers' "
                         "`Model.from_pretrained(folder).save_pretrained(out, safe_serialization=True)`")
    raise FileNotFoundError(f"{folder} has no {WEIGHTS} (nor {TRANSFORMERS_WEIGHTS})")


def read_model_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """A diffusers model folder -> (its config dict, its state dict in float32 on the CPU)."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    state: dict[str, torch.Tensor] = {}
    for file in _weights_files(folder):
        state.update(load_file(str(file)))
    return config, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def write_model_folder(folder: str | os.PathLike, config: dict, state: Mapping[str, torch.Tensor],
                       half: bool = False) -> Path:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` (float16 with ``half``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**config, "_diffusers_version": config.get("_diffusers_version", DIFFUSERS_VERSION)}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(cast(state, half), str(folder / WEIGHTS))
    return folder


def cast(state: Mapping[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, floating ones in float16 when ``half``."""
    dtype = torch.float16 if half else None
    return {k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in state.items()}


def pipeline_parts(folder: str | os.PathLike) -> tuple[str, dict[str, Path]]:
    """A diffusers pipeline folder -> (its pipeline class name, {part name: sub-folder}) for the parts
    ``model_index.json`` lists with a library and class (``[null, null]`` entries are absent parts)."""
    folder = Path(folder)
    index = read_json(folder / "model_index.json")
    parts = {name: folder / name for name, value in index.items()
             if not name.startswith("_") and isinstance(value, list) and value[0] is not None}
    return index.get("_class_name", "?"), parts


def write_model_index(folder: Path, class_name: str, parts: dict[str, tuple[str, str]]) -> None:
    """``model_index.json`` of a pipeline: {part: [library, class]}, plus the empty safety parts that SD's
    pipeline asks for."""
    index = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION,
             **{k: list(v) for k, v in parts.items()}}
    if class_name == "StableDiffusionPipeline":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
