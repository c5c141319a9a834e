"""Decode a clip once, at a reduced resolution, into the grey frames every scorer reads.

Frames are scaled so their short side is ``short_side`` pixels (up or down), so every score is
measured on the same grid whatever the clip's resolution. Scaling and the conversion to luma
(full range, 0..255) happen in one swscale call per kept frame; frames that are not sampled are
decoded (H.264 needs them) but never converted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


class DecodeError(RuntimeError):
    """A clip could not be decoded; the message names the file."""


@dataclass(frozen=True)
class FrameSampling:
    short_side: int = 160  # short side of the decoded frames, in pixels
    sample_fps: float = 8.0  # frames kept per second of clip
    max_frames: int = 48  # at most this many frames, spread evenly over longer clips

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


def _decode_video(path: Path, sampling: FrameSampling, n_hint: int) -> Frames:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        width, height = int(ctx.width), int(ctx.height)
        fps = float(stream.average_rate or 0) or float(stream.guessed_rate or 0)
        n_expected = int(stream.frames or 0) or n_hint
        w, h = scaled_size(width, height, sampling.short_side)
        # Without a frame count up front, keep every step-th frame and thin them out afterwards.
        keep = set(sampling.indices(n_expected, fps)) if n_expected else None
        step = sampling.step(fps)
        gray: list[np.ndarray] = []
        times: list[float] = []
        t0 = None
        n = 0
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else n / (fps or 1.0)
            if t0 is None:
                t0 = t
            if (n in keep) if keep is not None else (n % step == 0):
                gray.append(frame.reformat(width=w, height=h, format="gray", interpolation="AREA").to_ndarray())
                times.append(t - t0)
            n += 1
    if not gray:
        raise DecodeError(f"{path}: no frame decoded")
    if keep is None and len(gray) > sampling.max_frames:
        pick = sorted({int(round(x)) for x in np.linspace(0, len(gray) - 1, sampling.max_frames)})
        gray, times = [gray[i] for i in pick], [times[i] for i in pick]
    return Frames(gray=gray, times=times, n_frames=n, fps=fps, width=width, height=height, kind="video")


def _decode_image(path: Path, sampling: FrameSampling) -> Frames:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DecodeError(f"{path}: not a readable image")
    height, width = img.shape[:2]
    w, h = scaled_size(width, height, sampling.short_side)
    small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if w < width else cv2.INTER_LINEAR)
    return Frames(gray=[small], times=[0.0], n_frames=1, fps=0.0, width=width, height=height, kind="image")


def decode_frames(path: str | os.PathLike, kind: str = "video", sampling: FrameSampling = FrameSampling(),
                  n_frames_hint: int = 0) -> Frames:
    """Decode ``path`` once into grey frames at ``sampling.short_side``.

    Raises :class:`DecodeError` naming the file when it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: file not found")
    if kind == "image":
        return _decode_image(path, sampling)
    try:
        return _decode_video(path, sampling, n_frames_hint)
    except DecodeError:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DecodeError(f"{path}: cannot decode: {msg}") from exc
