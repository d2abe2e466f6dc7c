"""Orchestration for autoencoders: train, measure the latent scale, load, evaluate. No maths here."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from latentdiff.accel import training_memory_format
from latentdiff.autoencoders import IdentityAutoencoder, LatentAutoencoder, build_autoencoder
from latentdiff.autoencoders.losses import AutoencoderTraining, psnr
from latentdiff.data import DataConfig, build_dataset, require_test_split, shapes
from latentdiff.data.resolve import resolve_data
from latentdiff.data.latent_cache import META_FILE, LatentDataset, write_latent_cache
from latentdiff.eval.fd import cache_dir, fd_with_floor, random_subset
from latentdiff.io.checkpoint import files_digest, load_checkpoint, save_checkpoint
from latentdiff.presets import AutoencoderRunConfig, RunConfig, is_autoencoder_config
from latentdiff.training.start import seeded_run
from latentdiff.training.trainer import Trainer

PREFIX = "autoencoder."  # the autoencoder's weights inside the AutoencoderTraining state dict


@torch.no_grad()
def _in_batches(fn, ae: LatentAutoencoder, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """fn applied to (N, C, H, W) images batch by batch on the autoencoder's device; results on CPU."""
    device = next(ae.parameters()).device
    return torch.cat([fn(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


def reconstruct(ae: LatentAutoencoder, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """decode(encode(x)) for (N, C, H, W) images, in batches, clamped to [-1, 1]."""
    return _in_batches(lambda x: ae.decode_raw(ae.encode_raw(x)), ae, images, batch_size).clamp(-1, 1)


def measure_latent_scale(ae: LatentAutoencoder, images: torch.Tensor, batch_size: int = 500) -> float:
    """1 / std of the unscaled latents E(x) over all elements of ``images`` (N, C, H, W) (LDM, section 4.3.2)."""
    return 1.0 / float(_in_batches(ae.encode_raw, ae, images, batch_size).float().std())


def autoencoder_trainer(cfg: AutoencoderRunConfig, out_dir: str | Path, cpu: bool | None = None) -> Trainer:
    """The Trainer of an autoencoder run: AutoencoderTraining on the run's images, reconstruction grids."""
    if cfg.autoencoder.image_size != cfg.data.image_size or cfg.autoencoder.in_channels != cfg.data.channels:
        raise ValueError(f"autoencoder expects {cfg.autoencoder.in_channels}x{cfg.autoencoder.image_size}^2 images, "
                         f"data gives {cfg.data.channels}x{cfg.data.image_size}^2")
    dataset = build_dataset(cfg.data, "train")
    module = AutoencoderTraining(cfg.autoencoder, cfg.loss).to(
        memory_format=training_memory_format(cfg.train.mixed_precision, cpu))
    shown = random_subset(build_dataset(cfg.data, "test"), 50, seed=1)

    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator):
        return model(batch["x"], generator)

    def sample_fn(ema_model: nn.Module, step: int) -> torch.Tensor:
        rec = reconstruct(ema_model.autoencoder, shown)
        return torch.stack([shown.view(5, 10, *shown.shape[1:]), rec.view(5, 10, *rec.shape[1:])], 1).flatten(0, 2)

    sample_fn.caption = "test images (odd rows) and EMA reconstructions (even rows)"
    return Trainer(module, loss_fn, dataset, cfg.train, out_dir, run_config=cfg.to_dict(), sample_fn=sample_fn,
                   cpu=cpu)


@seeded_run
def train_autoencoder_run(cfg: AutoencoderRunConfig, out_dir: str | Path, cpu: bool | None = None,
                          n_scale: int = 5000) -> dict:
    """Train into the run folder ``out_dir`` (resumes), then measure the latent scale factor on
    ``n_scale`` training images with the EMA weights and store it in the checkpoint's config.
    An image folder's config is checked against the folder first (``data.resolve.resolve_data``)."""
    cfg, _ = resolve_data(cfg)
    trainer = autoencoder_trainer(cfg, out_dir, cpu)
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        train = build_dataset(cfg.data, "train")
        images = random_subset(train, min(n_scale, len(train)), seed=0)
        summary["scale_factor"] = measure_latent_scale(trainer.ema.model.autoencoder, images)
        set_latent_scale(trainer.ckpt_dir, summary["scale_factor"])
    return summary


def set_latent_scale(ckpt: str | Path, scale: float) -> None:
    """Rewrite a checkpoint with ``autoencoder.scale_factor = scale`` in its config."""
    state = load_checkpoint(ckpt)
    config = dict(state.config)
    config["autoencoder"] = {**config["autoencoder"], "scale_factor": scale}
    save_checkpoint(ckpt, config, state.model_state, state.ema_state, state.trainer_state)


def load_autoencoder(ckpt: str | Path, use_ema: bool = True,
                     device: str | torch.device = "cpu") -> tuple[LatentAutoencoder, AutoencoderRunConfig]:
    """An autoencoder checkpoint directory -> (autoencoder in eval mode, frozen, its run config).

    Its parameters do not require grad, so ``encode``/``decode`` of images give plain tensors;
    gradients still flow to inputs that require them (latent-space losses through ``decode``)."""
    path = Path(ckpt)
    if not path.exists() and not path.with_name(path.name + ".old").exists():
        raise FileNotFoundError(f"autoencoder checkpoint {path} does not exist "
                                "(train one with `latentdiff train --preset fmnist-vae --out RUN`; it is RUN/checkpoint)")
    state = load_checkpoint(path, trainer_state=False)
    if not is_autoencoder_config(state.config):
        raise ValueError(f"{path} is not an autoencoder checkpoint (its config has no task='autoencoder')")
    cfg = AutoencoderRunConfig.from_dict(state.config)
    ae = build_autoencoder(cfg.autoencoder)
    weights = state.ema_state if use_ema and state.ema_state is not None else state.model_state
    ae.load_state_dict({k[len(PREFIX):]: v for k, v in weights.items() if k.startswith(PREFIX)})
    return ae.to(device).eval().requires_grad_(False), cfg


def autoencoder_for(cfg: RunConfig, device: str | torch.device = "cpu") -> nn.Module:
    """The autoencoder of a diffusion run (identity in pixel space), checked against the U-Net's input shape."""
    unet_shape = (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    if cfg.autoencoder is None:
        return IdentityAutoencoder(cfg.model.in_channels, cfg.model.image_size)
    ae, _ = load_autoencoder(cfg.autoencoder, device=device)
    if tuple(ae.latent_shape) != unet_shape:
        raise ValueError(f"latent shape mismatch: the autoencoder {cfg.autoencoder} gives latents "
                         f"{tuple(ae.latent_shape)} but the diffusion model takes {unet_shape}")
    return ae


def evaluate_autoencoder(ae: LatentAutoencoder, data: DataConfig, n_fd: int = 2000, seed: int = 0) -> dict:
    """PSNR on the whole test split, reconstruction FD-EffNet with its floor, and codebook use (VQ).

    Reconstruction FD is FD(recon(train subset), test subset) beside the floor FD(train subset, test
    subset): the same N real training images with and without the autoencoder in between. An image
    folder without train/ and test/ splits is refused (``data.require_test_split``).
    """
    require_test_split(data)
    test, train = build_dataset(data, "test"), build_dataset(data, "train")
    x = test.get_batch(torch.arange(len(test)))["x"]
    quantizer = getattr(ae, "quantizer", None)
    if quantizer is not None:
        quantizer.reset_usage()
    report = {"psnr": psnr(reconstruct(ae, x), x), "n_psnr": len(x)}
    if quantizer is not None:
        report["codes_used"] = quantizer.fraction_used()
        report["num_codes"] = quantizer.num_codes
    recon = reconstruct(ae, random_subset(train, n_fd, seed))
    fd = fd_with_floor(recon, test, train, n=n_fd, seed=seed)
    report.update(recon_fd_effnet=fd["fd_effnet"], fd_floor=fd["fd_floor"], n_fd=n_fd,
                  recon_fd_over_floor=fd["fd_effnet"] / fd["fd_floor"])
    return report


def _cache_key(ckpt: str | Path, data: DataConfig, split: str) -> str:
    """Changes whenever the autoencoder's weights or config, the data config or the split change."""
    h = files_digest(ckpt)
    h.update(data.to_json().encode() + split.encode() + str(shapes.VERSION if data.name == "shapes" else "").encode())
    return h.hexdigest()[:16]


def latent_dataset(cfg: RunConfig, ae: LatentAutoencoder, split: str = "train") -> LatentDataset:
    """The run's data encoded by its autoencoder, from the latent cache (built on first use)."""
    folder = cache_dir() / "latents" / _cache_key(cfg.autoencoder, cfg.data, split)
    if not (folder / META_FILE).is_file():
        write_latent_cache(ae.encode, build_dataset(cfg.data, split), folder, source=f"{cfg.autoencoder} {split}")
    return LatentDataset(folder)
