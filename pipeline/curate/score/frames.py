"""Decode a clip once, at a reduced resolution, into the grey frames every scorer reads.

Frames are scaled so their short side is ``short_side`` pixels (up or down), so every score is
measured on the same grid whatever the clip's resolution. The sampled frames are read with
``pipeline.core.media`` (a few at a time, at full size: frames that are not sampled are decoded,
as H.264 needs them, but never converted), turned to luma (full range, 0..255) and scaled with
OpenCV, the same calls for a video frame and a photo. The face scorer also gets a few of the same
frames in colour (``face_frames`` of them, spread evenly, short side ``face_short_side``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.core.errors import one_line
from pipeline.core.media import MediaReadError, iter_frames, read_image, video_info


class DecodeError(RuntimeError):
    """A clip could not be decoded; the message names the file."""


@dataclass(frozen=True)
class FrameSampling:
    short_side: int = 160  # short side of the decoded frames, in pixels
    sample_fps: float = 8.0  # frames kept per second of clip
    max_frames: int = 48  # at most this many frames, spread evenly over longer clips
    face_short_side: int = 0  # short side of the colour frames kept for face detection (0: none kept)
    face_frames: int = 0  # at most this many of the sampled frames are kept in colour, spread evenly

    def face_positions(self, n_sampled: int) -> list[int]:
        """Which of ``n_sampled`` sampled frames are also kept in colour (positions in the sample)."""
        if not self.face_short_side or self.face_frames <= 0 or n_sampled <= 0:
            return []
        if n_sampled <= self.face_frames:
            return list(range(n_sampled))
        return sorted({int(round(x)) for x in np.linspace(0, n_sampled - 1, self.face_frames)})

    def step(self, fps: float) -> int:
        return max(1, int(round(fps / self.sample_fps))) if fps > 0 and self.sample_fps > 0 else 1

    def indices(self, n_frames: int, fps: float) -> list[int]:
        """Frame indices to keep out of ``n_frames`` at ``fps``: every ``fps / sample_fps``-th
        frame, or ``max_frames`` spread evenly when that is more."""
        if n_frames <= 0:
            return []
        idx = list(range(0, n_frames, self.step(fps)))
        if len(idx) > self.max_frames:
            idx = sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, self.max_frames)})
        return idx


@dataclass
class Frames:
    """Grey frames of one clip at a reduced resolution, and what is known about the clip."""

    gray: list[np.ndarray]  # uint8 (h, w) luma, 0..255, short side = FrameSampling.short_side
    times: list[float]  # presentation time of each kept frame, seconds from the clip's start
    n_frames: int  # frames in the clip (all decoded, not only the kept ones)
    fps: float  # average frame rate; 0.0 for images
    width: int  # of the clip file
    height: int
    kind: str = "video"  # "video" or "image"
    rgb: list[np.ndarray] = field(default_factory=list)  # uint8 (h, w, 3) colour frames for face detection (FrameSampling.face_positions)

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.fps > 0 else 0.0

    @property
    def middle(self) -> np.ndarray:
        return self.gray[len(self.gray) // 2]


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side equal to ``short_side``, aspect kept, both even."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    s = short_side / min(width, height)
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def _small_gray(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    """An RGB frame as luma scaled to (w, h): area averaging when shrinking, bilinear when growing."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    width = gray.shape[1]
    return cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA if w < width else cv2.INTER_LINEAR)


def _small_rgb(rgb: np.ndarray, short_side: int) -> np.ndarray:
    """An RGB frame scaled so its short side is ``short_side`` (area averaging when shrinking)."""
    height, width = rgb.shape[:2]
    w, h = scaled_size(width, height, short_side)
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if w < width else cv2.INTER_LINEAR)


def _decode_video(path: Path, sampling: FrameSampling) -> Frames:
    info = video_info(path)  # frame count and times from the demuxer
    if not info.n_frames:
        raise DecodeError(f"{path}: no frame decoded")
    keep = sampling.indices(info.n_frames, info.fps)
    w, h = scaled_size(info.width, info.height, sampling.short_side)
    in_colour = set(sampling.face_positions(len(keep)))
    gray, colour = [], []
    for k, rgb in enumerate(iter_frames(path, keep)):
        gray.append(_small_gray(rgb, w, h))
        if k in in_colour:
            colour.append(_small_rgb(rgb, sampling.face_short_side))
    times = [info.times[i] for i in keep]
    return Frames(gray=gray, times=times, n_frames=info.n_frames, fps=info.fps, width=info.width,
                  height=info.height, kind="video", rgb=colour)


def _decode_image(path: Path, sampling: FrameSampling) -> Frames:
    rgb = read_image(path)
    height, width = rgb.shape[:2]
    w, h = scaled_size(width, height, sampling.short_side)
    colour = [_small_rgb(rgb, sampling.face_short_side)] if sampling.face_positions(1) else []
    return Frames(gray=[_small_gray(rgb, w, h)], times=[0.0], n_frames=1, fps=0.0, width=width, height=height,
                  kind="image", rgb=colour)


def decode_frames(path: str | os.PathLike, kind: str = "video", sampling: FrameSampling = FrameSampling(),
                  n_frames_hint: int = 0) -> Frames:
    """Decode ``path`` once into grey frames at ``sampling.short_side``. ``n_frames_hint`` is
    not needed any more (the frame count is read from the file's demuxer) and is ignored.

    Raises :class:`DecodeError` naming the file when it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: file not found")
    try:
        if kind == "image":
            return _decode_image(path, sampling)
        return _decode_video(path, sampling)
    except DecodeError:
        raise
    except MediaReadError as exc:  # its message names the file
        raise DecodeError(one_line(exc, with_type=False)) from exc
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise DecodeError(f"{path}: cannot decode: {one_line(exc, with_type=False)}") from exc
