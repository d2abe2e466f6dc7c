"""Orchestration only: build, train, load, generate and evaluate models. No maths here."""

from latentdiff.pipelines.conditions import Conditioning
from latentdiff.pipelines.diffusion import (build_backbone, class_grid_labels, fit_model_grid, generate,
                                            load_denoiser, load_model, make_denoiser, text_encoder_for, train_run)
from latentdiff.pipelines.autoencoder import (autoencoder_for, evaluate_autoencoder, load_autoencoder,
                                              measure_latent_scale, train_autoencoder_run)
from latentdiff.pipelines.controlnet import (load_controlled, load_controlnet, prepare_control, read_control_image,
                                             train_controlnet_run)
from latentdiff.pipelines.evaluate import evaluate_adherence, evaluate_control, evaluate_images, evaluate_model
from latentdiff.pipelines.likelihood import evaluate_nll

__all__ = ["Conditioning", "build_backbone", "class_grid_labels", "fit_model_grid", "generate", "load_denoiser", "load_model", "make_denoiser", "train_run",
           "text_encoder_for", "evaluate_adherence",
           "evaluate_images", "evaluate_model", "autoencoder_for", "evaluate_autoencoder", "load_autoencoder",
           "measure_latent_scale", "train_autoencoder_run", "load_controlled", "load_controlnet", "prepare_control",
           "read_control_image", "train_controlnet_run", "evaluate_control", "evaluate_nll"]
