"""A clip is a span of its source: which of the source's frames it shows, read straight from the source.

No clip file is needed to score, caption, encode or preview a clip: every stage turns the clips
row into a :class:`ClipSpan` and reads the span's frames through the one frame reader
(:mod:`pipeline.core.media`), upright. A clip file is written only when asked for (``vlp export``,
``split.write_clips``), from these same frames (:mod:`pipeline.core.clip_writer`).

Frame ``k`` of a clip is source frame ``start + k``; with a resampling rate (``split.fps``) it is
the source frame of the span on screen at ``times[start] + k / fps``, rounded as ffmpeg's ``fps``
filter rounds (the last frame that starts before ``times[start] + (k + 0.5) / fps``), on the
source's own timeline, so variable frame rates resample by time too.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import media


class SourceChanged(media.MediaReadError):
    """The source no longer has the frames it had when it was split; the message names the file."""


def span_end_time(times: Sequence[float], end: int) -> float:
    """When the span ending before frame ``end`` stops: frame ``end``'s time, or one average frame
    after the last frame for a span that reaches the end of the video."""
    if end < len(times):
        return float(times[end])
    step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
    return float(times[-1]) + step


def resampled_count(n_src: int, duration_s: float, fps: float | None) -> int:
    """Frames a clip of ``n_src`` source frames lasting ``duration_s`` holds at ``fps`` (None: ``n_src``)."""
    if not fps:
        return n_src
    return max(1, int(duration_s * fps + 1e-6))


def span_indices(times: Sequence[float], start: int, end: int, fps: float | None = None) -> list[int]:
    """The source frame of every clip frame of the span ``[start, end)`` (``times``: each source
    frame's presentation time). Without ``fps`` the span's frames as they are; with ``fps``, the
    frame on screen at each ``1 / fps`` step from the span's first frame (ffmpeg's rounding)."""
    if not 0 <= start < end <= len(times):
        raise ValueError(f"span {start}-{end} outside the source's {len(times)} frames")
    if not fps:
        return list(range(start, end))
    t0 = float(times[start])
    n = resampled_count(end - start, span_end_time(times, end) - t0, fps)
    out = []
    for k in range(n):
        t = t0 + (k + 0.5) / fps - 1e-9
        i = bisect.bisect_left(times, t, lo=start, hi=end) - 1
        out.append(max(start, min(i, end - 1)))
    return out


@dataclass(frozen=True)
class ClipSpan:
    """Where a clip's frames are: ``path`` (its source, or the clip file it was written to) and the span."""

    path: str  # file the frames are read from
    kind: str  # "video" or "image"
    start: int  # first source frame, inclusive
    end: int  # last source frame, exclusive
    fps: float | None = None  # resampling rate; None: every source frame of the span
    source_frames: int = 0  # frames the source had when it was split (0: not checked)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], root: str | os.PathLike = ".") -> ClipSpan:
        """The span of a clips (or dataset, manifest) row; ``row["path"]`` is relative to ``root``."""
        path = os.fspath(Path(root) / row["path"])
        if row.get("kind") == "image":
            return cls(path, "image", 0, 1)
        fps = float(row["fps"]) if row.get("resampled") and row.get("fps") else None
        return cls(path, "video", int(row["start_frame"]), int(row["end_frame"]), fps,
                   int(row.get("source_frames") or 0))

    def _times(self) -> tuple[float, ...]:
        info = media.video_info(self.path)
        if self.source_frames and info.n_frames != self.source_frames:
            raise SourceChanged(f"{self.path}: has {info.n_frames} frames, {self.source_frames} when it was split "
                                "(the file changed: run the split stage again, dvc repro)")
        if self.end > info.n_frames:
            raise SourceChanged(f"{self.path}: span {self.start}-{self.end} outside its {info.n_frames} frames")
        return info.times

    def source_indices(self, frames: Sequence[int] | None = None) -> list[int]:
        """The source frame of each clip frame in ``frames`` (all the clip's frames when None)."""
        if self.kind == "image":
            return [0] * (1 if frames is None else len(frames))
        every = span_indices(self._times(), self.start, self.end, self.fps)
        if frames is None:
            return every
        try:
            return [every[int(k)] for k in frames]
        except IndexError:
            raise media.MediaReadError(f"{self.path}: clip frame(s) {[k for k in frames if not 0 <= int(k) < len(every)][:5]} "
                                       f"not in the span {self.start}-{self.end} ({len(every)} frames)") from None

    @property
    def n_frames(self) -> int:
        return len(self.source_indices())

    def read(self, frames: Sequence[int] | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
        """Clip frames ``frames`` (all when None) as upright RGB uint8 [N, H, W, 3]; ``size`` (w, h) scales
        while decoding."""
        if self.kind == "image":
            img = media.read_image(self.path)
            if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
                import cv2

                img = cv2.resize(img, tuple(int(s) for s in size), interpolation=cv2.INTER_AREA)
            return np.repeat(img[None], 1 if frames is None else len(frames), axis=0)
        return media.read_frames(self.path, self.source_indices(frames), size=size, upright=True)

    def iter(self, frames: Sequence[int] | None = None, size: tuple[int, int] | None = None,
             batch: int = 8) -> Iterator[np.ndarray]:
        """The clip's frames one by one (``read``'s frames), decoded ``batch`` at a time: bounded memory
        for a long clip. Repeated source frames (resampling up) are decoded once."""
        if self.kind == "image":
            yield from self.read(frames, size)
            return
        src = self.source_indices(frames)
        for lo in range(0, len(src), max(1, batch) * 4):
            part = src[lo : lo + max(1, batch) * 4]
            unique = sorted(set(part))
            got = dict(zip(unique, media.iter_frames(self.path, unique, size=size, upright=True, batch=batch)))
            for i in part:
                yield got[i]
