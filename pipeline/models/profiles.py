"""Model profiles: which weights each model family loads, and the tiny offline stand-ins.

A profile names a family and where its weights come from (a diffusers hub id or a local
directory with the same subfolders). The ``tiny`` profile has no weights: every model is
built from a small config with random weights, offline, through the same code path, so
tests and the demo exercise exactly what a real run does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    family: str  # "wan2.1-t2v", later "wan2.1-i2v", "wan2.2-ti2v", "wan2.2-t2v-a14b", ...
    repo: str | None  # diffusers repo id or local directory; None = build tiny models from configs
    latent_channels: int  # VAE z_dim
    text_dim: int  # text encoder hidden size
    vae_scale_spatial: int = 8
    vae_scale_temporal: int = 4
    max_text_tokens: int = 512  # Wan's UMT5 (and the tiny stand-ins) truncate captions here
    # Conditioning: "t2v" (text only), "i2v" (first frame as VAE latents + mask, Wan 2.1 also a
    # CLIP vision embedding), "ti2v" (Wan 2.2 5B: first latent frame replaced by the image's).
    task: str = "t2v"
    image_encoder: bool = False  # Wan 2.1 I2V: CLIP vision embedding of the first frame
    # Wan 2.2 A14B: two experts; "transformer" denoises t >= boundary_ratio, "transformer_2" below.
    experts: tuple[str, ...] = ("transformer",)
    boundary_ratio: float | None = None
    # Which VAE the family encodes with: "wan2.1" (16 channels, 8x spatial; also used by the
    # Wan 2.2 A14B models) or "wan2.2" (48 channels, 16x spatial; TI2V-5B only). Latents are
    # interchangeable exactly between profiles whose ``vae`` (and weights fingerprint) match.
    vae: str = "wan2.1"
    # The frame rate the family was trained at and generates (Wan 2.1 and Wan 2.2 A14B: 16 fps, 81
    # frames; Wan 2.2 TI2V-5B: 24 fps, 121 frames): encode samples clips at it unless
    # ``encode.target_fps`` says otherwise.
    fps: float = 16.0

    @property
    def is_tiny(self) -> bool:
        return self.repo is None


_I2V21: dict[str, Any] = {"task": "i2v", "image_encoder": True}
_TI2V22: dict[str, Any] = {"task": "ti2v", "vae": "wan2.2", "vae_scale_spatial": 16, "fps": 24.0}
_A14B_T2V: dict[str, Any] = {"experts": ("transformer", "transformer_2"), "boundary_ratio": 0.875}
_A14B_I2V: dict[str, Any] = {"task": "i2v", "experts": ("transformer", "transformer_2"), "boundary_ratio": 0.9}
_TINY: dict[str, Any] = {"repo": None, "text_dim": 32}  # 512 text tokens, as Wan's UMT5

PROFILES: dict[str, Profile] = {
    # Wan 2.1 text-to-video
    "tiny": Profile("tiny", "wan2.1-t2v", None, latent_channels=16, text_dim=32),
    "wan2.1-t2v-1.3b": Profile("wan2.1-t2v-1.3b", "wan2.1-t2v", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 16, 4096),
    "wan2.1-t2v-14b": Profile("wan2.1-t2v-14b", "wan2.1-t2v", "Wan-AI/Wan2.1-T2V-14B-Diffusers", 16, 4096),
    # Wan 2.1 image-to-video: first frame as VAE conditioning + CLIP vision embedding
    "tiny-i2v": Profile("tiny-i2v", "wan2.1-i2v", latent_channels=16, **_TINY, **_I2V21),
    "wan2.1-i2v-14b-480p": Profile("wan2.1-i2v-14b-480p", "wan2.1-i2v", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", 16, 4096, **_I2V21),
    "wan2.1-i2v-14b-720p": Profile("wan2.1-i2v-14b-720p", "wan2.1-i2v", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", 16, 4096, **_I2V21),
    # Wan 2.2 TI2V 5B: its own VAE (48 channels, 16x spatial)
    "tiny-ti2v": Profile("tiny-ti2v", "wan2.2-ti2v", latent_channels=48, **_TINY, **_TI2V22),
    "wan2.2-ti2v-5b": Profile("wan2.2-ti2v-5b", "wan2.2-ti2v", "Wan-AI/Wan2.2-TI2V-5B-Diffusers", 48, 4096, **_TI2V22),
    # Wan 2.2 A14B: two experts (high-noise "transformer", low-noise "transformer_2")
    "tiny-t2v-a14b": Profile("tiny-t2v-a14b", "wan2.2-t2v-a14b", latent_channels=16, **_TINY, **_A14B_T2V),
    "wan2.2-t2v-a14b": Profile("wan2.2-t2v-a14b", "wan2.2-t2v-a14b", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", 16, 4096, **_A14B_T2V),
    "tiny-i2v-a14b": Profile("tiny-i2v-a14b", "wan2.2-i2v-a14b", latent_channels=16, **_TINY, **_A14B_I2V),
    "wan2.2-i2v-a14b": Profile("wan2.2-i2v-a14b", "wan2.2-i2v-a14b", "Wan-AI/Wan2.2-I2V-A14B-Diffusers", 16, 4096, **_A14B_I2V),
}

# A profile's family says which latents and conditioning it can train on: latents cached
# with one family's VAE are never used with another family's transformer.


def family_vae(family: str) -> str:
    """The VAE a family's latents are made with (``wan2.1`` or ``wan2.2``)."""
    for prof in PROFILES.values():
        if prof.family == family:
            return prof.vae
    raise ValueError(f"unknown model family '{family}'")


def get_profile(name: str, path: str | None = None) -> Profile:
    """Profile by name; ``path`` (a local directory or another hub id) replaces its weights' location."""
    try:
        prof = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown model profile '{name}'; choose one of {sorted(PROFILES)}") from None
    if path:
        prof = Profile(**{**prof.__dict__, "repo": path})
    return prof
