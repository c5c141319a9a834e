"""Going from a sample to pixels and back from the cache, to check what the encode stage stored."""

import os

import torch

from pipeline.encode.buckets import Resize
from pipeline.encode.pixels import load_frames, to_pixels
from pipeline.models.vae import denormalize_latents  # noqa: F401  (re-exported for the tests)


def load_sample(path: str | os.PathLike, kind: str, indices: list[int], r: Resize, size: tuple[int, int],
                interpolation: str = "area") -> torch.Tensor:
    """Pixels [3, F, H, W] of one sample, as the encode stage gives them to the VAE."""
    return to_pixels(load_frames(path, kind, indices, r, size, interpolation))
