"""The VAE pass's unit of work (one sample's latent and I2V condition entries) and the tensor helpers
the passes share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import torch

from pipeline.encode.plan import Sample


@dataclass
class VaeJob:
    """One sample in the VAE pass: its latents, its I2V condition, or both are missing."""

    sample: Sample
    latent: bool
    cond: bool

    @property
    def bucket(self) -> tuple[int, int, int]:
        return self.sample.bucket


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def first_frame_condition(first: torch.Tensor, frames: int) -> torch.Tensor:
    """Pixels [3, 1, H, W] in [-1, 1] -> [3, frames, H, W]: the first frame followed by zeros
    (``WanImageToVideoPipeline.prepare_latents``' ``video_condition``)."""
    return torch.cat([first, first.new_zeros(first.shape[0], frames - 1, *first.shape[2:])], dim=1)


def _encode_stack(vae, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Normalised latents of same-shape pixel tensors, encoded as one batch ([] for none)."""
    from pipeline.models import (
        vae as vae_mod,  # looked up at call time (tests patch encode_mean)
    )

    return list(vae_mod.encode_mean(vae, torch.stack(pixels))) if pixels else []


def first_by(samples: list[Sample], attr: str) -> dict[str, Sample]:
    """key -> the first sample with that key (one computation per distinct key)."""
    out: dict[str, Sample] = {}
    for s in samples:
        k = getattr(s, attr)
        if k:
            out.setdefault(k, s)
    return out
