"""The tiny profiles' VAE: a small ``AutoencoderKLWan`` from a config with seeded random weights.

One config per VAE (``profile.vae``), not per family: every family that encodes with the Wan 2.1
VAE (Wan 2.1 T2V/I2V, Wan 2.2 A14B) gets the same tiny VAE, so the same weights, the same
fingerprint and the same latent keys, exactly as the real models share one VAE.

- ``wan2.1``: 8x spatial, 4x temporal compression, causal 3D convolutions, 16 latent channels;
- ``wan2.2`` (TI2V-5B): 16x spatial (2x2 pixel patchify + 8x convolutions; 12 = 3x2x2 input
  channels), residual blocks, 48 latent channels, its own ``latents_mean``/``latents_std``
  (the real values of ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``' ``vae/config.json``).

``pipeline.models.vae`` loads it for a tiny profile and treats it as real weights from then on.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from pipeline.core.fingerprint import state_dict_fingerprint
from pipeline.models.profiles import Profile

TINY_SEED = 0

# Wan 2.2 VAE latent statistics (the real model's config; the tiny one normalises with them too).
# A real VAE brings its own in its config.json: only the tiny config needs them here.
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


def tiny_vae_fingerprint(profile: Profile) -> str:
    """sha256 of the tiny VAE's state dict bytes, its config and seed."""
    return state_dict_fingerprint(build_tiny_vae(profile), {"seed": TINY_SEED, **tiny_vae_config(profile)})
