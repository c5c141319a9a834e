"""The Wan denoising transformer (``WanTransformer3DModel``): loading real weights, the family's
shapes, and models of a given size with random weights (for benchmarks and estimates).

Real profiles load the ``transformer`` subfolder of the profile's diffusers repo (or local
folder); the low-noise expert of Wan 2.2 A14B is ``transformer_2``. Tiny profiles build a
2-layer model of the family's shape with seeded random weights (``pipeline.models.tiny.transformer``),
checked and frozen like loaded weights.

``WAN21_SIZES`` holds the real shapes (and the tiny one), so benchmarks and estimates can build
a random-weight model at 1.3B, 5B or 14B size without downloading anything.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from pipeline.models.locate import model_folder
from pipeline.models.profiles import Profile

# Shared by every Wan 2.1 T2V transformer (diffusers config keys).
WAN21_COMMON = {
    "patch_size": (1, 2, 2),
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

# Real sizes (the Wan 2.1 T2V configs, and Wan 2.2 TI2V 5B), for random-weight benchmarks and estimates.
# Wan 2.1 I2V 14B and both Wan 2.2 A14B experts have the 14B shape.
WAN21_SIZES: dict[str, dict] = {
    "1.3b": {"num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30},
    "14b": {"num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824, "num_layers": 40},
    "5b": {"num_attention_heads": 24, "attention_head_dim": 128, "ffn_dim": 14336, "num_layers": 30},
    "tiny": {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "num_layers": 2},
}

def transformer_in_channels(profile: Profile) -> int:
    """Channels the family's transformer takes: the latents, plus for image-to-video the frame
    mask (``vae_scale_temporal`` channels) and the conditioning latents (16 + 4 + 16 = 36)."""
    if profile.task == "i2v":
        return 2 * profile.latent_channels + profile.vae_scale_temporal
    return profile.latent_channels


def transformer_config(size: str, latent_channels: int = 16, text_dim: int = 4096, in_channels: int | None = None,
                       image_dim: int | None = None) -> dict:
    """A ``WanTransformer3DModel`` config of the given size (``tiny``, ``1.3b``, ``5b``, ``14b``).

    ``in_channels`` defaults to ``latent_channels`` (text-to-video); ``image_dim`` (Wan 2.1 I2V:
    the CLIP width) adds the image embedder and the image key/value projections of every block's
    cross-attention (``added_kv_proj_dim`` = the model width, as in the Wan 2.1 I2V config)."""
    try:
        shape = WAN21_SIZES[size]
    except KeyError:
        raise ValueError(f"unknown transformer size '{size}'; choose one of {sorted(WAN21_SIZES)}") from None
    config = {
        **WAN21_COMMON,
        **shape,
        "in_channels": in_channels or latent_channels,
        "out_channels": latent_channels,
        "text_dim": text_dim,
    }
    if image_dim is not None:
        config["image_dim"] = image_dim
        config["added_kv_proj_dim"] = shape["num_attention_heads"] * shape["attention_head_dim"]
    return config


def _keep_fp32_modules(model: WanTransformer3DModel) -> None:
    """Put the modules diffusers keeps in float32 (time embedding, modulation tables, norms) back
    in float32, as ``from_pretrained(torch_dtype=...)`` leaves them."""
    keep = set(model._keep_in_fp32_modules or [])
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.to(torch.float32)


def build_on_device(config: dict, dtype: torch.dtype, device: str | torch.device) -> WanTransformer3DModel:
    """Random weights created directly on ``device`` in ``dtype`` (fast, for benchmarks at real size);
    the float32 modules stay float32, as in a loaded model."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    if dtype != torch.float32:
        _keep_fp32_modules(model)
    return model


def profile_transformer_config(profile: Profile, expert: str = "transformer") -> dict:
    """The config of the profile's transformer without loading weights: the tiny stand-in's, or
    the ``config.json`` of the weights' folder."""
    if profile.is_tiny:
        from pipeline.models.tiny.transformer import tiny_transformer_config  # here: it imports this module

        return tiny_transformer_config(profile)
    config = dict(WanTransformer3DModel.load_config(str(model_folder(profile, expert))))
    known = set(WanTransformer3DModel.extract_init_dict(config)[0])
    return {k: v for k, v in config.items() if k in known}


def build_on_meta(config: dict) -> WanTransformer3DModel:
    """The model's structure with no memory behind it (for counting parameters before loading)."""
    with torch.device("meta"):
        return WanTransformer3DModel(**config)


def load_transformer(profile: Profile, dtype: torch.dtype = torch.bfloat16,
                     device: str | torch.device = "cpu", expert: str = "transformer") -> WanTransformer3DModel:
    """The profile's transformer (``expert``: ``transformer``, or ``transformer_2`` for the low-noise
    expert of Wan 2.2 A14B), frozen, in eval mode (as ``from_pretrained`` returns it), in ``dtype`` on ``device``."""
    if expert not in profile.experts:
        raise ValueError(f"{profile.name}: no '{expert}' model (the family has {list(profile.experts)})")
    if profile.is_tiny:
        from pipeline.models.tiny.transformer import build_transformer, expert_seed, tiny_transformer_config  # as above

        model = build_transformer(tiny_transformer_config(profile), expert_seed(profile, expert), dtype, device)
    else:
        folder = model_folder(profile, expert)
        model = WanTransformer3DModel.from_pretrained(str(folder), torch_dtype=dtype).to(device)
    check_transformer(model, profile, expert)
    model.requires_grad_(False)
    return model.eval()


def check_transformer(model: WanTransformer3DModel, profile: Profile, expert: str = "transformer") -> None:
    """Refuse weights that are not of the profile's family (channels, text width, image embedder)."""
    cfg = model.config
    want_in = transformer_in_channels(profile)
    problems = []
    if cfg.in_channels != want_in or cfg.out_channels != profile.latent_channels:
        problems.append(f"takes {cfg.in_channels} / gives {cfg.out_channels} channels, the {profile.task} family "
                        f"'{profile.family}' needs {want_in} / {profile.latent_channels}")
    if cfg.text_dim != profile.text_dim:
        problems.append(f"text width {cfg.text_dim}, profile says {profile.text_dim}")
    if (cfg.image_dim is not None) != profile.image_encoder:
        problems.append("has an image embedder" if cfg.image_dim is not None else "has no image embedder (CLIP input)")
    if problems:
        raise ValueError(f"{profile.name}: {expert} " + "; ".join(problems))
