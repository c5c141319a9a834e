"""Clip scorers: each is a small object whose call maps a clip's decoded frames to score columns.

Every scorer reads the same :class:`~pipeline.curate.score.frames.Frames` (grey, short side fixed by the
score params), so a clip is decoded once however many scorers run. To add a score, write one
class with ``columns`` (the names it returns, also used to fill an error row with nulls) and
``__call__(frames) -> dict``, add its columns to ``schemas.SCORES`` and list it in
:func:`pipeline.curate.score.scoring.make_scorers`.
"""

from __future__ import annotations

import math
from typing import Protocol

import cv2
import numpy as np

from pipeline.curate.score.faces import FaceDetector
from pipeline.curate.score.frames import Frames


class Scorer(Protocol):
    """What the score stage composes: ``columns`` names what the call returns (an error row gets
    them as nulls); the call maps one clip's frames to those columns."""

    @property
    def columns(self) -> tuple[str, ...]: ...

    def __call__(self, frames: Frames) -> dict: ...


class MotionScorer:
    """Mean Farneback optical-flow magnitude between consecutive sampled frames.

    ``motion`` is in frame diagonals per second: the mean flow length (pixels) divided by the
    frame diagonal (pixels) and by the time between the two frames, so the same clip scores the
    same at any resolution, frame rate or sampling rate. Flow is computed on the frames shrunk
    further to a ``flow_short_side`` short side: Farneback underestimates motion over smooth,
    low-texture areas at higher resolutions, and small frames are faster. ``static_fraction`` is
    the share of frame pairs whose motion is below ``static_pair_motion``. Images have no motion
    (null).
    """

    columns = ("motion", "static_fraction")

    def __init__(self, static_pair_motion: float = 0.005, flow_short_side: int = 64):
        self.static_pair_motion = static_pair_motion
        self.flow_short_side = flow_short_side

    def shrink(self, g: np.ndarray) -> np.ndarray:
        h, w = g.shape[:2]
        s = self.flow_short_side / min(h, w)
        if s >= 1:
            return g
        return cv2.resize(g, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)

    @staticmethod
    def pair_motion(a: np.ndarray, b: np.ndarray, dt: float) -> float:
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
        return float(mag.mean()) / math.hypot(*a.shape[:2]) / dt

    def __call__(self, frames: Frames) -> dict:
        if frames.kind == "image" or len(frames.gray) < 2:
            return {"motion": None, "static_fraction": None}
        fallback = 1.0 / frames.fps if frames.fps > 0 else 1.0
        small = [self.shrink(g) for g in frames.gray]
        per_pair = []
        for k in range(len(small) - 1):
            dt = frames.times[k + 1] - frames.times[k]
            per_pair.append(self.pair_motion(small[k], small[k + 1], dt if dt > 0 else fallback))
        values = np.asarray(per_pair)
        return {"motion": float(values.mean()), "static_fraction": float((values < self.static_pair_motion).mean())}


class SharpnessScorer:
    """Median over frames of the variance of the Laplacian (on frames at the fixed short side,
    so a clip's sharpness does not grow or shrink with its pixel count)."""

    columns = ("sharpness",)

    def __call__(self, frames: Frames) -> dict:
        values = [cv2.Laplacian(g, cv2.CV_64F).var() for g in frames.gray]
        return {"sharpness": float(np.median(values))}


class ExposureScorer:
    """Mean luma, contrast (mean per-frame luma std), and the share of near-black and near-white
    frames. A frame is near-black when fewer than ``pixel_share`` of its pixels are brighter than
    ``black_level``, near-white when fewer than ``pixel_share`` are darker than ``white_level``."""

    columns = ("luma_mean", "luma_std", "black_fraction", "white_fraction")

    def __init__(self, black_level: int = 24, white_level: int = 232, pixel_share: float = 0.02):
        self.black_level = black_level
        self.white_level = white_level
        self.pixel_share = pixel_share

    def __call__(self, frames: Frames) -> dict:
        means, stds, black, white = [], [], 0, 0
        for g in frames.gray:
            m, s = cv2.meanStdDev(g)
            means.append(float(m[0, 0]))
            stds.append(float(s[0, 0]))
            black += int(np.count_nonzero(g > self.black_level) < self.pixel_share * g.size)
            white += int(np.count_nonzero(g < self.white_level) < self.pixel_share * g.size)
        n = len(frames.gray)
        return {
            "luma_mean": float(np.mean(means)),
            "luma_std": float(np.mean(stds)),
            "black_fraction": float(black) / n,
            "white_fraction": float(white) / n,
        }


class BorderScorer:
    """Width of uniform dark bars on each border (letterbox top/bottom, pillarbox left/right), as a
    fraction of the frame's height or width.

    A row (column) belongs to a bar when, over all sampled frames, fewer than ``pixel_share`` of
    its pixels were ever brighter than ``dark_level``; bars are counted inwards from each edge.
    A clip dark everywhere has no bars (0 on every side): that is an exposure problem.
    """

    columns = ("border_top", "border_bottom", "border_left", "border_right")

    def __init__(self, dark_level: int = 24, pixel_share: float = 0.02):
        self.dark_level = dark_level
        self.pixel_share = pixel_share

    @staticmethod
    def _leading(flags: np.ndarray) -> int:
        off = np.flatnonzero(~flags)
        return int(off[0]) if off.size else int(flags.size)

    def __call__(self, frames: Frames) -> dict:
        brightest = np.maximum.reduce(frames.gray) if len(frames.gray) > 1 else frames.gray[0]
        lit = brightest > self.dark_level
        h, w = lit.shape
        dark_rows = lit.mean(axis=1) < self.pixel_share
        dark_cols = lit.mean(axis=0) < self.pixel_share
        if dark_rows.all():
            return dict.fromkeys(self.columns, 0.0)
        top, bottom = self._leading(dark_rows), self._leading(dark_rows[::-1])
        left, right = self._leading(dark_cols), self._leading(dark_cols[::-1])
        return {"border_top": top / h, "border_bottom": bottom / h, "border_left": left / w, "border_right": right / w}


class PHashScorer:
    """64-bit perceptual hash of the middle sampled frame: the signs of the 8x8 lowest DCT
    frequencies of a 32x32 thumbnail against their median (DC term left out), as 16 hex digits."""

    columns = ("phash",)

    def __call__(self, frames: Frames) -> dict:
        thumb = cv2.resize(frames.middle, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        low = cv2.dct(thumb)[:8, :8].flatten()
        bits = low > np.median(low[1:])
        value = 0
        for b in bits:
            value = (value << 1) | int(b)
        return {"phash": f"{value:016x}"}



class FaceScorer:
    """Faces in the clip's colour frames (``Frames.rgb``: a few of the sampled frames, spread evenly),
    found with MTCNN (:mod:`~pipeline.curate.score.faces`). ``face_share``: the share of those frames
    with a face of confidence ``min_confidence`` or more; ``face_area``: the largest such face's box
    as a share of the frame's area (0 when none); ``face``: whether the clip counts as showing a face,
    ``face_share`` at least ``min_share`` (and above 0). All null when no colour frame was kept
    (``score.faces: false``). Detection runs on frames of a fixed short side (``score.face_short_side``),
    so ``min_face`` (pixels, MTCNN's smallest face) is a fixed share of the frame at any resolution."""

    columns = ("face_share", "face_area", "face")

    def __init__(self, min_confidence: float = 0.95, min_share: float = 0.1, min_face: int = 20, enabled: bool = True):
        self.min_confidence = min_confidence
        self.min_share = min_share
        self.detector = FaceDetector(min_face=min_face) if enabled else None

    def largest(self, images: list[np.ndarray]) -> list[float]:
        """The largest confident face of each frame, as a share of the frame's area (0.0: none)."""
        if self.detector is None:
            raise ValueError("face detection is off (score.faces: false)")
        out = []
        for rgb, faces in zip(images, self.detector.detect_many(images)):
            sure = [f.area for f in faces if f.confidence >= self.min_confidence]
            out.append(max(sure, default=0.0) / float(rgb.shape[0] * rgb.shape[1]))
        return out

    def __call__(self, frames: Frames) -> dict:
        if not frames.rgb or self.detector is None:
            return dict.fromkeys(self.columns)
        areas = self.largest(frames.rgb)
        share = sum(a > 0 for a in areas) / len(areas)
        return {"face_share": share, "face_area": max(areas), "face": share > 0 and share >= self.min_share}
