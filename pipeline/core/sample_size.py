"""The size of the sample videos the train stage makes (``train.sample_frames`` / ``sample_height`` /
``sample_width``): read by the train stage, and by the encode stage, which caches the conditioning
of ``train.samples``' images at that size. Here so that neither stage imports the other's code."""

from __future__ import annotations

from dataclasses import dataclass

FRAMES, HEIGHT, WIDTH = 33, 480, 832  # the defaults (33 frames of 832x480, Wan's 480p landscape)


@dataclass(frozen=True)
class SampleSize:
    frames: int = FRAMES
    height: int = HEIGHT
    width: int = WIDTH

    @classmethod
    def of(cls, train: dict | None) -> SampleSize:
        """From the ``train`` params group (defaults for what it leaves out)."""
        t = train or {}
        return cls(int(t.get("sample_frames", FRAMES)), int(t.get("sample_height", HEIGHT)),
                   int(t.get("sample_width", WIDTH)))
