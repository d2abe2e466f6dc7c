"""README.md's ```python blocks run as written (issue 25), so they cannot rot.

Every ```python block of README.md is executed, in file order, in one namespace (later blocks use
names from earlier ones, as a reader running them in one session would), with the working
directory a temporary folder. The run folders the snippets name are mapped to tiny checkpoints
made here by a substitution table (``PATHS``), the only change made to the text:

- ``demo_out/checkpoint``: the ``tiny`` preset (class-conditional Fashion-MNIST, 10 classes), trained 2 steps;
- ``runs/fmnist-vae/checkpoint``: the ``tiny-vae`` preset, trained 2 steps (its latent scale measured);
- ``runs/ldm/checkpoint``: a ``tiny-ldm`` U-Net over that VAE, saved untrained with ``save_checkpoint``
  (training it would first encode all 60,000 Fashion-MNIST images into the latent cache: ~30 s here;
  the snippet loads and samples it, which is what it shows);
- ``runs/shapes-t2i/checkpoint`` and ``runs/shapes-cn-edges/checkpoint``: ``tiny-t2i`` and
  ``tiny-controlnet`` over it, trained 2 steps; ``edges.png``: a drawn square outline.

The numbers in the snippets' comments are the full-size models' shapes; the tiny ones differ.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from latentdiff.cli.main import main
from latentdiff.io.checkpoint import save_checkpoint
from latentdiff.nn.unet import UNet
from latentdiff.presets import get_preset

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def _train(preset: str, out: Path, *overrides: str) -> Path:
    main(["train", "--preset", preset, "--out", str(out), "--set", "train.max_steps=2", "train.sample_every=100",
          *overrides])
    return out / "checkpoint"


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("readme")
    pixel = _train("tiny", root / "tiny")
    vae = _train("tiny-vae", root / "vae")
    ldm_cfg = get_preset("tiny-ldm").replace(autoencoder=str(vae))
    ldm = save_checkpoint(root / "ldm" / "checkpoint", ldm_cfg.to_dict(), UNet(ldm_cfg.model).state_dict())
    t2i = _train("tiny-t2i", root / "t2i")
    cn = _train("tiny-controlnet", root / "cn", f"base={t2i}")
    return {"demo_out/checkpoint": str(pixel), "runs/fmnist-vae/checkpoint": str(vae), "runs/ldm/checkpoint": str(ldm),
            "runs/shapes-t2i/checkpoint": str(t2i), "runs/shapes-cn-edges/checkpoint": str(cn)}


def test_readme_python_snippets_run(paths, tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4, "README's ```python blocks were not found"
    monkeypatch.chdir(tmp_path)
    picture = Image.new("L", (32, 32))
    ImageDraw.Draw(picture).rectangle([8, 8, 23, 23], outline=255)
    picture.save("edges.png")
    namespace: dict = {}
    checked = False
    for i, block in enumerate(blocks):
        for name, path in paths.items():
            block = block.replace(f'"{name}"', repr(path))
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 - name the block that failed
            raise AssertionError(f"README python block {i + 1} failed: {type(err).__name__}: {err}\n{block}") from err
        if "vae.encode(" in block:  # what the latent snippet promises
            z, x, images = namespace["z"], namespace["x"], namespace["images"]
            assert not z.requires_grad and not x.requires_grad  # the loaded autoencoder is frozen
            assert x.shape == images.shape and z.shape[0] == len(images) == 80
            checked = True
    assert checked and Path("grid.png").is_file()
    assert namespace["x0"].shape == (16, 1, 32, 32) and torch.isfinite(namespace["x0"]).all()


def test_every_snippet_path_is_mapped():
    """A new snippet naming another run folder must get a tiny checkpoint in ``paths`` above."""
    named = set(re.findall(r'"((?:runs|demo_out)/[^"]+)"', "\n".join(python_blocks(README.read_text()))))
    assert named <= {"demo_out/checkpoint", "runs/fmnist-vae/checkpoint", "runs/ldm/checkpoint",
                     "runs/shapes-t2i/checkpoint", "runs/shapes-cn-edges/checkpoint"}, named
