"""Opening a photo as the upright 8-bit RGB image every stage sees."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# Modes whose samples are wider than 8 bits: scaled to 0..255 by their range, never clipped
# (a 16-bit grey PNG converted with Pillow's convert("RGB") would come out all white).
HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def open_image_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` turned upright by its EXIF orientation, as 8-bit RGB."""
    from PIL import Image, ImageOps  # here, not at import: only photos need Pillow (a tenth of a second)

    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im)
        if upright.mode in HIGH_DEPTH:
            return Image.fromarray(to_8bit(np.asarray(upright), upright.mode)).convert("RGB")
        return upright.convert("RGB")


def to_8bit(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Samples of a high bit depth image scaled to uint8: 16-bit by 255/65535; 32-bit integers
    by their maximum when they exceed 16 bits; floats assumed in [0, 1]."""
    x = pixels.astype(np.float64)
    top = HIGH_DEPTH[mode]
    if mode == "I" and x.size and x.max() > 65535:
        top = float(x.max())
    return np.clip(np.rint(x * (255.0 / top)), 0, 255).astype(np.uint8)
