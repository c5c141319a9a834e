"""The Wan denoising transformer (``WanTransformer3DModel``): loading real weights or building a
model of a given size with seeded random weights.

Real profiles load the ``transformer`` subfolder of the profile's diffusers repo (or local
folder). The tiny profile builds a 2-layer model from a config (same architecture: 3D patch
embedding, RoPE, self- and cross-attention, FFN; ``in_channels`` = the profile's latent
channels, ``text_dim`` = its text encoder width) with seeded random weights, so it is the same
model in every process. ``WAN21_SIZES`` holds the real shapes, so the benchmark can build a
random-weight model at 1.3B or 14B size without downloading anything.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from pipeline.models.locate import model_folder
from pipeline.profiles import Profile

TINY_SEED = 0

# Shared by every Wan 2.1 T2V transformer (diffusers config keys).
WAN21_COMMON = {
    "patch_size": (1, 2, 2),
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

# Real sizes (Wan 2.1 T2V configs), for random-weight benchmarks and estimates.
WAN21_SIZES: dict[str, dict] = {
    "1.3b": {"num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30},
    "14b": {"num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824, "num_layers": 40},
    "tiny": {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "num_layers": 2},
}

# Tiny configs per family; a later family (I2V: in_channels 36 + image_dim; TI2V-5B: 48 channels)
# adds its own entry.
TINY_TRANSFORMER_FAMILIES = {"wan2.1-t2v"}


def transformer_config(size: str, latent_channels: int = 16, text_dim: int = 4096) -> dict:
    """A ``WanTransformer3DModel`` config of the given size (``tiny``, ``1.3b``, ``14b``)."""
    try:
        shape = WAN21_SIZES[size]
    except KeyError:
        raise ValueError(f"unknown transformer size '{size}'; choose one of {sorted(WAN21_SIZES)}") from None
    return {
        **WAN21_COMMON,
        **shape,
        "in_channels": latent_channels,
        "out_channels": latent_channels,
        "text_dim": text_dim,
    }


def tiny_transformer_config(profile: Profile) -> dict:
    if profile.family not in TINY_TRANSFORMER_FAMILIES:
        raise ValueError(f"no tiny transformer config for family '{profile.family}'")
    return transformer_config("tiny", profile.latent_channels, profile.text_dim)


def build_transformer(config: dict, seed: int = TINY_SEED, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> WanTransformer3DModel:
    """A model with seeded random weights (built in float32 on the CPU, then cast and moved; the
    modules diffusers keeps in float32 stay float32), so the same seed gives the same weights
    everywhere. At real sizes on a GPU use ``build_on_device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(**config)
    torch.nn.Module.to(model, device=device, dtype=dtype)  # ModelMixin.to warns about the float32 modules
    if dtype != torch.float32:  # as from_pretrained(torch_dtype=...) does
        keep = set(model._keep_in_fp32_modules or [])
        for name, module in model.named_modules():
            if keep & set(name.split(".")):
                module.to(torch.float32)
    return model


def build_on_device(config: dict, dtype: torch.dtype, device: str | torch.device) -> WanTransformer3DModel:
    """Random weights created directly on ``device`` in ``dtype`` (fast, for benchmarks at real size)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)


def load_transformer(profile: Profile, dtype: torch.dtype = torch.bfloat16,
                     device: str | torch.device = "cpu") -> WanTransformer3DModel:
    """The profile's transformer, frozen, in eval mode (as ``from_pretrained`` returns it), in ``dtype`` on ``device``."""
    if profile.is_tiny:
        model = build_transformer(tiny_transformer_config(profile), TINY_SEED, dtype, device)
    else:
        folder = model_folder(profile, "transformer")
        model = WanTransformer3DModel.from_pretrained(str(folder), torch_dtype=dtype).to(device)
    cfg = model.config
    if cfg.in_channels != profile.latent_channels or cfg.text_dim != profile.text_dim:
        raise ValueError(
            f"{profile.name}: transformer takes {cfg.in_channels} latent channels / text width {cfg.text_dim}, "
            f"profile says {profile.latent_channels} / {profile.text_dim}"
        )
    model.requires_grad_(False)
    return model.eval()
