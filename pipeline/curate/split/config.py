"""The split stage's settings (``params.yaml`` group ``split``)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from pipeline.core.clip_writer import Encoding, encoder_available
from pipeline.core.config import ParamsError, fail, setting
from pipeline.core.fs import sha256_json
from pipeline.curate.split.scenes import DETECTORS

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")


@dataclass(frozen=True)
class SplitConfig:
    detector: str = setting("adaptive", choices=tuple(DETECTORS))  # PySceneDetect detector
    detectors: dict[str, dict[str, Any]] = setting(factory=dict)  # constructor options per detector
    min_scene_len: int = setting(15, min=1)  # shortest scene reported, in frames
    min_s: float = setting(1.0, min=0)  # shorter clips are dropped
    max_s: float = setting(10.0, min=0)  # longer scenes are cut into pieces of this length; 0 = no limit
    trim_frames: int = setting(1, min=0)  # frames removed on each side of every cut
    fps: float | None = setting(None, above=0)  # resample clips to this rate; None keeps the source's
    write_clips: bool = False  # also write every clip as a file under data/clips (the stages read the source spans either way)
    codec: str = "libx264"  # video encoder of written clip files (write_clips, vlp export)
    crf: int = setting(18, min=0, max=63)
    preset: str = "veryfast"
    pix_fmt: str = "yuv420p"
    jobs: int = setting(0, min=0)  # videos decoded in parallel; 0 = all cores

    def check(self) -> None:
        if self.max_s and self.max_s < self.min_s:
            raise ParamsError(f"params.yaml split.max_s: {self.max_s!r} is not allowed: must be 0 (no limit) or "
                              f">= split.min_s ({self.min_s})")
        for name, options in self.detectors.items():
            if name not in DETECTORS:
                raise fail(f"split.detectors.{name}", options, "a detector name: " + ", ".join(DETECTORS))
            known = set(inspect.signature(DETECTORS[name]).parameters) - {"min_scene_len"}
            for key in options:
                if key not in known:
                    raise ParamsError(f"params.yaml split.detectors.{name}.{key}: unknown option of PySceneDetect's "
                                      f"{DETECTORS[name].__name__} (known: {', '.join(sorted(known))})")
        if not encoder_available(self.codec):
            raise fail("split.codec", self.codec, "a video encoder of PyAV's FFmpeg here, e.g. libx264, libx265, "
                                                  "libvpx-vp9")
        if self.codec.startswith("libx26") and self.preset not in X264_PRESETS:
            raise fail("split.preset", self.preset, "one of " + ", ".join(X264_PRESETS))

    @classmethod
    def from_params(cls, p: dict[str, Any] | None) -> SplitConfig:
        from pipeline.core.config import load_settings

        return load_settings(cls, p, "split")

    @property
    def detector_options(self) -> dict[str, Any]:
        return dict(self.detectors.get(self.detector) or {})

    @property
    def encoding(self) -> Encoding:
        return Encoding(codec=self.codec, crf=self.crf, preset=self.preset, pix_fmt=self.pix_fmt)

    def detector_key(self) -> str:
        return sha256_json(
            {"detector": self.detector, "options": self.detector_options, "min_scene_len": self.min_scene_len}
        )[:16]

