"""The checkpoints a server offers, found on disk, named, and described by what they can do.

``latentdiff serve runs/ other/run/checkpoint`` takes checkpoint directories and folders of runs
(searched for ``*/checkpoint``, nested ones too). Each checkpoint is named after its run folder
(``runs/shapes-t2i/checkpoint`` -> ``shapes-t2i``); equal names are told apart by their parent
folders (``a.shapes-t2i``, ``b.shapes-t2i``). Requests name models by these names only, never by a
path, so a request cannot reach a file the server was not started with.

Every checkpoint's ``config.json`` says its kind (``task``): diffusion models (class-conditional,
text-to-image, unconditional, unCLIP decoders), ControlNets (served over their base), DMD students
and LoRA adapters are models of the picker; super-resolution stages are offered as upscalers of the
models whose images they take, LoRA adapters also as adapters of their base. Other kinds
(autoencoders, CLIP models, priors, captioners) are skipped with a note. Nothing here reads weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from latentdiff.io.checkpoint import read_config, resolve_checkpoint
from latentdiff.presets import RunConfig, SampleConfig

SERVED_TASKS = ("diffusion", "controlnet", "dmd", "lora")


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """One checkpoint the server offers.

    Attributes:
        name: its name in requests and the picker.
        path: the checkpoint directory.
        task: the config's ``task`` (diffusion, controlnet, dmd, lora) or ``superres`` for an upscaler.
        run: the RunConfig its images come from (a ControlNet's or LoRA's base's, a DMD teacher's).
        defaults: its sampling defaults (a ControlNet's, LoRA's or student's own where it has them).
        config: its config.json, as written into every PNG it makes.
        base: the base checkpoint of a ControlNet or LoRA adapter, else None.
    """

    name: str
    path: Path
    task: str
    run: RunConfig
    defaults: SampleConfig
    config: dict[str, Any]
    base: Path | None = None

    @property
    def output_size(self) -> int:
        """Pixels per side of its images (a latent model's decoded ones)."""
        return self.run.data.image_size if self.run.autoencoder else self.run.model.image_size

    @property
    def channels(self) -> int:
        return self.run.data.channels if self.run.autoencoder else self.run.model.in_channels

    @property
    def class_names(self) -> list[str]:
        """Its class names in label order (indices as names where the run has none); [] without classes."""
        from latentdiff.data.resolve import model_class_names

        n = self.run.model.num_classes
        return (model_class_names(self.run) or [str(i) for i in range(n)]) if n else []


def _described(path: Path) -> ServedModel | str:
    """The ServedModel of a checkpoint directory, or a note saying why it is not served."""
    config = read_config(path)
    task = config.get("task", "diffusion")
    try:
        if task == "controlnet":
            from latentdiff.presets import ControlNetRunConfig

            cn = ControlNetRunConfig.from_dict(config)
            base = Path(cn.base)
            run = RunConfig.from_dict(read_config(base))
            return ServedModel("", path, task, run, cn.sample, config, base)
        if task == "dmd":
            from latentdiff.presets import DMDRunConfig

            dmd = DMDRunConfig.from_dict(config)
            if dmd.teacher_config is None:
                return "a DMD checkpoint without its teacher's config"
            return ServedModel("", path, task, dmd.teacher_config, dmd.sample, config)
        if task == "lora":
            from latentdiff.presets.lora import LoRARunConfig

            lora = LoRARunConfig.from_dict(config)
            run = lora.base_config or RunConfig.from_dict(read_config(lora.base))
            return ServedModel("", path, task, run, lora.sample or run.sample, config, Path(lora.base))
        if task != "diffusion":
            return f"its task is {task!r}, not an image model"
        run = RunConfig.from_dict(config)
    except (FileNotFoundError, ValueError, TypeError, KeyError) as err:
        return f"cannot be served: {' '.join(str(err).split())[:300]}"
    if getattr(run.model, "image_embed_dim", 0) and run.unclip is None:
        return "an image-embedding model without its unclip section"
    return ServedModel("", path, "superres" if run.superres is not None else task, run, run.sample, config)


def find_checkpoints(paths: list[str | Path]) -> list[Path]:
    """Checkpoint directories in ``paths``: each path itself where it is one, else every ``checkpoint``
    directory below it (runs moved aside by ``train --force``, ``replaced-*``, are left out)."""
    found: list[Path] = []
    for given in paths:
        given = Path(given).expanduser()
        if resolve_checkpoint(given) is not None:
            found.append(given)
            continue
        if not given.is_dir():
            raise FileNotFoundError(f"{given}: neither a checkpoint directory nor a folder of runs")
        for candidate in sorted(given.rglob("checkpoint")):
            parts = candidate.relative_to(given).parts
            if any(part.startswith("replaced-") for part in parts) or resolve_checkpoint(candidate) is None:
                continue
            found.append(candidate)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _name_parts(path: Path) -> list[str]:
    """The folder names that name a checkpoint, nearest first: RUN for RUN/checkpoint, then its parents."""
    parts = list(path.resolve().parts[1:])
    if parts and parts[-1] == "checkpoint" and len(parts) > 1:
        parts = parts[:-1]
    return parts[::-1]


def unique_names(paths: list[Path]) -> list[str]:
    """A name per checkpoint: its run folder's name, with as many parent folders (joined by '.') as
    tell it apart from the others; a counter where even the full paths agree."""
    depth = {p: 1 for p in paths}
    while True:
        names = {p: ".".join(_name_parts(p)[:depth[p]][::-1]) for p in paths}
        clashes = [p for p in paths if list(names.values()).count(names[p]) > 1]
        grow = [p for p in clashes if depth[p] < len(_name_parts(p))]
        if not grow:
            break
        for p in grow:
            depth[p] += 1
    out, seen = [], {}
    for p in paths:
        name = names[p] or "model"
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


class ModelRegistry:
    """The servable checkpoints found in ``paths`` by name: ``models`` (the picker), ``upscalers``
    (super-resolution stages) and ``adapters`` (LoRA checkpoints, also models); ``skipped``: notes on
    the checkpoints left out."""

    def __init__(self, paths: list[str | Path]):
        checkpoints = find_checkpoints(paths)
        self.models: dict[str, ServedModel] = {}
        self.upscalers: dict[str, ServedModel] = {}
        self.skipped: list[str] = []
        for path, name in zip(checkpoints, unique_names(checkpoints)):
            entry = _described(path)
            if isinstance(entry, str):
                self.skipped.append(f"{path}: {entry}")
                continue
            entry = dataclasses.replace(entry, name=name)
            (self.upscalers if entry.task == "superres" else self.models)[name] = entry
        self.adapters = {name: m for name, m in self.models.items() if m.task == "lora"}

    def __len__(self) -> int:
        return len(self.models)

    def adapters_of(self, model: ServedModel) -> list[str]:
        """The LoRA adapters trained on ``model``'s network (on its base, for a LoRA model itself)."""
        base = (model.base if model.task == "lora" else model.path)
        if model.task not in ("diffusion", "lora") or base is None:
            return []
        return [name for name, a in self.adapters.items()
                if a.base is not None and a.base.resolve() == base.resolve() and name != model.name]

    def upscalers_of(self, model: ServedModel) -> list[str]:
        """The super-resolution stages whose input is ``model``'s images (size and channels)."""
        if model.run.unclip is not None:
            return []
        return [name for name, sr in self.upscalers.items()
                if sr.run.model.image_size // sr.run.superres.factor == model.output_size
                and sr.run.model.in_channels == model.channels]

    def describe(self, model: ServedModel) -> dict[str, Any]:
        """``GET /api/models``' entry of a model: what the page shows for it."""
        d = model.defaults
        upscalers = self.upscalers_of(model)
        return {"name": model.name, "task": model.task, "description": model.run.description,
                "text": model.run.text is not None, "classes": model.class_names,
                "controlnet": model.task == "controlnet",
                "control_kind": model.config.get("control", {}).get("kind") if model.task == "controlnet" else None,
                "lora": self.adapters_of(model),
                "upscale": bool(upscalers), "upscalers": upscalers, "variations": model.run.unclip is not None,
                "image_size": model.output_size, "channels": model.channels,
                "defaults": {"sampler": d.sampler, "steps": d.steps, "spacing": d.spacing, "guidance": d.guidance,
                             "threshold": d.threshold, "percentile": d.percentile}}
