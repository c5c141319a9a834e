"""Running diffusers' ``WanImageToVideoPipeline`` for sample videos without its frozen encoders.

The pipeline turns the image into conditioning with the VAE (``prepare_latents``: the image, then
zeros, encoded and normalised; TI2V: the image alone) and, for Wan 2.1 I2V, with CLIP
(``encode_image``). The encode stage computed exactly those tensors for ``train.samples``' images
(``pipeline.encode.sample_images``), so here they are replayed:

- ``ReplayVae`` stands in for the VAE: ``encode`` returns the cached latents, already normalised, and
  its config's ``latents_mean`` 0 / ``latents_std`` 1 make the pipeline's own normalisation the
  identity. It checks that the pixels it is handed have the shape the entry was made for;
- ``CachedImageToVideoPipeline.encode_image`` returns the cached CLIP embedding.

Everything else (the frame mask, timesteps, guidance, the expert switch of Wan 2.2 A14B, the
scheduler) is the pipeline's own code. The ``image`` argument is a placeholder of the sample's
size: the pixels it would carry are already in the cached tensors.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers import WanImageToVideoPipeline


class ReplayVae(torch.nn.Module):
    """The VAE as ``WanImageToVideoPipeline.prepare_latents`` uses it, returning cached latents."""

    def __init__(self, z_dim: int, scale_spatial: int, scale_temporal: int, device: torch.device):
        super().__init__()
        self.config = SimpleNamespace(z_dim=z_dim, latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
                                      scale_factor_spatial=scale_spatial, scale_factor_temporal=scale_temporal)
        self._device = torch.device(device)
        self.latents: torch.Tensor | None = None  # [C, F, h, w], normalised (a cache entry)
        self.pixel_shape: tuple[int, int, int] | None = None  # (frames, height, width) the entry was encoded from

    @property
    def device(self) -> torch.device:  # the pipeline's execution device is its first module's
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def replay(self, latents: torch.Tensor, pixel_shape: tuple[int, int, int]) -> None:
        self.latents, self.pixel_shape = latents, tuple(pixel_shape)  # type: ignore[assignment]

    def encode(self, video: torch.Tensor) -> SimpleNamespace:
        if self.latents is None:
            raise RuntimeError("ReplayVae.encode: no cached latents to replay")
        got = tuple(video.shape[2:])
        if got != self.pixel_shape:
            raise ValueError(f"the sample asks for conditioning of {got} (frames, height, width) pixels, the cached "
                             f"entry was made for {self.pixel_shape}; re-run the encode stage")
        return SimpleNamespace(latents=self.latents[None].to(video.device, torch.float32))

    def decode(self, *args, **kwargs):
        raise RuntimeError("sample latents are decoded by the render stage (output_type='latent' here)")


class CachedImageToVideoPipeline(WanImageToVideoPipeline):
    """``WanImageToVideoPipeline`` with a ``ReplayVae`` and the image's cached CLIP embedding."""

    cached_image_embeds: torch.Tensor | None = None  # [N, D] (Wan 2.1 I2V)

    def encode_image(self, image, device: torch.device | None = None):
        if self.cached_image_embeds is None:
            raise RuntimeError("this family needs the image's CLIP embedding (a sample_images.parquet image_key)")
        return self.cached_image_embeds[None].to(device or self._execution_device)


def placeholder_image(height: int, width: int) -> torch.Tensor:
    """What is handed to the pipeline as ``image``: [1, 3, H, W] in [0, 1] (the cache holds what it would encode to)."""
    return torch.zeros(1, 3, height, width)
