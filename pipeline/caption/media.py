"""What the captioner sees: frames sampled from a clip at a set rate, or one photo, downscaled.

The sampling is ours and explicit (the same for every backend): frame times 0, 1/fps, 2/fps ...
within the clip, evenly thinned to at most ``max_frames``, each frame resized to at most
``max_pixels`` pixels with its aspect ratio kept. A clip is a span of its source: its frames are
read from the source, upright, through :class:`pipeline.core.clip.ClipSpan`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from PIL import Image

from pipeline.core import media
from pipeline.core.clip import ClipSpan


class MediaError(RuntimeError):
    """A clip or photo could not be read."""


@dataclass(frozen=True)
class FrameSampling:
    fps: float = 2.0  # frames sampled per second of clip
    max_frames: int = 32  # at most this many frames per clip (evenly thinned)
    max_pixels: int = 360 * 640  # per video frame
    image_max_pixels: int = 1024 * 1024  # per photo

    def as_key(self, kind: str) -> dict:
        if kind == "image":
            return {"image_max_pixels": self.image_max_pixels}
        return {"fps": self.fps, "max_frames": self.max_frames, "max_pixels": self.max_pixels}


def sample_indices(n_frames: int, clip_fps: float, fps: float, max_frames: int) -> list[int]:
    """Frame indices at ``fps`` per second over ``n_frames`` frames of a ``clip_fps`` clip.

    At least one frame; more than ``max_frames`` are thinned evenly (first frame kept).
    """
    if n_frames <= 0:
        return []
    if not clip_fps or clip_fps <= 0 or not fps or fps <= 0:
        idx = list(range(n_frames))
    else:
        duration = n_frames / clip_fps
        n = max(1, int(math.floor(duration * fps + 1e-9)))
        idx = sorted({min(n_frames - 1, int(round(k * clip_fps / fps))) for k in range(n)})
    if max_frames and len(idx) > max_frames:
        pick = np.linspace(0, len(idx) - 1, max_frames).round().astype(int)
        idx = [idx[i] for i in sorted(set(pick.tolist()))]
    return idx


def fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(w, h) no larger than ``max_pixels`` in area, aspect ratio kept, both even and >= 2."""
    if max_pixels and width * height > max_pixels:
        s = math.sqrt(max_pixels / (width * height))
        w, h = width * s, height * s
        return max(2, int(w) // 2 * 2), max(2, int(h) // 2 * 2)
    return max(2, int(width) // 2 * 2), max(2, int(height) // 2 * 2)


def read_frames(span: ClipSpan, indices: list[int], max_pixels: int) -> np.ndarray:
    """Decode the clip frames at ``indices`` (clip-local) as upright RGB uint8, shape (T, H, W, 3),
    downscaled to ``max_pixels`` (while decoding).

    Indices past the end of a span that turns out shorter are dropped; no frame at all is an error.
    """
    path = span.path
    try:
        info = media.video_info(path)
        w, h = (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)
        n = span.n_frames
        kept = [i for i in indices if i < n]
        if not kept:
            raise MediaError(f"{path}: no decodable frame in the span {span.start}-{span.end}")
        return span.read(kept, size=fit_size(w, h, max_pixels))
    except (av.error.FFmpegError, media.MediaReadError, IndexError, OSError) as exc:
        raise MediaError(f"{path}: cannot decode video ({exc})") from exc


def read_image(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    """An RGB photo, upright (EXIF orientation applied), downscaled to ``max_pixels``."""
    try:
        im = Image.fromarray(media.read_image(path))
    except (OSError, ValueError) as exc:
        raise MediaError(f"{path}: cannot read image ({exc})") from exc
    w, h = fit_size(im.width, im.height, max_pixels)
    if (w, h) != im.size:
        im = im.resize((w, h), Image.Resampling.BICUBIC)
    return im


@dataclass
class Media:
    """A clip's sampled frames (kind video) or its photo (kind image), ready for a backend."""

    kind: str
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8
    indices: list[int] | None = None  # clip frame index of each frame
    clip_fps: float = 0.0
    n_frames: int = 0
    image: Image.Image | None = None

    @property
    def sampled_fps(self) -> float:
        """Frames per second of clip time the sampled frames stand for."""
        if not self.indices or not self.n_frames or not self.clip_fps:
            return self.clip_fps or 1.0
        return len(self.indices) / self.n_frames * self.clip_fps


def load_media(span: ClipSpan, n_frames: int, clip_fps: float, sampling: FrameSampling) -> Media:
    """The sampled frames of a video span (``n_frames`` frames at ``clip_fps``), or the photo of an image span."""
    if span.kind == "image":
        return Media("image", image=read_image(span.path, sampling.image_max_pixels))
    indices = sample_indices(int(n_frames), float(clip_fps), sampling.fps, sampling.max_frames)
    if not indices:
        raise MediaError(f"{span.path}: clip has no frames")
    frames = read_frames(span, indices, sampling.max_pixels)
    return Media("video", frames=frames, indices=indices[: len(frames)], clip_fps=float(clip_fps), n_frames=int(n_frames))


def load_clip(row: Mapping[str, Any], sampling: FrameSampling, root: str | os.PathLike = ".") -> Media:
    """:func:`load_media` of a dataset row (a span of its source; ``row["path"]`` relative to ``root``)."""
    try:
        span = ClipSpan.from_row(row, root)
    except (KeyError, TypeError, ValueError) as exc:
        raise MediaError(f"{row.get('path')}: not a clip span ({exc})") from exc
    return load_media(span, row["n_frames"], row["fps"], sampling)
