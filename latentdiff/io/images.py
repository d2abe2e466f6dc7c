"""Image conversion and PNG grids.

Images inside latentdiff are float tensors ``(N, C, H, W)`` in ``[-1, 1]``;
these helpers convert them to ``uint8`` pixels, tile them into a grid and
read/write PNG files with Pillow. Given ``parameters``, a saved PNG carries them
(:mod:`latentdiff.io.png_meta`: AUTOMATIC1111's ``parameters`` chunk and a ``latentdiff`` JSON chunk).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Grids whose tiles are smaller than this are upscaled (nearest) so that a
# 28x28 Fashion-MNIST sample is still visible in an image viewer.
_MIN_TILE = 64
_MAX_CAPTION_LINES = 4


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Convert images in ``[-1, 1]`` to pixels.

    Args:
        images: ``(N, C, H, W)`` or ``(C, H, W)`` float tensor in ``[-1, 1]``
            (values outside are clipped), ``C`` in ``{1, 3, 4}``.

    Returns:
        ``(N, H, W, C)`` ``uint8`` numpy array.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(-1, 1)
    x = ((x + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile images into one picture.

    Args:
        images: ``(N, C, H, W)`` in ``[-1, 1]``.
        nrow: images per row; default ``ceil(sqrt(N))``.
        padding: pixels of black border between and around tiles.

    Returns:
        ``(H_grid, W_grid, C)`` ``uint8`` numpy array with
        ``H_grid = rows * (H + padding) + padding``.
    """
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = nrow
    rows = math.ceil(n / ncol)
    grid = np.zeros((rows * (h + padding) + padding, ncol * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        grid[y : y + h, x : x + w] = pixels[i]
    return grid


def save_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    nrow: int | None = None,
    caption: str | None = None,
    parameters: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Save ``(N, C, H, W)`` images in ``[-1, 1]`` as a PNG grid.

    Tiles smaller than 64 px are upscaled by an integer factor (nearest
    neighbour). A ``caption``, if given, is drawn in a white band above the
    grid. ``parameters`` (the request's fields, see :func:`latentdiff.io.png_meta.parameters_text`)
    and ``config`` are written into the PNG's text chunks. Parent directories
    are created. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images, nrow=nrow)
    if grid.shape[2] == 1:
        grid = grid[:, :, 0]
    picture = Image.fromarray(grid)
    tile = min(images.shape[-2:])
    if tile < _MIN_TILE:
        scale = math.ceil(_MIN_TILE / tile)
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    if caption:
        picture = _add_caption(picture.convert("RGB"), caption)
    return _write_png(picture, path, parameters, config)


def save_image(image: torch.Tensor, path: str | os.PathLike, parameters: dict[str, Any] | None = None,
               config: dict[str, Any] | None = None) -> Path:
    """Save one (C, H, W) image in [-1, 1] as a PNG at its own size (grey for C = 1), with ``parameters``
    and ``config`` in its text chunks when given (as :func:`save_grid`); folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(image[None])[0]
    return _write_png(Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels), path, parameters, config)


def _write_png(picture: Image.Image, path: Path, parameters: dict[str, Any] | None,
               config: dict[str, Any] | None) -> Path:
    """``picture`` as a PNG at ``path``, with the png_meta text chunks when ``parameters`` are given."""
    if parameters is None:
        picture.save(path, format="PNG")
    else:
        from latentdiff.io.png_meta import png_bytes

        path.write_bytes(png_bytes(picture, parameters, config))
    return path


def save_prompt_rows(images: torch.Tensor, prompts: list[str], path: str | os.PathLike,
                     title: str | None = None, parameters: dict[str, Any] | None = None,
                     config: dict[str, Any] | None = None) -> Path:
    """A figure with one row per prompt: the prompt, then its samples. ``images`` (P * K, C, H, W)
    in [-1, 1], prompt-major (the K samples of prompt 0 first); ``parameters`` and ``config`` go into
    the PNG's text chunks (as :func:`save_grid`). Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = len(images) // len(prompts)
    fig, axes = plt.subplots(len(prompts), 1, figsize=(1.0 + 0.8 * per_row, 0.85 * len(prompts) + 0.4), squeeze=False)
    for i, (ax, prompt) in enumerate(zip(axes[:, 0], prompts)):
        grid = make_grid(images[i * per_row:(i + 1) * per_row], nrow=per_row)
        ax.imshow(grid[:, :, 0] if grid.shape[2] == 1 else grid, cmap="gray", interpolation="nearest")
        ax.set_title(prompt, fontsize=8, loc="left", pad=2, parse_math=False)  # a prompt's "$" is text
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if parameters is None:
        fig.savefig(path, dpi=110)
    else:  # matplotlib's own PNG metadata takes Latin-1 only: re-save the figure through png_meta
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=110, format="png")
        with Image.open(buffer) as picture:
            picture.load()
            _write_png(picture, path, parameters, config)
    plt.close(fig)
    return path


class TrajectoryStrip:
    """A sampler callback that keeps the x0 prediction of the first ``rows`` samples at every step.

    ``save(path)`` writes a grid with one row per sample and one column per step (noisiest left),
    captioned with the sigmas. Only the first batch a sampler sees is recorded.
    """

    def __init__(self, rows: int = 8):
        self.rows, self.sigmas, self.x0s = rows, [], []

    def __call__(self, i: int, sigma, x: torch.Tensor, x0: torch.Tensor) -> None:
        if i == len(self.x0s):
            self.sigmas.append(float(sigma))
            self.x0s.append(x0[: self.rows].detach().float().cpu())

    def save(self, path: str | os.PathLike) -> Path:
        if not self.x0s:
            raise ValueError("no steps were recorded")
        strip = torch.stack(self.x0s, 1).flatten(0, 1)  # (rows * steps, C, H, W), row-major per sample
        sigmas = ", ".join(f"{s:.3g}" for s in self.sigmas)
        return save_grid(strip, path, nrow=len(self.x0s), caption=f"x0 prediction at sigma = {sigmas}")


def _add_caption(picture: Image.Image, caption: str) -> Image.Image:
    """Return ``picture`` with ``caption`` written in a white band above it."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(picture)
    lines = _wrap(caption, probe, font, max(picture.width - 8, 32))
    if len(lines) > _MAX_CAPTION_LINES:  # a 10,000-character prompt must not make a picture of text
        lines = lines[:_MAX_CAPTION_LINES - 1] + [lines[_MAX_CAPTION_LINES - 1][:-3] + "..."]
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 2
    band = len(lines) * line_h + 6
    out = Image.new("RGB", (picture.width, picture.height + band), "white")
    out.paste(picture, (0, band))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * line_h), line, fill="black", font=font)
    return out


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> list[str]:
    """Greedy word wrap so each line fits into ``width`` pixels; a word wider than a line is split."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in _split_long(paragraph.split(), draw, font, width):
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
                if len(lines) > _MAX_CAPTION_LINES:
                    break
            else:
                line = trial
        lines.append(line)
        if len(lines) > _MAX_CAPTION_LINES:
            break
    return lines


def _split_long(words: list[str], draw: ImageDraw.ImageDraw, font, width: int):
    """``words`` (lazily) with each word wider than ``width`` pixels cut into pieces that fit."""
    for word in words:
        while len(word) > 1 and draw.textlength(word[:256], font=font) > width:
            cut = 1  # the longest prefix that fits, found on short prefixes only
            while cut < len(word) and draw.textlength(word[:cut + 1], font=font) <= width:
                cut += 1
            yield word[:cut]
            word = word[cut:]
        yield word


# Pillow's modes of more than 8 bits per sample, and the value that maps to white in each: 16-bit
# grey ("I;16*", and "I", which 16-bit PNGs and TIFFs also open as) and float ("F", taken as [0, 1]).
_WHITE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def open_image(path: str | os.PathLike, mode: str | None = None) -> Image.Image:
    """Decode an image file completely into an 8-bit Pillow image.

    Args:
        path: any format Pillow reads; the first frame of an animation.
        mode: ``"L"``, ``"LA"``, ``"RGB"``, ``"RGBA"`` (or any Pillow mode) to convert to; None keeps
            the file's own channels as one of L, LA, RGB, RGBA (palette -> RGB or RGBA, CMYK -> RGB).

    16-bit and 32-bit grey is scaled from its own range (65535 is white, not clipped at 255); a
    palette image with a transparent colour goes through RGBA.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: as the file system says.
        ValueError: naming the file, for anything that is not a decodable image: not an image at
            all, truncated or corrupt, or over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = _to_8bit(img)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            return img.convert(mode or _own_mode(img))
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image {path}: {err} (raise PIL.Image.MAX_IMAGE_PIXELS only if you "
                         f"trust the file)") from err
    except Image.UnidentifiedImageError as err:
        raise ValueError(f"cannot read image {path}: not an image file Pillow can read") from err
    except OSError as err:
        if err.errno is not None:  # the file system's own errors (missing, a directory, no permission)
            raise
        raise ValueError(f"cannot read image {path}: the file is truncated or corrupt ({err})") from err
    except Exception as err:  # noqa: BLE001 - decoders raise SyntaxError, struct.error, zlib.error, ...
        raise ValueError(f"cannot read image {path}: the file is corrupt ({type(err).__name__}: {err})") from err


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit/32-bit/float grey image as 8-bit grey, scaled by its white value; others unchanged."""
    white = _WHITE.get(img.mode)
    if white is None:
        return img
    values = np.asarray(img).astype(np.float64)
    pixels = np.clip(np.rint(values * (255.0 / white)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L")


def _own_mode(img: Image.Image) -> str:
    bands = img.getbands()
    alpha = "A" in bands or "a" in bands
    grey = img.mode in ("1", "L", "LA", "La")
    return ("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB")


def load_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None, channels: int = 3) -> torch.Tensor:
    """Read an image file (any mode Pillow reads: 16-bit grey, palette, CMYK, alpha; see :func:`open_image`).

    Args:
        path: any format Pillow reads.
        size: ``(H, W)`` or an int for a square; resized with bicubic
            filtering when given.
        channels: 1 (grayscale) or 3 (RGB); an alpha channel is dropped.

    Returns:
        ``(1, channels, H, W)`` float32 tensor in ``[-1, 1]``.

    Raises:
        ValueError: naming the file when it is not a readable image (see :func:`open_image`).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    img = open_image(path, "L" if channels == 1 else "RGB")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        if h < 1 or w < 1:
            raise ValueError(f"image size must be at least 1x1, got {h}x{w}")
        img = img.resize((w, h), Image.BICUBIC)
    pixels = np.asarray(img, dtype=np.uint8).copy()
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
    return x.unsqueeze(0)
