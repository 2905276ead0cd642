"""Opening image files the way users collect them: any mode, any shape, some broken.

:func:`check_image` is the cheap up-front check (the header is parsed, nothing is
decoded); :func:`open_rgb` decodes and converts to 8-bit RGB, honouring EXIF rotation,
scaling 16-bit and float images to 8 bits and laying transparency over white.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlplug.data.sources import DecodeError

# What decoding a file can raise: PIL's own errors, and numpy's for odd pixel data.
DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)


def check_image(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when its header reads as one."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return f"too large to decode safely (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels)"
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"unreadable ({_reason(exc)})"
    if width < 1 or height < 1:
        return f"has no pixels ({width}x{height})"
    return None


def open_rgb(path: Path | IO[bytes]) -> Image.Image:
    """Decode ``path`` (a file, or an open binary one) fully and return it as an upright
    8-bit RGB image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    EXIF orientation is applied; 16-bit and 32-bit integer images are scaled from their
    range to 8 bits (not clipped); float images in [0, 1] are scaled by 255; transparency
    (RGBA, LA, palettes with a transparent colour) is composited over white.
    """
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = Image.fromarray(_to_8bit(np.asarray(image), image.mode == "F"), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(pixels: np.ndarray, floating: bool) -> np.ndarray:
    """Scale 16-bit pixels (or wider ones, by their maximum) or floats in [0, 1] to uint8."""
    pixels = pixels.astype(np.float64)
    top = pixels.max(initial=0)
    if floating and top <= 1.0:
        scale = 255.0
    elif top <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    return np.clip(np.round(pixels * scale), 0, 255).astype(np.uint8)


def cannot_decode(where: str, exc: BaseException) -> DecodeError:
    """The error for the image at ``where`` whose decoding raised ``exc``."""
    return DecodeError(where, f"cannot be decoded ({_reason(exc)})")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:120] or type(exc).__name__
