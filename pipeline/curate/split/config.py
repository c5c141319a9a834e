"""The split stage's settings (``params.yaml`` group ``split``)."""

from __future__ import annotations

import functools
import inspect
import subprocess
from dataclasses import dataclass
from typing import Any

from pipeline.core.config import ParamsError, fail, setting
from pipeline.core.fs import sha256_json
from pipeline.curate.split.cutting import Encoding, ffmpeg_binary
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
    codec: str = "libx264"  # ffmpeg video encoder of the clip files
    crf: int = setting(18, min=0, max=63)
    preset: str = "veryfast"
    pix_fmt: str = "yuv420p"
    jobs: int = setting(0, min=0)  # videos in parallel; 0 = all cores

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
        if self.codec not in ffmpeg_video_encoders():
            raise fail("split.codec", self.codec, "an ffmpeg video encoder available here, e.g. libx264, libx265, "
                                                  "libvpx-vp9 (ffmpeg -encoders lists them)")
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


@functools.cache
def ffmpeg_video_encoders() -> frozenset[str]:
    """Names of the video encoders of the ffmpeg found here."""
    try:
        out = subprocess.run([ffmpeg_binary(), "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    except Exception:  # noqa: BLE001 - no ffmpeg: the first cut says so, naming the fix
        return frozenset({"libx264"})
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0].startswith("V"):
            names.add(parts[1])
    return frozenset(names)
