"""The Wan VAE (``AutoencoderKLWan``): loading, its fingerprint, and latent normalisation.

Real profiles load the ``vae`` subfolder of the profile's diffusers repo (or local folder).
Tiny profiles build a small ``AutoencoderKLWan`` with seeded random weights, one per VAE
(``profile.vae``): see ``pipeline.models.tiny.vae``. Once built, it takes the same checks,
casts and normalisation as real weights.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from pipeline.core.fingerprint import FileHashMemo, folder_fingerprint
from pipeline.models.locate import model_folder
from pipeline.models.profiles import Profile
from pipeline.models.tiny.vae import build_tiny_vae, tiny_vae_fingerprint


def load_vae(profile: Profile, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> AutoencoderKLWan:
    """The profile's VAE in eval mode, frozen, on ``device`` in ``dtype``."""
    if profile.is_tiny:
        vae = build_tiny_vae(profile)
    else:
        vae = AutoencoderKLWan.from_pretrained(str(model_folder(profile, "vae")), torch_dtype=dtype)
    if vae.config.z_dim != profile.latent_channels:
        raise ValueError(f"{profile.name}: VAE has z_dim {vae.config.z_dim}, profile says {profile.latent_channels}")
    if (vae.config.scale_factor_spatial or 8) != profile.vae_scale_spatial:
        raise ValueError(
            f"{profile.name}: VAE compresses {vae.config.scale_factor_spatial}x spatially, profile says {profile.vae_scale_spatial}x"
        )
    vae.requires_grad_(False)
    vae = vae.to(device) if vae.dtype == dtype else vae.to(device=device, dtype=dtype)
    return vae.eval()


def vae_fingerprint(profile: Profile, memo: FileHashMemo | None = None) -> str:
    """sha256 of the VAE weights (memoized file hashes for real weights; state dict bytes for tiny)."""
    if profile.is_tiny:
        return tiny_vae_fingerprint(profile)
    return folder_fingerprint(model_folder(profile, "vae"), memo)


def vae_id(profile: Profile, fingerprint: str) -> str:
    """What the ``vae`` column and entry metadata say: where the weights came from + fingerprint."""
    return f"{profile.repo or 'tiny'}/vae@{fingerprint[:16]}"


def _stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=like.device).view(1, c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=like.device).view(1, c, 1, 1, 1)
    return mean, std


def normalize_latents(mu: torch.Tensor, vae: AutoencoderKLWan) -> torch.Tensor:
    """(mu - latents_mean) / latents_std per channel, in float32: what ``WanPipeline`` denoises."""
    mean, std = _stats(vae, mu)
    return (mu.float() - mean) / std


def denormalize_latents(latents: torch.Tensor, vae: AutoencoderKLWan) -> torch.Tensor:
    """The inverse of :func:`normalize_latents` (what ``WanPipeline`` does before decoding): what ``vae.decode`` takes."""
    mean, std = _stats(vae, latents)
    return latents.float() * std + mean


@torch.no_grad()
def encode_mean(vae: AutoencoderKLWan, pixels: torch.Tensor) -> torch.Tensor:
    """Posterior mean of ``pixels`` [B, 3, F, H, W] in [-1, 1] -> normalised latents [B, C, f, h, w] (float32)."""
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return normalize_latents(dist.mean, vae)
