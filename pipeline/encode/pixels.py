"""Reading the frames of a sample: decode the chosen frames of the clip's source, upright
(``pipeline.core.media``), resize to cover the bucket, center-crop, and scale to [-1, 1] as the
Wan VAE expects."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from pipeline.core.media import read_frames, read_image
from pipeline.encode.buckets import Resize

INTERPOLATION = {"area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4, "bilinear": cv2.INTER_LINEAR}


def resize_crop(frame: np.ndarray, r: Resize, interpolation: str = "area") -> np.ndarray:
    h, w = frame.shape[:2]
    if (w, h) != (r.scaled_width, r.scaled_height):
        frame = cv2.resize(frame, (r.scaled_width, r.scaled_height), interpolation=INTERPOLATION[interpolation])
    return frame[r.crop_top : r.crop_top + r.height, r.crop_left : r.crop_left + r.width]


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """[F, H, W, 3] uint8 -> [3, F, H, W] float32 in [-1, 1], contiguous (a channels-last input
    would take a slow conv3d path)."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float().contiguous()
    return x / 127.5 - 1.0


def load_frames(
    path: str | os.PathLike, kind: str, indices: list[int], r: Resize, size: tuple[int, int], interpolation: str = "area"
) -> np.ndarray:
    """The frames ``indices`` of ``path`` (a video's frames, upright; a photo, upright) resized and
    cropped to the bucket, [F, H, W, 3] uint8. ``size`` is the (width, height) of the upright frames
    the bucket was chosen for; a file whose frames differ is an error (its table row is stale).
    NumPy/OpenCV only, so it can run in a reader thread beside the model."""
    frames = read_image(path)[None] if kind == "image" else read_frames(path, indices, upright=True)
    h, w = frames.shape[1:3]
    if (w, h) != tuple(size):
        raise ValueError(f"{path}: frames are {w}x{h}, the table says {size[0]}x{size[1]}")
    return np.stack([resize_crop(f, r, interpolation) for f in frames])

