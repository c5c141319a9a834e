"""Filter rules: each is a small object whose call returns ``None`` (pass) or a reason that reads
on its own, e.g. ``static: motion 0.0004 < 0.005``. The filter stage composes them.

A rule sees one row: the clip's columns joined with its scores. ``name`` is the rule's reason
category (the key counted in ``data/metrics/filter.json``). To add a rule, write one class
and list it in :func:`make_rules`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipeline.core.consent import WITHDRAWN, consent_reason, lacks_consent
from pipeline.curate.filter.config import FilterConfig


class Rule(Protocol):
    """What the filter stage composes: ``name`` is the reason category; the call returns None
    (the row passes) or the reason, one line that reads on its own."""

    @property
    def name(self) -> str: ...

    def __call__(self, row: dict) -> str | None: ...


def num(x: float) -> str:
    """A score value for a reason: 4 significant digits below 1, one decimal above."""
    return f"{x:.4g}" if abs(x) < 1 else f"{x:.1f}"


def thr(x: float) -> str:
    return f"{x:g}"


def is_image(row: dict) -> bool:
    return row.get("kind") == "image"


class TooShort:
    name = "too_short"

    def __init__(self, min_s: float):
        self.min_s = min_s

    def __call__(self, row: dict) -> str | None:
        d = row["duration_s"]
        if is_image(row) or d is None or d >= self.min_s:
            return None
        return f"too short: {d:.2f} s < {thr(self.min_s)} s"


class TooLong:
    name = "too_long"

    def __init__(self, max_s: float):
        self.max_s = max_s

    def __call__(self, row: dict) -> str | None:
        d = row["duration_s"]
        if is_image(row) or d is None or not self.max_s or d <= self.max_s:
            return None
        return f"too long: {d:.2f} s > {thr(self.max_s)} s"


class MinResolution:
    name = "resolution"

    def __init__(self, min_short_side: int):
        self.min_short_side = min_short_side

    def __call__(self, row: dict) -> str | None:
        w, h = row["width"], row["height"]
        if min(w, h) >= self.min_short_side:
            return None
        return f"resolution: {w}x{h} below min short side {self.min_short_side}"


class AspectRange:
    name = "aspect"

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi

    def __call__(self, row: dict) -> str | None:
        a = row["width"] / row["height"] if row["height"] else float("inf")
        if self.lo <= a <= self.hi:
            return None
        return f"aspect: {a:.2f} outside [{thr(self.lo)}, {thr(self.hi)}]"


class Static:
    """Too little motion overall. Images have no motion and are never static."""

    name = "static"

    def __init__(self, min_motion: float):
        self.min_motion = min_motion

    def __call__(self, row: dict) -> str | None:
        m = row["motion"]
        if is_image(row) or m is None or np.isnan(m) or m >= self.min_motion:
            return None
        return f"static: motion {num(m)} < {thr(self.min_motion)}"


class MostlyStatic:
    """Moves, but stands still in too many of its sampled frame pairs. Silent for a clip that is
    static overall (``motion`` below ``min_motion``): the static rule already names it."""

    name = "mostly_static"

    def __init__(self, max_fraction: float, min_motion: float):
        self.max_fraction = max_fraction
        self.min_motion = min_motion

    def __call__(self, row: dict) -> str | None:
        f, m = row["static_fraction"], row["motion"]
        if is_image(row) or f is None or np.isnan(f) or f <= self.max_fraction or m < self.min_motion:
            return None
        return f"mostly static: {num(f)} of frame pairs still > {thr(self.max_fraction)}"


class Blurry:
    name = "blurry"

    def __init__(self, min_sharpness: float, image_min_sharpness: float):
        self.min_sharpness = min_sharpness
        self.image_min_sharpness = image_min_sharpness

    def __call__(self, row: dict) -> str | None:
        limit = self.image_min_sharpness if is_image(row) else self.min_sharpness
        s = row["sharpness"]
        if s >= limit:
            return None
        return f"blurry: sharpness {num(s)} < {thr(limit)}"


class Dark:
    name = "dark"

    def __init__(self, min_luma: float):
        self.min_luma = min_luma

    def __call__(self, row: dict) -> str | None:
        v = row["luma_mean"]
        return None if v >= self.min_luma else f"dark: luma {num(v)} < {thr(self.min_luma)}"


class Bright:
    name = "bright"

    def __init__(self, max_luma: float):
        self.max_luma = max_luma

    def __call__(self, row: dict) -> str | None:
        v = row["luma_mean"]
        return None if v <= self.max_luma else f"bright: luma {num(v)} > {thr(self.max_luma)}"


class LowContrast:
    name = "low_contrast"

    def __init__(self, min_contrast: float):
        self.min_contrast = min_contrast

    def __call__(self, row: dict) -> str | None:
        v = row["luma_std"]
        return None if v >= self.min_contrast else f"low contrast: luma std {num(v)} < {thr(self.min_contrast)}"


class BlackFrames:
    name = "black_frames"

    def __init__(self, max_fraction: float):
        self.max_fraction = max_fraction

    def __call__(self, row: dict) -> str | None:
        v = row["black_fraction"]
        if v <= self.max_fraction:
            return None
        return f"black frames: {num(v)} of frames near-black > {thr(self.max_fraction)}"


class WhiteFrames:
    name = "white_frames"

    def __init__(self, max_fraction: float):
        self.max_fraction = max_fraction

    def __call__(self, row: dict) -> str | None:
        v = row["white_fraction"]
        if v <= self.max_fraction:
            return None
        return f"white frames: {num(v)} of frames near-white > {thr(self.max_fraction)}"


class Letterbox:
    name = "letterbox"

    def __init__(self, max_bars: float):
        self.max_bars = max_bars

    def __call__(self, row: dict) -> str | None:
        v = row["border_top"] + row["border_bottom"]
        return None if v <= self.max_bars else f"letterbox: top+bottom bars {v:.2f} > {thr(self.max_bars)}"


class Pillarbox:
    name = "pillarbox"

    def __init__(self, max_bars: float):
        self.max_bars = max_bars

    def __call__(self, row: dict) -> str | None:
        v = row["border_left"] + row["border_right"]
        return None if v <= self.max_bars else f"pillarbox: left+right bars {v:.2f} > {thr(self.max_bars)}"


class Consent:
    """The source's consent (``consent`` joined from the sources table): a withdrawn source is always
    rejected (``consent withdrawn``); with ``require`` so is every source whose consent is not ``yes``
    (``consent: unknown``)."""

    name = "consent"

    def __init__(self, require: bool):
        self.require = require

    def __call__(self, row: dict) -> str | None:
        consent = row.get("consent")
        if consent == WITHDRAWN or (self.require and lacks_consent(consent)):
            return consent_reason(consent)
        return None


class FaceConsent:
    """With ``require``: a clip that shows a face (``face``, from the score stage) is rejected when its
    source's consent is not ``yes``. A withdrawn source is left to :class:`Consent`."""

    name = "face_consent"

    def __init__(self, require: bool):
        self.require = require

    def __call__(self, row: dict) -> str | None:
        consent = row.get("consent")
        if not self.require or not row.get("face") or not lacks_consent(consent) or consent == WITHDRAWN:
            return None
        return f"face without consent: consent {consent or 'unknown'}, a face in {num(row['face_share'] or 0.0)} of its frames"


def make_rules(cfg: FilterConfig) -> list[Rule]:
    """The per-clip rules of the filter stage, in the order their reasons are listed."""
    return [
        TooShort(cfg.min_duration_s),
        TooLong(cfg.max_duration_s),
        MinResolution(cfg.min_short_side),
        AspectRange(cfg.min_aspect, cfg.max_aspect),
        Static(cfg.min_motion),
        MostlyStatic(cfg.max_static_fraction, cfg.min_motion),
        Blurry(cfg.min_sharpness, cfg.image_min_sharpness),
        Dark(cfg.min_luma),
        Bright(cfg.max_luma),
        LowContrast(cfg.min_contrast),
        BlackFrames(cfg.max_black_fraction),
        WhiteFrames(cfg.max_white_fraction),
        Letterbox(cfg.max_letterbox),
        Pillarbox(cfg.max_pillarbox),
        Consent(cfg.require_consent),
        FaceConsent(cfg.faces_require_consent),
    ]


def find_duplicates(rows: list[dict], max_distance: int, same_scene: bool = False) -> dict[str, str]:
    """Near-duplicates among ``rows``: {clip_id: reason} for every clip that is not kept.

    Clips are taken longest first, then sharpest (then by clip id, so the result is stable); a
    clip whose perceptual hash lies within ``max_distance`` bits of a clip already kept is a
    duplicate of the nearest such clip. Unless ``same_scene``, the consecutive pieces of one
    scene (same source and scene index, cut by ``split.max_s``) are never compared.
    """
    order = sorted(rows, key=lambda r: (-(r["duration_s"] or 0.0), -(r["sharpness"] or 0.0), r["clip_id"]))
    kept_hash = np.zeros(len(order), dtype=np.uint64)
    kept_scene: list[tuple] = []
    kept_id: list[str] = []
    out: dict[str, str] = {}
    for r in order:
        h = np.uint64(int(r["phash"], 16))
        n = len(kept_id)
        if n:
            dist = np.bitwise_count(kept_hash[:n] ^ h).astype(np.int64)
            if not same_scene:
                scene = (r["source_id"], r["scene_index"])
                dist[[s == scene for s in kept_scene]] = 65
            j = int(np.argmin(dist))
            if dist[j] <= max_distance:
                out[r["clip_id"]] = f"duplicate of {kept_id[j]} (phash distance {int(dist[j])} <= {max_distance})"
                continue
        kept_hash[n] = h
        kept_scene.append((r["source_id"], r["scene_index"]))
        kept_id.append(r["clip_id"])
    return out
