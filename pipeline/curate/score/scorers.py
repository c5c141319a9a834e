"""Clip scorers: each is a small object whose call maps one clip's measurements to score columns.

The split stage measured every sampled frame of each source once, while decoding it
(:mod:`pipeline.curate.measure.measures`); a clip's measurements are the rows of its source's
sampled frames inside its span (:class:`SpanMeasures`). To add a score, write a measurer there,
then a class here with ``columns`` (the names it returns, also used to fill an error row with
nulls) and ``__call__(span) -> dict``, add its columns to ``schemas.SCORES`` and list it in
:func:`pipeline.curate.score.scoring.make_scorers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import polars as pl


@dataclass
class SpanMeasures:
    """The measurements of one clip."""

    rows: pl.DataFrame  # schemas.MEASURES: the source's sampled frames inside the span, in order
    used: pl.DataFrame  # the rows the per-frame statistics read: all, or score.max_frames spread evenly
    kind: str  # "video" or "image"

    @classmethod
    def of(cls, measures: pl.DataFrame, start: int, end: int, kind: str, max_frames: int) -> SpanMeasures:
        rows = measures.filter((pl.col("frame") >= start) & (pl.col("frame") < end)).sort("frame")
        used = rows
        if rows.height > max_frames:
            picks = sorted({int(round(x)) for x in np.linspace(0, rows.height - 1, max_frames)})
            used = rows[picks]
        return cls(rows=rows, used=used, kind=kind)


class Scorer(Protocol):
    """What the score stage composes: ``columns`` names what the call returns (an error row gets
    them as nulls); the call maps one clip's measurements to those columns."""

    @property
    def columns(self) -> tuple[str, ...]: ...

    def __call__(self, span: SpanMeasures) -> dict: ...


class MotionScorer:
    """``motion``: the mean optical flow between consecutive sampled frames of the clip, in frame
    diagonals per second (the same clip scores the same at any resolution, frame rate or sampling
    rate); ``static_fraction``: the share of those pairs moving less than ``static_pair_motion``.
    Every pair inside the span counts (the first sampled frame's flow comes from a frame before the
    span and does not). Images, and clips with a single sampled frame, have no motion (null)."""

    columns = ("motion", "static_fraction")

    def __init__(self, static_pair_motion: float = 0.005):
        self.static_pair_motion = static_pair_motion

    def __call__(self, span: SpanMeasures) -> dict:
        values = span.rows["motion"][1:].drop_nulls().to_numpy()
        if span.kind == "image" or values.size == 0:
            return {"motion": None, "static_fraction": None}
        return {"motion": float(values.mean()), "static_fraction": float((values < self.static_pair_motion).mean())}


class SharpnessScorer:
    """Median over the sampled frames of the variance of the Laplacian (measured on frames of a fixed
    short side, so a clip's sharpness does not grow or shrink with its pixel count)."""

    columns = ("sharpness",)

    def __call__(self, span: SpanMeasures) -> dict:
        return {"sharpness": float(np.median(span.used["sharpness"].to_numpy()))}


class ExposureScorer:
    """Mean luma, contrast (mean per-frame luma std), and the share of near-black and near-white
    frames. A frame is near-black when fewer than ``pixel_share`` of its pixels are brighter than
    ``score.black_level``, near-white when fewer than ``pixel_share`` are darker than ``score.white_level``."""

    columns = ("luma_mean", "luma_std", "black_fraction", "white_fraction")

    def __init__(self, pixel_share: float = 0.02):
        self.pixel_share = pixel_share

    def __call__(self, span: SpanMeasures) -> dict:
        u = span.used
        return {
            "luma_mean": float(u["luma_mean"].mean()),  # type: ignore[arg-type]
            "luma_std": float(u["luma_std"].mean()),  # type: ignore[arg-type]
            "black_fraction": float((u["lit_share"] < self.pixel_share).mean()),  # type: ignore[arg-type]
            "white_fraction": float((u["dim_share"] < self.pixel_share).mean()),  # type: ignore[arg-type]
        }


class BorderScorer:
    """Width of uniform dark bars on each border (letterbox top/bottom, pillarbox left/right), as a
    fraction of the frame's height or width.

    A row (column) belongs to a bar when, in every sampled frame, fewer than ``pixel_share`` of its
    pixels are brighter than ``score.black_level``; bars are counted inwards from each edge. A clip
    dark everywhere has no bars (0 on every side): that is an exposure problem.
    """

    columns = ("border_top", "border_bottom", "border_left", "border_right")

    def __init__(self, pixel_share: float = 0.02):
        self.pixel_share = pixel_share

    @staticmethod
    def _leading(flags: np.ndarray) -> int:
        off = np.flatnonzero(~flags)
        return int(off[0]) if off.size else int(flags.size)

    def __call__(self, span: SpanMeasures) -> dict:
        rows = np.max(np.stack([np.asarray(r, np.float32) for r in span.used["row_lit"].to_list()]), axis=0)
        cols = np.max(np.stack([np.asarray(c, np.float32) for c in span.used["col_lit"].to_list()]), axis=0)
        dark_rows, dark_cols = rows < self.pixel_share, cols < self.pixel_share
        if dark_rows.all():
            return dict.fromkeys(self.columns, 0.0)
        h, w = dark_rows.size, dark_cols.size
        top, bottom = self._leading(dark_rows), self._leading(dark_rows[::-1])
        left, right = self._leading(dark_cols), self._leading(dark_cols[::-1])
        return {"border_top": top / h, "border_bottom": bottom / h, "border_left": left / w, "border_right": right / w}


class PHashScorer:
    """The 64-bit perceptual hash of the clip's middle sampled frame (hex)."""

    columns = ("phash",)

    def __call__(self, span: SpanMeasures) -> dict:
        return {"phash": span.used["phash"][span.used.height // 2]}


class FaceScorer:
    """Faces in the frames looked at (``score.face_fps`` of the sampled frames a second, found with MTCNN
    in the split stage's decode). ``face_share``: the share of those frames with a face of confidence
    ``min_confidence`` or more; ``face_area``: the largest such face's box as a share of the frame's
    area (0 when none); ``face``: whether the clip counts as showing a face, ``face_share`` at least
    ``min_share`` (and above 0). All null when no frame of the clip was looked at (``score.faces:
    false``, or a clip shorter than ``1 / face_fps``)."""

    columns = ("face_share", "face_area", "face")

    def __init__(self, min_confidence: float = 0.95, min_share: float = 0.1, enabled: bool = True):
        self.min_confidence = min_confidence
        self.min_share = min_share
        self.enabled = enabled

    def __call__(self, span: SpanMeasures) -> dict:
        looked = span.rows.filter(pl.col("face_confidence").is_not_null())
        if not self.enabled or looked.height == 0:
            return dict.fromkeys(self.columns)
        areas = []
        for confidences, boxes in zip(looked["face_confidence"].to_list(), looked["face_area"].to_list()):
            sure = [a for c, a in zip(confidences, boxes) if c >= self.min_confidence]
            areas.append(max(sure, default=0.0))
        share = sum(a > 0 for a in areas) / len(areas)
        return {"face_share": share, "face_area": max(areas), "face": share > 0 and share >= self.min_share}
