"""A Stable-Diffusion-layout pipeline written by diffusers, converted and sampled by latentdiff:
the same images as diffusers' StableDiffusionPipeline with the same noise, scheduler and guidance;
and back out to a diffusers folder and an original single file that diffusers loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).parent))
from sd_fixture import tiny_sd_pipeline  # noqa: E402

from latentdiff.interop.convert import export_diffusers, export_single_file, import_diffusers, import_single_file  # noqa: E402
from latentdiff.io.checkpoint import load_checkpoint  # noqa: E402
from latentdiff.pipelines import Conditioning, generate, load_model, text_encoder_for  # noqa: E402
from latentdiff.sampling import prior_noise  # noqa: E402
from latentdiff.schedules import sigma_grid  # noqa: E402

PROMPT, NEGATIVE, STEPS, GUIDANCE, N = "a red circle left of the blue square", "blurry dark", 4, 7.5, 2
TOLERANCE = 1e-4  # max |difference| of images in [0, 1]; float32 arithmetic in two orders


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted(sd_folder, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("ld") / "tiny-sd-latentdiff"
    import_diffusers(sd_folder, dst)
    return dst


def ours(ckpt: Path, seed: int = 0) -> torch.Tensor:
    """latentdiff's Euler on the trailing grid, CFG against the negative prompt -> (N, 3, 16, 16) in [0, 1]."""
    denoiser, autoencoder, cfg = load_model(ckpt)
    c = Conditioning(prompts=[PROMPT] * N, negative_prompt=NEGATIVE, text_encoder=text_encoder_for(cfg))
    images = generate(denoiser, N, c, sampler="euler", steps=STEPS, spacing="trailing", guidance=GUIDANCE, seed=seed,
                      autoencoder=autoencoder)
    return (images + 1) / 2


def theirs(pipe, ckpt: Path, seed: int = 0) -> torch.Tensor:
    """diffusers' pipeline from the same x_T (its latents are x_T / init_noise_sigma: it scales them back)."""
    denoiser, _, _ = load_model(ckpt)
    sigmas = sigma_grid(denoiser.schedule, STEPS, "trailing")
    x_T = prior_noise((N, 4, 8, 8), float(sigmas[0]), torch.Generator().manual_seed(seed))
    pipe.scheduler.set_timesteps(STEPS)
    latents = x_T / pipe.scheduler.init_noise_sigma
    out = pipe([PROMPT] * N, negative_prompt=[NEGATIVE] * N, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               latents=latents, output_type="pt")
    return out.images


def test_converted_pipeline_samples_what_diffusers_samples(sd_folder, converted):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)
    ours_images, their_images = ours(converted), theirs(pipe, converted)
    assert ours_images.shape == their_images.shape == (N, 3, 16, 16)
    assert their_images.std() > 0.05  # a real image, not a constant
    assert (ours_images - their_images).abs().max() < TOLERANCE


def test_converted_checkpoint_samples_from_the_cli(converted, tmp_path):
    out = tmp_path / "grid.png"
    subprocess.run([sys.executable, "-m", "latentdiff.cli.main", "sample", str(converted), "--prompt", PROMPT,
                    "--negative-prompt", NEGATIVE, "--n", "2", "--sampler", "euler", "--steps", "3", "--spacing",
                    "trailing", "--guidance", "7.5", "--out", str(out)], check=True, capture_output=True)
    assert out.stat().st_size > 0


def test_export_to_diffusers_loads_in_diffusers_with_equal_images(sd_folder, converted, tmp_path):
    from diffusers import StableDiffusionPipeline

    exported = export_diffusers(converted, tmp_path / "exported")
    pipe = StableDiffusionPipeline.from_pretrained(exported, safety_checker=None, requires_safety_checker=False)
    original = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = original.scheduler  # the sampler is the caller's choice; the models are what is compared
    assert (theirs(pipe, converted) - theirs(original, converted)).abs().max() < 1e-6


def _tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v for k, v in load_checkpoint(ckpt, trainer_state=False).model_state.items()}
    out |= {f"vae.{k}": v for k, v in load_checkpoint(ckpt / "autoencoder", trainer_state=False).model_state.items()}
    from safetensors.torch import load_file

    out |= {f"text.{k}": v for k, v in load_file(str(ckpt / "text_encoder" / "model.safetensors")).items()}
    return out


def test_single_file_round_trip_is_the_identity_and_diffusers_loads_it(sd_folder, converted, tmp_path):
    from diffusers import StableDiffusionPipeline

    file = export_single_file(converted, tmp_path / "tiny-sd.safetensors")
    again = tmp_path / "again"
    import_single_file(file, again, config=str(sd_folder))
    first, second = _tensors(converted), _tensors(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    pipe = StableDiffusionPipeline.from_single_file(str(file), config=str(sd_folder), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    original = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = original.scheduler
    assert (theirs(pipe, converted) - theirs(original, converted)).abs().max() < 1e-6


def test_single_file_without_a_text_encoder_folder_says_which_to_give(converted, tmp_path):
    file = export_single_file(converted, tmp_path / "tiny-sd.safetensors")
    with pytest.raises(FileNotFoundError, match="--config DIR"):
        import_single_file(file, tmp_path / "again")


def test_a_key_of_no_known_part_is_named(converted, tmp_path):
    from safetensors.torch import load_file, save_file

    from latentdiff.interop.keys import LayoutError

    file = export_single_file(converted, tmp_path / "tiny-sd.safetensors")
    state = load_file(str(file))
    state["mystery.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LayoutError, match="mystery.weight"):
        import_single_file(tmp_path / "bad.safetensors", tmp_path / "bad")


def test_text_encoder_by_path_in_the_diffusers_layout_encodes_as_stable_diffusion(sd_folder):
    from diffusers import StableDiffusionPipeline

    from latentdiff.conditioning import TextEncoder

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, requires_safety_checker=False)
    encoder = TextEncoder(sd_folder / "text_encoder", 77, attend_padding=True)  # tokenizer: the sibling folder
    tokens, _, mask = encoder.encode([PROMPT, ""])
    theirs, _ = pipe.encode_prompt([PROMPT, ""], "cpu", 1, False)
    assert tokens.shape == theirs.shape == (2, 77, 32) and bool(mask.all())
    assert torch.allclose(tokens, theirs, atol=1e-6)
