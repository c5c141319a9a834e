"""Going back from the cache to pixels, to check what the encode stage stored."""

import os

import torch

from pipeline.encode.buckets import Resize
from pipeline.encode.pixels import load_frames, to_pixels


def load_sample(path: str | os.PathLike, kind: str, indices: list[int], r: Resize, size: tuple[int, int],
                interpolation: str = "area") -> torch.Tensor:
    """Pixels [3, F, H, W] of one sample, as the encode stage gives them to the VAE."""
    return to_pixels(load_frames(path, kind, indices, r, size, interpolation))


def denormalize_latents(latents: torch.Tensor, vae) -> torch.Tensor:
    """The inverse of ``pipeline.models.vae.normalize_latents``: what ``vae.decode`` takes."""
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=latents.device).view(1, c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=latents.device).view(1, c, 1, 1, 1)
    return latents.float() * std + mean
