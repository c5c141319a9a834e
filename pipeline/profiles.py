"""Model profiles: which weights each model family loads, and the tiny offline stand-ins.

A profile names a family and where its weights come from (a diffusers hub id or a local
directory with the same subfolders). The ``tiny`` profile has no weights: every model is
built from a small config with random weights, offline, through the same code path, so
tests and the demo exercise exactly what a real run does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    family: str  # "wan2.1-t2v", later "wan2.1-i2v", "wan2.2-ti2v", "wan2.2-t2v-a14b", ...
    repo: str | None  # diffusers repo id or local directory; None = build tiny models from configs
    latent_channels: int  # VAE z_dim
    text_dim: int  # text encoder hidden size
    vae_scale_spatial: int = 8
    vae_scale_temporal: int = 4
    max_text_tokens: int = 512
    # Conditioning: "t2v" (text only), "i2v" (first frame as VAE latents + mask, Wan 2.1 also a
    # CLIP vision embedding), "ti2v" (Wan 2.2 5B: first latent frame replaced by the image's).
    task: str = "t2v"
    image_encoder: bool = False  # Wan 2.1 I2V: CLIP vision embedding of the first frame
    # Wan 2.2 A14B: two experts; "transformer" denoises t >= boundary_ratio, "transformer_2" below.
    experts: tuple[str, ...] = ("transformer",)
    boundary_ratio: float | None = None

    @property
    def is_tiny(self) -> bool:
        return self.repo is None


PROFILES: dict[str, Profile] = {
    "tiny": Profile("tiny", "wan2.1-t2v", None, latent_channels=16, text_dim=32, max_text_tokens=256),
    "wan2.1-t2v-1.3b": Profile("wan2.1-t2v-1.3b", "wan2.1-t2v", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 16, 4096),
    "wan2.1-t2v-14b": Profile("wan2.1-t2v-14b", "wan2.1-t2v", "Wan-AI/Wan2.1-T2V-14B-Diffusers", 16, 4096),
}

# A profile's family says which latents and conditioning it can train on: latents cached
# with one family's VAE are never used with another family's transformer.


def get_profile(name: str, path: str | None = None) -> Profile:
    """Profile by name; ``path`` (a local directory or another hub id) replaces its weights' location."""
    try:
        prof = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown model profile '{name}'; choose one of {sorted(PROFILES)}") from None
    if path:
        prof = Profile(**{**prof.__dict__, "repo": path})
    return prof
