"""Opening any image file as 8-bit RGB with its intensities scaled correctly.

PIL's ``convert("RGB")`` clips 16-bit and float pixels to 0..255, which turns a 16-bit PNG or a
[0, 1] float TIFF almost uniformly white or black; such images are rescaled here instead.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..errors import ClipimoError

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image: 16-bit integer pixels are divided by 257
    (65535 -> 255), float pixels in [0, 1] multiplied by 255; other float ranges are refused."""
    with Image.open(path) as im:
        im.load()
        if im.mode not in (*_SIXTEEN_BIT, "I", "F"):
            return im.convert("RGB")
        pixels = np.asarray(im, dtype=np.float64)
        mode, fmt = im.mode, im.format
    if mode == "F":
        if not np.isfinite(pixels).all():
            raise ClipimoError(f"{path}: float image holds NaN or infinite pixels")
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < 0 or hi > 1:
            raise ClipimoError(f"{path}: float image with pixel values in [{lo:.4g}, {hi:.4g}]; expected [0, 1] "
                               "(convert it to 8-bit or rescale it to [0, 1])")
        scale = 255.0
    elif mode in _SIXTEEN_BIT or fmt == "PNG" or pixels.max() > 255:
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ClipimoError(f"{path}: integer image with pixel values in [{pixels.min():.0f}, {pixels.max():.0f}]; "
                               "expected 8-bit (0..255) or 16-bit (0..65535) values")
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    gray = np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")
