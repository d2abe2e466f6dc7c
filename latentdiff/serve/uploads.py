"""Uploaded files, decoded defensively: a size limit on the bytes, Pillow's decompression-bomb guard
on (its warning an error too), the pixel count checked before any pixel is decoded, and only the
image formats a browser sends (PNG, JPEG, WebP, BMP, GIF).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
import torch
from PIL import Image

from latentdiff.serve.schema import RequestError, ServeLimits

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,")


def guard_decompression_bombs(max_pixels: int) -> None:
    """Pillow's decompression-bomb limit at ``max_pixels`` for the whole process (``Image.open``
    warns above it and refuses above twice it; :func:`open_upload` refuses above it)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def decode_base64(text: str, field: str, limits: ServeLimits) -> bytes:
    """A base64 string (a ``data:...;base64,`` URL or bare) -> its bytes, within the upload limit."""
    text = _DATA_URL.sub("", text.strip(), count=1)
    if len(text) > limits.max_upload_bytes * 4 // 3 + 4:
        raise RequestError(413, f"the upload is over this server's limit of {limits.max_upload_mb:g} MB "
                           "(--max-upload-mb)", field)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, "not base64 (send the file's bytes base64-encoded, or a data: URL)", field) from None
    check_size(data, field, limits)
    return data


def check_size(data: bytes, field: str, limits: ServeLimits) -> None:
    """Refuse an upload of more than ``limits.max_upload_mb`` (413) or none at all (422)."""
    if len(data) > limits.max_upload_bytes:
        raise RequestError(413, f"the upload is {len(data) / 2**20:.1f} MB, over this server's limit of "
                           f"{limits.max_upload_mb:g} MB (--max-upload-mb)", field)
    if not data:
        raise RequestError(422, "the upload is empty", field)


def open_upload(data: bytes, field: str, limits: ServeLimits, formats: tuple[str, ...] = FORMATS) -> Image.Image:
    """Uploaded bytes -> a decoded 8-bit Pillow image (L, LA, RGB or RGBA, as ``io.images.open_image``
    gives). 422 for anything that is not an image of ``formats``; 413 for more than
    ``limits.max_pixels`` pixels (checked on the header, before decoding)."""
    from latentdiff.io.images import open_image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=list(formats)) as probe:
                width, height = probe.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise RequestError(413, f"the image has more than this server's limit of {limits.max_pixels} pixels "
                               "(--max-pixels)", field) from None
        except Exception:  # noqa: BLE001 - Pillow raises many types for bytes that are not an image
            raise RequestError(422, f"not an image ({', '.join(formats)} are read)", field) from None
        if width * height > limits.max_pixels:
            raise RequestError(413, f"the image is {width}x{height} = {width * height} pixels, over this server's "
                               f"limit of {limits.max_pixels} (--max-pixels)", field)
        try:
            return open_image(io.BytesIO(data))
        except (ValueError, OSError, Image.DecompressionBombWarning) as err:
            raise RequestError(422, f"the image cannot be decoded ({' '.join(str(err).split())[:200]})",
                               field) from None


def image_to_unit(image: Image.Image) -> torch.Tensor:
    """A Pillow image -> (1, C, H, W) float in [0, 1] with its own channels (as
    ``pipelines.controlnet.read_control_image`` reads a file)."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]


def image_to_signed(image: Image.Image, channels: int, size: int | None = None) -> torch.Tensor:
    """A Pillow image -> (1, channels, H, W) float in [-1, 1], converted to grey or RGB and resized
    (bicubic) to ``size`` where given (as ``io.images.load_image`` reads a file)."""
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8).copy()
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return (torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1)[None]
