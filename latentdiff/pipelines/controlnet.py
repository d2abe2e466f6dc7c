"""ControlNet orchestration: control data, training over a frozen base, loading, control inputs. No maths here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentdiff.accel import training_memory_format
from latentdiff.data import DataConfig, build_dataset, shapes
from latentdiff.data.control import ControlConfig, ControlDataset, cached_control_maps
from latentdiff.io.checkpoint import load_checkpoint, read_config
from latentdiff.io.images import open_image
from latentdiff.nn.controlnet import ControlledUNet, ControlNet, ControlNetConfig, resize_control
from latentdiff.objectives.flow import diffusion_loss
from latentdiff.pipelines.autoencoder import autoencoder_for, latent_dataset
from latentdiff.pipelines.conditions import Conditioning
from latentdiff.pipelines.diffusion import generate, load_denoiser, make_denoiser, samples_in_bf16, text_conditioned
from latentdiff.presets import ControlNetRunConfig, is_controlnet_config
from latentdiff.training.start import seeded_run
from latentdiff.training.trainer import Trainer


def dataset_controls(data: DataConfig, control: ControlConfig, split: str):
    """(pixel dataset, its control maps (N, 1, S, S) uint8), the maps from the disk cache."""
    dataset = build_dataset(data, split)
    key = data.to_json() + split + (f"shapes-v{shapes.VERSION}" if data.name == "shapes" else "")
    return dataset, cached_control_maps(dataset, control, key)


def control_images(maps: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C_c, S, S) control maps in [0, 1] -> (N, channels, S, S) pictures in [-1, 1] for figures."""
    pictures = maps.float()[:, :1] * 2 - 1
    return pictures.expand(-1, channels, -1, -1)


def grid_controls(data: DataConfig, control: ControlConfig, k: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The first k test items: (control maps (k, 1, S, S) float, captions, images (k, C, S, S))."""
    test, maps = dataset_controls(data, control, "test")
    batch = test.get_batch(torch.arange(k))
    captions = list(getattr(test, "captions", None) or [""] * len(test))[:k]
    return maps[:k].float(), captions, batch["x"]


@seeded_run
def train_controlnet_run(cfg: ControlNetRunConfig, out_dir: str | Path, cpu: bool | None = None) -> dict:
    """Train a ControlNet over the frozen base ``cfg.base`` into the run folder ``out_dir`` (resumes)."""
    device = torch.device("cpu" if cpu or (cpu is None and not torch.cuda.is_available()) else "cuda")
    base, base_cfg = load_denoiser(cfg.base, device=device)
    if base_cfg.transformer is not None:
        raise ValueError(f"{cfg.base} is a {base_cfg.transformer.kind} model; a ControlNet copies a U-Net's encoder "
                         "(Zhang et al. 2023), so its base must be a U-Net")
    layout = training_memory_format(cfg.train.mixed_precision, cpu)
    unet = base.net.requires_grad_(False).eval().to(memory_format=layout)
    cfg = cfg.replace(base_model=base_cfg.model)
    autoencoder = autoencoder_for(base_cfg, device)
    pixels, maps = dataset_controls(base_cfg.data, cfg.control, "train")
    dataset = latent_dataset(base_cfg, autoencoder) if base_cfg.autoencoder else pixels
    k = cfg.sample.n_grid
    grid_maps, grid_prompts, grid_real = grid_controls(base_cfg.data, cfg.control, k)
    if base_cfg.text is not None:
        dataset = text_conditioned(base_cfg, dataset, grid_prompts)
    dataset = ControlDataset(dataset, maps)
    controlnet = ControlNet.from_unet(unet, cfg.controlnet).to(memory_format=layout)
    diffusion = diffusion_loss(base_cfg.diffusion.replace(cond_drop_prob=cfg.prompt_drop_prob),
                               num_classes=base_cfg.model.num_classes)
    bf16 = cfg.train.mixed_precision == "bf16"

    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return diffusion(ControlledUNet(unet, [model]), batch, generator)

    def sample_fn(ema_model: nn.Module, step: int) -> torch.Tensor:
        s = cfg.sample
        denoiser = make_denoiser(ControlledUNet(unet, [ema_model]), base_cfg)
        images = generate(denoiser, k,
                          Conditioning(prompts=grid_prompts if base_cfg.text else None,
                                       text_encoder=getattr(dataset.base, "table", None), control=grid_maps),
                          sampler=s.sampler, steps=s.steps, spacing=s.spacing, guidance=s.guidance,
                          threshold=s.threshold, percentile=s.percentile, bf16=samples_in_bf16(base_cfg),
                          autoencoder=autoencoder)
        return torch.cat([control_images(grid_maps, images.shape[1]), images.cpu(), grid_real])

    sample_fn.caption = f"rows: {cfg.control.kind} control (held-out) | EMA sample | real image"
    sample_fn.nrow = k
    trainer = Trainer(controlnet, loss_fn, dataset, cfg.train, out_dir, run_config=cfg.to_dict(),
                      sample_fn=sample_fn, cpu=cpu)
    return trainer.train()


def load_controlnet(ckpt: str | Path, use_ema: bool = True,
                    device: str | torch.device = "cpu") -> tuple[ControlNet, ControlNetRunConfig]:
    """A ControlNet checkpoint directory -> (ControlNet in eval mode, its run config)."""
    state = load_checkpoint(ckpt, trainer_state=False)
    if not is_controlnet_config(state.config):
        raise ValueError(f"{ckpt} is not a ControlNet checkpoint (its config has no task='controlnet')")
    cfg = ControlNetRunConfig.from_dict(state.config)
    net = ControlNet(cfg.base_model, cfg.controlnet)
    net.load_state_dict(state.ema_state if use_ema and state.ema_state is not None else state.model_state)
    return net.to(device).eval(), cfg


def load_controlled(base_ckpt: str | Path | None, controlnet_ckpts: list[str | Path], guess_mode: bool = False,
                    use_ema: bool = True, device: str | torch.device = "cpu"):
    """A base checkpoint and ControlNet checkpoints -> (Denoiser over a ControlledUNet, autoencoder,
    base RunConfig, ControlNet run configs). ``base_ckpt`` None: the first ControlNet's base.
    Each ControlNet is checked against the base's U-Net config (ValueError naming both)."""
    if not controlnet_ckpts:
        raise ValueError("load_controlled needs at least one ControlNet checkpoint")
    controlnets, cn_cfgs = zip(*(load_controlnet(p, use_ema, device) for p in controlnet_ckpts))
    base, base_cfg = load_denoiser(base_ckpt or cn_cfgs[0].base, use_ema, device)
    for net, path in zip(controlnets, controlnet_ckpts):
        try:
            net.check_base(base_cfg.model)
        except ValueError as err:
            raise ValueError(f"ControlNet {path} does not fit base {base_ckpt or cn_cfgs[0].base}: {err}") from None
    net = ControlledUNet(base.net, list(controlnets), guess_mode=guess_mode)
    return make_denoiser(net, base_cfg), autoencoder_for(base_cfg, device), base_cfg, list(cn_cfgs)


def read_control_image(path: str | Path) -> torch.Tensor:
    """An image file -> (1, C, H, W) float in [0, 1] with the file's own channel count (1 to 4); a file that
    is not a readable image raises ValueError naming it (``io.images.open_image``)."""
    pixels = np.asarray(open_image(path), dtype=np.float32) / 255.0  # L, LA, RGB or RGBA; 16-bit scaled
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]


def prepare_control(control: torch.Tensor, cfg: ControlNetConfig, name: str = "control") -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, control_channels, control_size, control_size). A wrong size is
    resized (with a note on stderr); grey <-> RGB are converted (RGB to grey by the channel mean), an
    alpha channel is dropped; any other channel count is a ValueError."""
    c, want = control.shape[1], cfg.control_channels
    if c in (2, 4):  # grey + alpha, RGB + alpha
        control, c = control[:, :-1], c - 1
    if c != want:
        if (c, want) == (3, 1):
            control = control.mean(1, keepdim=True)
        elif (c, want) == (1, 3):
            control = control.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"{name} has {c} channels; this ControlNet reads {want} (grey 1 or RGB 3)")
    if control.shape[-2:] != (cfg.control_size, cfg.control_size):
        print(f"note: {name} is {tuple(control.shape[-2:])}; resized to {cfg.control_size}x{cfg.control_size}",
              file=sys.stderr)
        control = resize_control(control.float(), cfg.control_size)
    return control.float().clamp(0, 1)


def base_of(ckpt: str | Path) -> tuple[str | None, list[str]]:
    """``sample CKPT``: a base checkpoint -> (CKPT, []); a ControlNet checkpoint -> (None, [CKPT])."""
    config = read_config(ckpt)
    return (None, [str(ckpt)]) if is_controlnet_config(config) else (str(ckpt), [])


__all__ = ["base_of", "control_images", "dataset_controls", "grid_controls",
           "load_controlled", "load_controlnet", "prepare_control", "read_control_image", "train_controlnet_run"]
