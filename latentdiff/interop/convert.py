"""``latentdiff convert``: diffusers folders and single-file checkpoints into latentdiff checkpoints, and back.

A converted Stable-Diffusion-layout model is one latentdiff diffusion checkpoint directory::

    DST/config.json, model.safetensors[, ema.safetensors]   the U-Net and its RunConfig (task diffusion)
    DST/autoencoder/                                        the KL autoencoder's checkpoint (task autoencoder)
    DST/text_encoder/                                       the CLIP text model and tokenizer (transformers files)

The RunConfig names the two sub-folders by relative paths, which loading resolves beside the checkpoint
(``pipelines.diffusion.load_denoiser``), so DST can be moved as a whole. Every map is strict
(``interop.keys``): a key that cannot be placed is an error naming it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentdiff.conditioning.text import TextConfig
from latentdiff.data import DataConfig
from latentdiff.interop.folders import (TRANSFORMERS_WEIGHTS, cast, pipeline_parts, read_json, read_model_folder,
                                        write_model_folder, write_model_index)
from latentdiff.interop.scheduler import diffusion_from_scheduler, scheduler_from_diffusion
from latentdiff.io.checkpoint import load_checkpoint, save_checkpoint
from latentdiff.objectives.diffusion import DiffusionConfig
from latentdiff.presets.configs import AutoencoderRunConfig, RunConfig, SampleConfig

AUTOENCODER_DIR, TEXT_DIR = "autoencoder", "text_encoder"
AE_PREFIX = "autoencoder."  # the autoencoder's weights inside an autoencoder checkpoint (AutoencoderTraining)


def write_autoencoder(dst: Path, ae_cfg, state: dict, half: bool = False) -> Path:
    """An autoencoder checkpoint (task autoencoder) holding ``state`` under its config ``ae_cfg``."""
    cfg = AutoencoderRunConfig(description="imported", autoencoder=ae_cfg,
                               data=DataConfig(name="folder", image_size=ae_cfg.image_size,
                                               channels=ae_cfg.in_channels))
    return save_checkpoint(dst, cfg.to_dict(), cast({AE_PREFIX + k: v for k, v in state.items()}, half))


def copy_text_encoder(model_dir: Path, tokenizer_dir: Path, dst: Path, half: bool = False) -> TextConfig:
    """Copy a transformers text model folder and its tokenizer folder into one folder ``dst``
    (safetensors weights only) -> the TextConfig of Stable Diffusion's conditioning on it."""
    dst.mkdir(parents=True, exist_ok=True)
    weights = model_dir / TRANSFORMERS_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{model_dir} has no {TRANSFORMERS_WEIGHTS} (latentdiff reads safetensors only)")
    shutil.copy2(model_dir / "config.json", dst / "config.json")
    return _text_folder(dst, load_file(str(weights)), tokenizer_dir, half)


def _text_folder(dst: Path, weights: dict, tokenizer_dir: Path, half: bool) -> TextConfig:
    """Write the text model's ``weights`` and copy the tokenizer's files into ``dst`` (whose config.json
    is already there) -> the TextConfig of Stable Diffusion's conditioning on it."""
    save_file(cast(weights, half), str(dst / TRANSFORMERS_WEIGHTS), metadata={"format": "pt"})
    for file in tokenizer_dir.iterdir():
        if file.is_file() and file.name not in ("config.json", TRANSFORMERS_WEIGHTS):
            shutil.copy2(file, dst / file.name)
    max_length = int(read_json(dst / "tokenizer_config.json").get("model_max_length", 77))
    return TextConfig(encoder=TEXT_DIR, max_length=min(max_length, 77), attend_padding=True)


def diffusion_checkpoint(dst: Path, model, diffusion: DiffusionConfig, sample: dict, state: dict, *,
                         ema: dict | None = None, autoencoder: str | None = None, text: TextConfig | None = None,
                         pixel_size: int, channels: int, source: str, half: bool = False) -> list[str]:
    """Write the diffusion checkpoint of an imported U-Net -> the notes of what was not kept."""
    notes = sample.pop("notes", [])
    defaults = SampleConfig(guidance=7.5 if text is not None else 1.0, steps=25 if text is not None else 50,
                            **sample)
    cfg = RunConfig(description=f"imported from {source}", autoencoder=autoencoder, text=text, model=model,
                    diffusion=diffusion, sample=defaults,
                    data=DataConfig(name="folder", image_size=pixel_size, channels=channels))
    save_checkpoint(dst, cfg.to_dict(), cast(state, half), None if ema is None else cast(ema, half))
    if staging(dst).is_dir():  # the parts move in only now: a checkpoint save swaps its whole directory
        for part in staging(dst).iterdir():
            os.replace(part, dst / part.name)
        staging(dst).rmdir()
    return notes


def staging(dst: Path) -> Path:
    """Where an import writes the autoencoder and text encoder before the checkpoint ``dst`` exists."""
    return dst.with_name(dst.name + ".parts")


def import_diffusers(src: str | os.PathLike, dst: str | os.PathLike, half: bool = False,
                     base: str | None = None) -> list[str]:
    """A diffusers pipeline folder (``model_index.json``) or model folder (``config.json``) -> a latentdiff
    checkpoint at ``dst``; returns notes on what was not kept. ``base``: a ControlNet's base checkpoint."""
    from latentdiff.interop.unet import unet_from_diffusers

    src, dst = Path(src), Path(dst)
    if not (src / "model_index.json").is_file():
        return _import_model_folder(src, dst, half, base)
    cls, parts = pipeline_parts(src)
    if "unet" not in parts:
        raise ValueError(f"{src} is a {cls} without a unet/ part; latentdiff imports U-Net pipelines "
                         "(StableDiffusionPipeline, DDPMPipeline, ...)")
    model, state = unet_from_diffusers(*read_model_folder(parts["unet"]))
    scheduler = read_json(parts["scheduler"] / "scheduler_config.json") if "scheduler" in parts else {}
    diffusion, sample = diffusion_from_scheduler(scheduler)
    autoencoder, text, size, channels = None, None, model.image_size, model.in_channels
    if "vae" in parts:
        from latentdiff.interop.vae import vae_from_diffusers

        ae_cfg, ae_state = vae_from_diffusers(*read_model_folder(parts["vae"]))
        ae_cfg = ae_cfg.replace(image_size=model.image_size * 2 ** (len(ae_cfg.channel_mult) - 1))
        write_autoencoder(staging(dst) / AUTOENCODER_DIR, ae_cfg, ae_state, half)
        autoencoder, size, channels = AUTOENCODER_DIR, ae_cfg.image_size, ae_cfg.in_channels
    if "text_encoder" in parts:
        if "tokenizer" not in parts:
            raise FileNotFoundError(f"{src} has a text_encoder/ but no tokenizer/ folder")
        text = copy_text_encoder(parts["text_encoder"], parts["tokenizer"], staging(dst) / TEXT_DIR, half)
    return diffusion_checkpoint(dst, model, diffusion, sample, state, autoencoder=autoencoder, text=text,
                                pixel_size=size, channels=channels, source=f"{src} ({cls})", half=half)


def _import_model_folder(src: Path, dst: Path, half: bool, base: str | None) -> list[str]:
    config, state = read_model_folder(src)
    cls = config.get("_class_name")
    if cls in ("UNet2DModel", "UNet2DConditionModel"):
        from latentdiff.interop.unet import unet_from_diffusers

        model, ours = unet_from_diffusers(config, state)
        scheduler = src.parent / "scheduler" / "scheduler_config.json"
        diffusion, sample = diffusion_from_scheduler(read_json(scheduler) if scheduler.is_file() else {})
        if not scheduler.is_file():
            sample["notes"].append(f"no {scheduler}: the schedule is taken as DDPM's linear betas, eps prediction")
        return diffusion_checkpoint(dst, model, diffusion, sample, ours, pixel_size=model.image_size,
                                    channels=model.in_channels, source=f"{src} ({cls})", half=half)
    if cls == "AutoencoderKL":
        from latentdiff.interop.vae import vae_from_diffusers

        ae_cfg, ours = vae_from_diffusers(config, state)
        write_autoencoder(dst, ae_cfg, ours, half)
        return []
    if cls == "ControlNetModel":
        return _import_controlnet(config, state, dst, half, base)
    raise ValueError(f"{src}/config.json names _class_name {cls!r}; latentdiff imports UNet2DModel, "
                     "UNet2DConditionModel, AutoencoderKL, ControlNetModel and pipelines of them")


def _import_controlnet(config: dict, state: dict, dst: Path, half: bool, base: str | None) -> list[str]:
    from latentdiff.interop.controlnet import controlnet_from_diffusers
    from latentdiff.presets.configs import ControlNetRunConfig

    if base is None:
        raise ValueError("a ControlNetModel needs the base it controls: pass --base CKPT (a converted U-Net)")
    from latentdiff.io.checkpoint import read_config

    size = RunConfig.from_dict(read_config(base)).model.image_size  # not in a ControlNetModel's config
    unet_cfg, cn_cfg, ours = controlnet_from_diffusers(config, state, sample_size=size)
    cfg = ControlNetRunConfig(description="imported ControlNetModel", base=str(base), controlnet=cn_cfg,
                              base_model=unet_cfg)
    save_checkpoint(dst, cfg.to_dict(), cast(ours, half))
    return ["the control kind (edges, mask, ...) is not in a diffusers ControlNet: give control images yourself"]


def export_diffusers(ckpt: str | os.PathLike, dst: str | os.PathLike, half: bool = False, ema: bool = False) -> Path:
    """A latentdiff checkpoint -> a diffusers folder: a StableDiffusionPipeline (U-Net + autoencoder +
    text encoder), a DDPMPipeline (pixel U-Net), an AutoencoderKL or a ControlNetModel folder."""
    state, dst = load_checkpoint(ckpt, trainer_state=False), Path(dst)
    weights = state.ema_state if ema and state.ema_state is not None else state.model_state
    if ema and state.ema_state is None:
        raise ValueError(f"{ckpt} has no EMA weights (--ema)")
    task = state.config.get("task", "diffusion")
    if task == "autoencoder":
        from latentdiff.interop.vae import vae_to_diffusers

        cfg = AutoencoderRunConfig.from_dict(state.config)
        write_model_folder(dst, *vae_to_diffusers(cfg.autoencoder, _unprefixed(weights)), half=half)
        return dst
    if task == "controlnet":
        from latentdiff.interop.controlnet import controlnet_to_diffusers
        from latentdiff.presets.configs import ControlNetRunConfig

        cfg = ControlNetRunConfig.from_dict(state.config)
        write_model_folder(dst, *controlnet_to_diffusers(cfg.base_model, cfg.controlnet, weights), half=half)
        return dst
    if task != "diffusion":
        raise ValueError(f"{ckpt} is a {task} checkpoint; diffusers export takes diffusion U-Nets, autoencoders "
                         "and ControlNets")
    return _export_pipeline(Path(ckpt), state.config, weights, dst, half, ema)


def _unprefixed(weights: dict) -> dict:
    return {k[len(AE_PREFIX):]: v for k, v in weights.items() if k.startswith(AE_PREFIX)}


def _export_pipeline(ckpt: Path, config: dict, weights: dict, dst: Path, half: bool, ema: bool) -> Path:
    from latentdiff.interop.unet import unet_to_diffusers
    from latentdiff.pipelines.diffusion import parts_beside

    cfg = parts_beside(RunConfig.from_dict(config), ckpt)
    if cfg.transformer is not None:
        raise ValueError(f"{ckpt} is a {cfg.transformer.kind} transformer; diffusers export covers U-Nets only")
    unet_config, unet_state = unet_to_diffusers(cfg.model, weights)
    write_model_folder(dst / "unet", unet_config, unet_state, half)
    scheduler = scheduler_from_diffusion(cfg.diffusion, cfg.sample.spacing)
    (dst / "scheduler").mkdir(parents=True, exist_ok=True)
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    parts = {"unet": ("diffusers", unet_config["_class_name"]), "scheduler": ("diffusers", scheduler["_class_name"])}
    if cfg.autoencoder is None and cfg.text is None:
        write_model_index(dst, "DDPMPipeline", parts)
        return dst
    if cfg.autoencoder is None or cfg.text is None:
        raise ValueError(f"{ckpt}: a diffusers StableDiffusionPipeline needs both an autoencoder and a text encoder")
    from latentdiff.interop.vae import vae_to_diffusers

    ae = load_checkpoint(cfg.autoencoder, trainer_state=False)
    ae_weights = ae.ema_state if ema and ae.ema_state is not None else ae.model_state
    vae_config, vae_state = vae_to_diffusers(AutoencoderRunConfig.from_dict(ae.config).autoencoder,
                                             _unprefixed(ae_weights))
    write_model_folder(dst / "vae", vae_config, vae_state, half)
    text_class = _split_text_encoder(Path(cfg.text.encoder), dst, half)
    parts |= {"vae": ("diffusers", "AutoencoderKL"), "text_encoder": ("transformers", text_class),
              "tokenizer": ("transformers", "CLIPTokenizer")}
    write_model_index(dst, "StableDiffusionPipeline", parts)
    return dst


def _split_text_encoder(folder: Path, dst: Path, half: bool) -> str:
    """Our one text-encoder folder -> diffusers' text_encoder/ (config + weights) and tokenizer/ (the rest)."""
    config = read_json(folder / "config.json")
    if config.get("model_type") not in ("clip_text_model", "clip"):
        raise ValueError(f"{folder} is a {config.get('model_type')!r} text model; StableDiffusionPipeline takes "
                         "a CLIP text model")
    (dst / "text_encoder").mkdir(parents=True, exist_ok=True)
    (dst / "tokenizer").mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / "config.json", dst / "text_encoder" / "config.json")
    weights = cast(load_file(str(folder / TRANSFORMERS_WEIGHTS)), half)
    save_file(weights, str(dst / "text_encoder" / TRANSFORMERS_WEIGHTS),
              metadata={"format": "pt"})
    for file in folder.iterdir():
        if file.is_file() and file.name not in ("config.json", TRANSFORMERS_WEIGHTS):
            shutil.copy2(file, dst / "tokenizer" / file.name)
    return config.get("architectures", ["CLIPTextModel"])[0]


def import_single_file(file: str | os.PathLike, dst: str | os.PathLike, config: str | None = None,
                       parameterisation: str | None = None, half: bool = False, ema: bool = False) -> list[str]:
    """An original Stable Diffusion 1.x / LDM ``.safetensors`` -> a latentdiff checkpoint at ``dst``.

    The file holds weights only. ``config`` is a diffusers Stable Diffusion folder whose configs are
    read (not its weights), as diffusers' ``from_single_file(config=...)`` does: ``unet/config.json``
    and ``vae/config.json`` (else inferred from the tensor shapes, with SD's heads rule),
    ``scheduler/scheduler_config.json`` (else eps prediction), and the text model's config with its
    tokenizer (``text_encoder/``, ``tokenizer/``; required for a text model: the file has no tokenizer).
    ``parameterisation`` overrides the scheduler's (SD 2.x 768: v). ``ema``: the EMA U-Net becomes the
    model's weights (else it is kept as the checkpoint's EMA)."""
    from latentdiff.interop.single_file import ema_state, schedule_name, split_single_file
    from latentdiff.interop.unet import unet_from_ldm, unet_to_ldm
    from latentdiff.interop.vae import vae_from_ldm

    file, dst = Path(file), Path(dst)
    if file.suffix != ".safetensors":
        raise ValueError(f"{file}: latentdiff reads .safetensors single files only (it never unpickles .ckpt)")
    folder = None if config is None else Path(config)
    parts = split_single_file(load_file(str(file)))
    if not parts["unet"]:
        raise ValueError(f"{file} has no model.diffusion_model.* U-Net")
    if parts["text"] and folder is None:
        _single_file_text(parts["text"], folder, staging(dst), half, file)  # raises: says what to pass
    model, state = unet_from_ldm(parts["unet"], _part_config(folder, "unet"))
    ema_ldm = ema_state(parts["ema"], list(unet_to_ldm(model, state)))
    ema_weights = None if ema_ldm is None else unet_from_ldm(ema_ldm, model)[1]
    if ema and ema_weights is None:
        raise ValueError(f"{file} has no model_ema.* weights (--ema)")
    state, ema_weights = (ema_weights, None) if ema else (state, ema_weights)
    scheduler = folder / "scheduler" / "scheduler_config.json" if folder else None
    diffusion, sample = diffusion_from_scheduler(read_json(scheduler) if scheduler and scheduler.is_file() else
                                                 {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                  "beta_end": 0.012})
    diffusion = diffusion.replace(schedule=schedule_name(parts["schedule"]) or diffusion.schedule,
                                  parameterisation=parameterisation or diffusion.parameterisation)
    autoencoder, size, channels = None, model.image_size, model.in_channels
    if parts["vae"]:
        ae_cfg, ae_state = vae_from_ldm(parts["vae"], _part_config(folder, "vae"))
        ae_cfg = ae_cfg.replace(image_size=model.image_size * 2 ** (len(ae_cfg.channel_mult) - 1))
        write_autoencoder(staging(dst) / AUTOENCODER_DIR, ae_cfg, ae_state, half)
        autoencoder, size, channels = AUTOENCODER_DIR, ae_cfg.image_size, ae_cfg.in_channels
    text = None
    if parts["text"] or model.context_dim:
        text = _single_file_text(parts["text"], folder, staging(dst) / TEXT_DIR, half, file)
    return diffusion_checkpoint(dst, model, diffusion, sample, state, ema=ema_weights, autoencoder=autoencoder,
                                text=text, pixel_size=size, channels=channels, source=str(file), half=half)


def _part_config(folder: Path | None, part: str):
    """The U-Net's or autoencoder's config from ``folder/part/config.json``; None when there is none."""
    if folder is None or not (folder / part / "config.json").is_file():
        return None
    if part == "unet":
        from latentdiff.interop.unet_config import config_from_diffusers
    else:
        from latentdiff.interop.vae import config_from_diffusers
    return config_from_diffusers(read_json(folder / part / "config.json"))


def _single_file_text(part: dict, folder: Path | None, dst: Path, half: bool, file: Path) -> TextConfig:
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentdiff.interop.single_file import text_state

    if folder is None:
        raise FileNotFoundError(f"{file} holds no text-encoder config and no tokenizer: pass --config DIR, a diffusers "
                                "Stable Diffusion folder (its text_encoder/ and tokenizer/ configs are read, and the "
                                "unet/, vae/ and scheduler/ configs where present)")
    model_dir = folder / "text_encoder" if (folder / "text_encoder").is_dir() else folder
    tokenizer_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder
    text_config = CLIPTextConfig.from_pretrained(model_dir, local_files_only=True)
    with torch.device("meta"):  # the key names only: no 123M-parameter model built to list them
        expected = set(CLIPTextModel(text_config).state_dict())
    weights = text_state(part, expected) if part else load_file(str(model_dir / TRANSFORMERS_WEIGHTS))
    dst.mkdir(parents=True, exist_ok=True)
    text_config.save_pretrained(dst)
    return _text_folder(dst, weights, tokenizer_dir, half)


def export_single_file(ckpt: str | os.PathLike, file: str | os.PathLike, half: bool = False,
                       ema: bool = False) -> Path:
    """A latentdiff Stable-Diffusion-layout checkpoint (U-Net, KL autoencoder, CLIP text model) -> one
    original-layout ``.safetensors`` (``interop.single_file``), with DDPM's schedule buffers."""
    from latentdiff.interop.single_file import join_single_file
    from latentdiff.interop.unet import unet_to_ldm
    from latentdiff.interop.vae import vae_to_ldm
    from latentdiff.pipelines.diffusion import parts_beside

    state, file = load_checkpoint(ckpt, trainer_state=False), Path(file)
    if state.config.get("task", "diffusion") != "diffusion":
        raise ValueError(f"{ckpt} is a {state.config.get('task')} checkpoint; single files hold diffusion models")
    if ema and state.ema_state is None:
        raise ValueError(f"{ckpt} has no EMA weights (--ema)")
    cfg = parts_beside(RunConfig.from_dict(state.config), state.path)
    unet = unet_to_ldm(cfg.model, state.ema_state if ema else state.model_state)
    vae = text = None
    if cfg.autoencoder is not None:
        ae = load_checkpoint(cfg.autoencoder, trainer_state=False)
        ae_weights = ae.ema_state if ema and ae.ema_state is not None else ae.model_state
        vae = vae_to_ldm(AutoencoderRunConfig.from_dict(ae.config).autoencoder, _unprefixed(ae_weights))
    if cfg.text is not None:
        text = load_file(str(Path(cfg.text.encoder) / TRANSFORMERS_WEIGHTS))
    out = join_single_file(unet, vae, text, cfg.diffusion.schedule, cfg.diffusion.timesteps)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    save_file(cast(out, half), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, file)
    return file
