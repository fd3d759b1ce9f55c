"""Opening any image file as 8-bit RGB with its intensities scaled correctly.

PIL's ``convert("RGB")`` clips 16-bit and float pixels to 0..255, which turns a 16-bit PNG or a
[0, 1] float TIFF almost uniformly white or black; such images are rescaled here instead.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from ..errors import ClipimoError

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


_ROWS = 512  # rows converted at a time: the temporaries stay a few MB whatever the image size


def load_rgb(path: str | os.PathLike, data: bytes | None = None) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image: 16-bit integer pixels are divided by 257
    (65535 -> 255), float pixels in [0, 1] multiplied by 255; other float ranges are refused. Wide
    pixels are rescaled in integer (or float32) blocks of rows straight into the 8-bit result, never
    through a float64 copy of the whole image. ``data``, the file's bytes when the caller has read
    them already, is decoded instead of reading the file again (errors still name ``path``)."""
    with Image.open(path if data is None else io.BytesIO(data)) as im:
        im.load()
        if im.mode not in (*_SIXTEEN_BIT, "I", "F"):
            return im.convert("RGB")
        pixels = np.asarray(im)
        mode, fmt = im.mode, im.format
    lo, hi = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if mode == "F":
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ClipimoError(f"{path}: float image holds NaN or infinite pixels")
        if lo < 0 or hi > 1:
            raise ClipimoError(f"{path}: float image with pixel values in [{lo:.4g}, {hi:.4g}]; expected [0, 1] "
                               "(convert it to 8-bit or rescale it to [0, 1])")

        def to8(block: np.ndarray) -> np.ndarray:
            wide = block.astype(np.float32)
            wide *= np.float32(255.0)
            return np.rint(wide, out=wide)
    elif mode in _SIXTEEN_BIT or fmt == "PNG" or hi > 255:
        if lo < 0 or hi > 65535:
            raise ClipimoError(f"{path}: integer image with pixel values in [{lo:.0f}, {hi:.0f}]; "
                               "expected 8-bit (0..255) or 16-bit (0..65535) values")

        def to8(block: np.ndarray) -> np.ndarray:
            wide = block.astype(np.uint32)
            wide += 128
            wide //= 257  # round(x * 255 / 65535): 257 is odd, so there are no ties
            return wide
    else:
        def to8(block: np.ndarray) -> np.ndarray:
            return block
    gray = np.empty(pixels.shape, dtype=np.uint8)
    for start in range(0, pixels.shape[0], _ROWS):
        gray[start:start + _ROWS] = to8(pixels[start:start + _ROWS])
    return Image.fromarray(gray, "L").convert("RGB")
