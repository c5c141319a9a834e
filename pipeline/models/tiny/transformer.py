"""The tiny profiles' denoising transformer: a 2-layer ``WanTransformer3DModel`` with seeded random weights.

Same architecture as the real models (3D patch embedding, RoPE, self- and cross-attention,
FFN), of the family's shape (``pipeline.models.transformer.transformer_config`` at size
``tiny``), so it is the same model in every process:

- ``in_channels``: the latent channels (16; 48 for Wan 2.2 TI2V-5B), for image-to-video plus
  the frame mask and the conditioning latents (16 + 4 + 16 = 36);
- Wan 2.1 I2V: ``image_dim`` (the tiny CLIP's width, ``TINY_IMAGE_DIM``) and
  ``added_kv_proj_dim`` (the model width): the image embedder and every block's image
  key/value projections;
- Wan 2.2 A14B: two experts, each with its own seed (``expert_seed``).

``build_transformer`` builds any config with seeded random weights (tests also use it for
deeper tiny models); ``pipeline.models.transformer.load_transformer`` calls it for a tiny profile.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from pipeline.models.profiles import Profile
from pipeline.models.transformer import _keep_fp32_modules, transformer_config, transformer_in_channels

TINY_SEED = 0

# Hidden size of the tiny CLIP vision model (``pipeline.models.tiny.clip``): the tiny Wan 2.1 I2V
# transformer's ``image_dim``. The real CLIP ViT-H/14 gives 1280.
TINY_IMAGE_DIM = 32


def tiny_transformer_config(profile: Profile) -> dict:
    """The tiny stand-in of the profile's family: the real family's channels and conditioning
    inputs (I2V: 36 input channels, Wan 2.1 I2V also the image embedder; TI2V: 48 channels), tiny width."""
    return transformer_config("tiny", profile.latent_channels, profile.text_dim, transformer_in_channels(profile),
                              TINY_IMAGE_DIM if profile.image_encoder else None)


def expert_seed(profile: Profile, expert: str) -> int:
    """Seed of a tiny expert's random weights: each expert of a two-expert family is its own model."""
    return TINY_SEED + list(profile.experts).index(expert)


def build_transformer(config: dict, seed: int = TINY_SEED, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> WanTransformer3DModel:
    """A model with seeded random weights (built in float32 on the CPU, then cast and moved; the
    modules diffusers keeps in float32 stay float32), so the same seed gives the same weights
    everywhere. At real sizes on a GPU use ``pipeline.models.transformer.build_on_device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(**config)
    torch.nn.Module.to(model, device=device, dtype=dtype)  # ModelMixin.to warns about the float32 modules
    if dtype != torch.float32:  # as from_pretrained(torch_dtype=...) does
        _keep_fp32_modules(model)
    return model
