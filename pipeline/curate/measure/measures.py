"""Per-frame measurements: each a small object whose call maps one sampled frame to its columns.

The split stage's decode of a source hands every sampled frame (:class:`SampledFrame`: upright luma
at ``score.short_side``, and on every ``face_every``-th one the colour frame at
``score.face_short_side``) to each measurer; the rows go to the source's measurements table
(``schemas.MEASURES``), which the score stage aggregates per clip
(:mod:`pipeline.curate.score.scorers`). Nothing here depends on a clip's span: a frame is measured
once however many clips (or none) it ends up in. To add a score, write a measurer here (its
``columns`` in ``schemas.MEASURES``) and a scorer that aggregates them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from pipeline.curate.measure.config import MeasureConfig
from pipeline.curate.measure.faces import FaceDetector


@dataclass
class SampledFrame:
    index: int  # source frame index
    time: float  # seconds after the source's first frame
    gray: np.ndarray  # uint8 (h, w) upright luma, full range, short side = score.short_side
    rgb: np.ndarray | None = None  # uint8 (h, w, 3) upright colour at score.face_short_side; None: not looked at for faces


class Measure(Protocol):
    @property
    def columns(self) -> tuple[str, ...]: ...

    def __call__(self, frame: SampledFrame) -> dict: ...


class ExposureMeasure:
    """Mean and standard deviation of the luma; the share of pixels brighter than ``black_level``
    (a frame is near-black when it is small) and darker than ``white_level`` (near-white)."""

    columns = ("luma_mean", "luma_std", "lit_share", "dim_share")

    def __init__(self, black_level: int = 24, white_level: int = 232):
        self.black_level = black_level
        self.white_level = white_level

    def __call__(self, frame: SampledFrame) -> dict:
        g = frame.gray
        m, s = cv2.meanStdDev(g)
        return {"luma_mean": float(m[0, 0]), "luma_std": float(s[0, 0]),
                "lit_share": float(np.count_nonzero(g > self.black_level)) / g.size,
                "dim_share": float(np.count_nonzero(g < self.white_level)) / g.size}


class SharpnessMeasure:
    """Variance of the Laplacian (on frames of a fixed short side: it does not grow with pixel count)."""

    columns = ("sharpness",)

    def __call__(self, frame: SampledFrame) -> dict:
        return {"sharpness": float(cv2.Laplacian(frame.gray, cv2.CV_64F).var())}


class BarsMeasure:
    """Per row and per column, the share of pixels brighter than ``dark_level``: a row dark in every
    frame of a clip belongs to a letterbox bar (the score stage counts them in from each edge)."""

    columns = ("row_lit", "col_lit")

    def __init__(self, dark_level: int = 24):
        self.dark_level = dark_level

    def __call__(self, frame: SampledFrame) -> dict:
        lit = (frame.gray > self.dark_level).astype(np.float32)
        # float32 arrays, not lists: a list of Python floats is 7 times the memory (14 KB a 720p frame's
        # row, kept for every sampled frame of the source until the split stage writes the table)
        return {"row_lit": lit.mean(axis=1), "col_lit": lit.mean(axis=0)}


def phash(gray: np.ndarray) -> str:
    """64-bit perceptual hash: the signs of the 8x8 lowest DCT frequencies of a 32x32 thumbnail
    against their median (DC term left out), as 16 hex digits."""
    thumb = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(thumb)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return f"{value:016x}"


class PHashMeasure:
    columns = ("phash",)

    def __call__(self, frame: SampledFrame) -> dict:
        return {"phash": phash(frame.gray)}


class MotionMeasure:
    """Mean Farneback optical-flow magnitude from the previous sampled frame to this one, in frame
    diagonals per second (flow length / frame diagonal / time between the frames), so the same
    motion scores the same at any resolution, frame rate or sampling rate. Flow runs on the frames
    shrunk to a ``flow_short_side`` short side: Farneback underestimates motion over smooth areas at
    larger sizes, and small frames are faster. Keeps the previous frame: one object per source."""

    columns = ("motion",)

    def __init__(self, flow_short_side: int = 64, fallback_dt: float = 1.0):
        self.flow_short_side = flow_short_side
        self.fallback_dt = fallback_dt
        self._previous: tuple[np.ndarray, float] | None = None

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

    def __call__(self, frame: SampledFrame) -> dict:
        small = self.shrink(frame.gray)
        previous, self._previous = self._previous, (small, frame.time)
        if previous is None or previous[0].shape != small.shape:
            return {"motion": None}
        dt = frame.time - previous[1]
        return {"motion": self.pair_motion(previous[0], small, dt if dt > 0 else self.fallback_dt)}


@functools.cache
def _detector(min_face: int) -> FaceDetector:
    return FaceDetector(min_face=min_face)  # the networks are read once per process


class FaceMeasure:
    """Every face MTCNN finds in the frame's colour version (``rgb``; only every ``face_every``-th
    sampled frame has one): its confidence and its box as a share of the frame's area. The score
    stage applies ``score.face_min_confidence`` when it aggregates."""

    columns = ("face_confidence", "face_area")

    def __init__(self, min_face: int = 20):
        self.detector = _detector(min_face)

    def __call__(self, frame: SampledFrame) -> dict:
        if frame.rgb is None:
            return {"face_confidence": None, "face_area": None}
        faces = self.detector.detect(frame.rgb)
        area = float(frame.rgb.shape[0] * frame.rgb.shape[1])
        return {"face_confidence": [f.confidence for f in faces], "face_area": [f.area / area for f in faces]}


def make_measures(cfg: MeasureConfig, fps: float = 0.0) -> list[Measure]:
    """The measurers of one source, in column order (a new set per source: motion keeps state)."""
    out: list[Measure] = [
        ExposureMeasure(black_level=cfg.black_level, white_level=cfg.white_level),
        SharpnessMeasure(),
        BarsMeasure(dark_level=cfg.black_level),
        PHashMeasure(),
        MotionMeasure(flow_short_side=cfg.flow_short_side, fallback_dt=1.0 / fps if fps > 0 else 1.0),
    ]
    if cfg.faces:
        out.append(FaceMeasure())
    return out


def measure_frame(measures: list[Measure], frame: SampledFrame) -> dict:
    """One row of the measurements table."""
    row: dict = {"frame": frame.index, "time": frame.time, "face_confidence": None, "face_area": None}
    for m in measures:
        row.update(m(frame))
    return row
