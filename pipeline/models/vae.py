"""The Wan VAE (``AutoencoderKLWan``): loading, its fingerprint, and latent normalisation.

Real profiles load the ``vae`` subfolder of the profile's diffusers repo (or local folder).
Tiny profiles build a small ``AutoencoderKLWan`` from a config with seeded random weights,
one config per VAE (``profile.vae``), not per family: every family that encodes with the
Wan 2.1 VAE (Wan 2.1 T2V/I2V, Wan 2.2 A14B) gets the same tiny VAE, so the same weights, the
same fingerprint and the same latent keys, exactly as the real models share one VAE.

- ``wan2.1``: 8x spatial, 4x temporal compression, causal 3D convolutions, 16 latent channels;
- ``wan2.2`` (TI2V-5B): 16x spatial (2x2 pixel patchify + 8x convolutions; 12 = 3x2x2 input
  channels), residual blocks, 48 latent channels, its own ``latents_mean``/``latents_std``
  (the real values of ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``' ``vae/config.json``).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from pipeline.fingerprint import FileHashMemo, folder_fingerprint, state_dict_fingerprint
from pipeline.models.locate import model_folder
from pipeline.profiles import Profile

TINY_SEED = 0

# Wan 2.2 VAE latent statistics (real model's config; the tiny one normalises with them too).
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]

# Tiny configs per VAE (``profile.vae``). The real ones differ in width only: Wan 2.1 base_dim 96,
# num_res_blocks 2; Wan 2.2 base_dim 160, decoder_base_dim 256, num_res_blocks 2.
TINY_VAE_CONFIGS: dict[str, dict] = {
    "wan2.1": {
        "base_dim": 8,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    },
    "wan2.2": {
        "base_dim": 8,
        "decoder_base_dim": 12,
        "z_dim": 48,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "is_residual": True,
        "in_channels": 12,
        "out_channels": 12,
        "patch_size": 2,
        "scale_factor_temporal": 4,
        "scale_factor_spatial": 16,
        "latents_mean": WAN22_LATENTS_MEAN,
        "latents_std": WAN22_LATENTS_STD,
    },
}


def tiny_vae_config(profile: Profile) -> dict:
    try:
        cfg = dict(TINY_VAE_CONFIGS[profile.vae])
    except KeyError:
        raise ValueError(f"no tiny VAE config for VAE '{profile.vae}' (profile {profile.name})") from None
    if cfg["z_dim"] != profile.latent_channels:
        raise ValueError(f"tiny VAE z_dim {cfg['z_dim']} != profile latent_channels {profile.latent_channels}")
    if cfg.get("scale_factor_spatial", 8) != profile.vae_scale_spatial:
        raise ValueError(f"tiny VAE spatial scale {cfg.get('scale_factor_spatial', 8)} != profile {profile.vae_scale_spatial}")
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
