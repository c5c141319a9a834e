"""The Wan VAE (``AutoencoderKLWan``): loading, its fingerprint, and latent normalisation.

Real profiles load the ``vae`` subfolder of the profile's diffusers repo (or local folder).
The tiny profile builds a small ``AutoencoderKLWan`` from a config with seeded random
weights: same architecture (8x spatial, 4x temporal compression, causal 3D convolutions,
``z_dim`` = the profile's latent channels), a fraction of the width.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from pipeline.fingerprint import FileHashMemo, folder_fingerprint, state_dict_fingerprint
from pipeline.models.locate import model_folder
from pipeline.profiles import Profile

TINY_SEED = 0

# Tiny configs per family; a later family (e.g. Wan 2.2 TI2V: z_dim 48, is_residual, patch_size 2)
# adds its own entry here.
TINY_VAE_CONFIGS: dict[str, dict] = {
    "wan2.1-t2v": {
        "base_dim": 8,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    },
}


def tiny_vae_config(profile: Profile) -> dict:
    try:
        cfg = dict(TINY_VAE_CONFIGS[profile.family])
    except KeyError:
        raise ValueError(f"no tiny VAE config for family '{profile.family}'") from None
    if cfg["z_dim"] != profile.latent_channels:
        raise ValueError(f"tiny VAE z_dim {cfg['z_dim']} != profile latent_channels {profile.latent_channels}")
    return cfg


def build_tiny_vae(profile: Profile) -> AutoencoderKLWan:
    """Random weights from a fixed seed: identical in every process (so keys are stable)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return AutoencoderKLWan(**tiny_vae_config(profile))


def load_vae(profile: Profile, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> AutoencoderKLWan:
    """The profile's VAE in eval mode, frozen, on ``device`` in ``dtype``."""
    if profile.is_tiny:
        vae = build_tiny_vae(profile)
    else:
        vae = AutoencoderKLWan.from_pretrained(str(model_folder(profile, "vae")), torch_dtype=dtype)
    if vae.config.z_dim != profile.latent_channels:
        raise ValueError(f"{profile.name}: VAE has z_dim {vae.config.z_dim}, profile says {profile.latent_channels}")
    vae.requires_grad_(False)
    vae = vae.to(device) if vae.dtype == dtype else vae.to(device=device, dtype=dtype)
    return vae.eval()


def vae_fingerprint(profile: Profile, memo: FileHashMemo | None = None) -> str:
    """sha256 of the VAE weights (memoized file hashes for real weights; state dict bytes for tiny)."""
    if profile.is_tiny:
        return state_dict_fingerprint(build_tiny_vae(profile), {"seed": TINY_SEED, **tiny_vae_config(profile)})
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
    """The inverse of :func:`normalize_latents`: what ``vae.decode`` takes."""
    mean, std = _stats(vae, latents)
    return latents.float() * std + mean


@torch.no_grad()
def encode_mean(vae: AutoencoderKLWan, pixels: torch.Tensor) -> torch.Tensor:
    """Posterior mean of ``pixels`` [B, 3, F, H, W] in [-1, 1] -> normalised latents [B, C, f, h, w] (float32)."""
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return normalize_latents(dist.mean, vae)
