"""Buckets: which frames of a clip make a training sample, and at what size.

Frame buckets are frame counts of the form 4n+1 (the Wan VAE compresses time 4x after the
first frame). A clip is sampled at a target fps (16 for Wan): target time k/fps maps to the
nearest clip frame. Every window takes the largest bucket that fits the clip; the mode says
where windows go:

- ``head``: one window at the start;
- ``uniform``: ``windows`` windows with evenly spaced starts over the clip (one: the middle);
- ``chunk``: consecutive non-overlapping windows, as many as fit (at most ``windows``; 0 = all).

Resolution buckets are sizes in ``step`` px (16: 8x VAE x 2x2 transformer patches) whose area
is at most the target area and whose aspect ratio is the nearest to the clip's; without
``upscale`` a clip smaller than the area gets a bucket no larger than itself. Frames are
resized to cover the bucket (aspect kept) and center-cropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("head", "uniform", "chunk")


def check_frame_buckets(buckets: list[int], temporal: int = 4) -> list[int]:
    out = sorted({int(b) for b in buckets})
    bad = [b for b in out if b < 1 or (b - 1) % temporal]
    if not out or bad:
        raise ValueError(f"frame buckets must be {temporal}n+1 frame counts, got {buckets}")
    return out


def available_frames(n_frames: int, clip_fps: float, target_fps: float | None) -> int:
    """How many target-fps frames a clip of ``n_frames`` at ``clip_fps`` holds."""
    if n_frames <= 0:
        return 0
    if not target_fps or not clip_fps:
        return n_frames
    # target frame k maps to clip frame round(k * clip_fps / target_fps), which must be < n_frames
    return math.ceil((n_frames - 0.5) * target_fps / clip_fps - 1e-9)


def target_to_clip(k: int, clip_fps: float, target_fps: float | None, n_frames: int) -> int:
    """Clip frame index nearest to target-fps frame ``k``."""
    if not target_fps or not clip_fps:
        return k
    return min(n_frames - 1, int(math.floor(k * clip_fps / target_fps + 0.5)))


def pick_frame_bucket(available: int, buckets: list[int]) -> int | None:
    """Largest bucket that fits, or None when the clip is shorter than the smallest."""
    fits = [b for b in buckets if b <= available]
    return max(fits) if fits else None


def window_starts(available: int, frames: int, mode: str, windows: int = 1) -> list[int]:
    """Start positions (in target-fps frames) of the windows of ``frames`` frames."""
    if mode not in MODES:
        raise ValueError(f"unknown frame extraction mode '{mode}'; choose one of {MODES}")
    if frames > available:
        return []
    slack = available - frames
    if mode == "head":
        return [0]
    if mode == "uniform":
        n = max(1, int(windows))
        if n == 1:
            return [slack // 2]
        return sorted({round(i * slack / (n - 1)) for i in range(n)})
    n = available // frames
    if windows and windows > 0:
        n = min(n, int(windows))
    return [i * frames for i in range(n)]


def frame_windows(
    n_frames: int, clip_fps: float, target_fps: float | None, buckets: list[int], mode: str, windows: int = 1
) -> tuple[int | None, list[list[int]]]:
    """(bucket frame count, clip frame indices of each window); (None, []) when too short."""
    avail = available_frames(n_frames, clip_fps, target_fps)
    bucket = pick_frame_bucket(avail, buckets)
    if bucket is None:
        return None, []
    return bucket, [
        [target_to_clip(s + k, clip_fps, target_fps, n_frames) for k in range(bucket)]
        for s in window_starts(avail, bucket, mode, windows)
    ]


def resolution_buckets(area: int, step: int = 16, max_aspect: float = 4.0) -> list[tuple[int, int]]:
    """(width, height) multiples of ``step`` with width*height <= area, aspect within [1/max, max]."""
    out = []
    for w in range(step, int(area // step) + 1, step):
        h = (area // w) // step * step
        if h >= step and 1 / max_aspect <= w / h <= max_aspect:
            out.append((w, h))
    return out


@dataclass(frozen=True)
class Resize:
    """Resize to cover (width, height), aspect kept, then center-crop."""

    width: int
    height: int
    scaled_width: int
    scaled_height: int
    crop_left: int
    crop_top: int


def pick_resolution(width: int, height: int, area: int, step: int = 16, upscale: bool = False) -> Resize:
    """Bucket for a ``width`` x ``height`` frame and how to resize + crop into it."""
    if width < step or height < step:
        raise ValueError(f"frame {width}x{height} is smaller than one {step}px step")
    eff = area if upscale else min(area, width * height)
    cands = resolution_buckets(eff, step) or [(step, step)]
    aspect = math.log(width / height)
    cands.sort(key=lambda wh: (abs(math.log(wh[0] / wh[1]) - aspect), -wh[0] * wh[1]))
    if not upscale:
        fit = [wh for wh in cands if wh[0] <= width and wh[1] <= height and max(wh[0] / width, wh[1] / height) <= 1]
        bw, bh = fit[0] if fit else (width // step * step, height // step * step)
    else:
        bw, bh = cands[0]
    return cover_resize(width, height, bw, bh)


def cover_resize(width: int, height: int, bucket_width: int, bucket_height: int) -> Resize:
    """How a ``width`` x ``height`` frame is resized to cover the bucket (aspect kept) and center-cropped into it."""
    scale = max(bucket_width / width, bucket_height / height)
    sw = max(bucket_width, round(width * scale))
    sh = max(bucket_height, round(height * scale))
    return Resize(bucket_width, bucket_height, sw, sh, (sw - bucket_width) // 2, (sh - bucket_height) // 2)
