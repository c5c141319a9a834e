"""The filter stage's settings (``params.yaml`` group ``filter``): every threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.core.config import ParamsError, load_settings, setting


@dataclass(frozen=True)
class FilterConfig:
    min_duration_s: float = setting(1.0, min=0)
    max_duration_s: float = setting(60.0, min=0)  # 0 = no limit
    min_short_side: int = setting(128, min=0)
    min_aspect: float = setting(0.4, min=0)
    max_aspect: float = setting(2.5, above=0)
    min_motion: float = setting(0.005, min=0)
    max_static_fraction: float = setting(0.75, min=0, max=1)
    min_sharpness: float = setting(30.0, min=0)
    image_min_sharpness: float = setting(60.0, min=0)
    min_luma: float = setting(30.0, min=0, max=255)
    max_luma: float = setting(225.0, min=0, max=255)
    min_contrast: float = setting(12.0, min=0)
    max_black_fraction: float = setting(0.25, min=0, max=1)
    max_white_fraction: float = setting(0.25, min=0, max=1)
    max_letterbox: float = setting(0.15, min=0, max=1)
    max_pillarbox: float = setting(0.15, min=0, max=1)
    dedup_max_distance: int = setting(6, min=-1, max=64)  # -1 = no dedup
    dedup_same_scene: bool = False
    require_consent: bool = False  # reject every clip whose source's consent is not "yes" (withdrawn: always rejected)
    faces_require_consent: bool = False  # reject every clip showing a face whose source's consent is not "yes"

    def check(self) -> None:
        for low, high in (("min_duration_s", "max_duration_s"), ("min_aspect", "max_aspect"), ("min_luma", "max_luma")):
            lo, hi = getattr(self, low), getattr(self, high)
            if hi and hi < lo:
                raise ParamsError(f"params.yaml filter.{high}: {hi!r} is not allowed: must be >= filter.{low} ({lo})")

    @classmethod
    def from_params(cls, p: dict[str, Any] | None) -> FilterConfig:
        return load_settings(cls, p, "filter")
