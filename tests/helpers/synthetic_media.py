"""Synthetic test media: videos with known cuts, fades and motion, written with PyAV."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import av
import numpy as np


def ffmpeg_binary() -> str:
    """Debian's ffmpeg (the tests' setup installs it), else imageio-ffmpeg's."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int = 25, crf: int = 12) -> Path:
    """Encode RGB uint8 frames (H, W, 3) to an H.264 mp4."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": str(crf), "preset": "ultrafast"}
        for f in [first, *frames]:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random texture (so optical flow and scene detection have something to see)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    import cv2

    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def panning(scene: np.ndarray, n: int, h: int, w: int, dx: int = 2, dy: int = 0) -> list[np.ndarray]:
    """``n`` crops of a larger ``scene`` sliding by (dx, dy) pixels a frame: a camera pan."""
    return [scene[i * dy : i * dy + h, i * dx : i * dx + w].copy() for i in range(n)]


def scenes_video(
    path: str | Path, lengths: list[int], h: int = 72, w: int = 128, fps: int = 25,
    fade_into: int | None = None, fade_len: int = 10,
) -> tuple[Path, list[int]]:
    """A video of distinct panning scenes, hard cuts between them; returns (path, cut frames).

    With ``fade_into=k``, scene k starts with a ``fade_len`` frame fade from black instead of a cut.
    """
    frames: list[np.ndarray] = []
    cuts: list[int] = []
    for k, n in enumerate(lengths):
        big = textured(h + 4 * n, w + 4 * n, seed=100 + k)
        clip = panning(big, n, h, w, dx=1, dy=0)
        if fade_into == k:
            for i in range(min(fade_len, n)):
                clip[i] = (clip[i].astype(np.float32) * (i / fade_len)).astype(np.uint8)
        if k > 0:
            cuts.append(len(frames))
        frames += clip
    return write_video(path, frames, fps=fps), cuts


def still_video(path: str | Path, n: int = 75, h: int = 72, w: int = 128, fps: int = 25, seed: int = 7) -> Path:
    frame = textured(h, w, seed)
    return write_video(path, (frame for _ in range(n)), fps=fps)


def map_frames(src: str | Path, dst: str | Path, fn: Callable[[np.ndarray], np.ndarray], fps: int | None = None) -> Path:
    """Re-encode a video with ``fn`` applied to every RGB frame (blur, darken, letterbox, resize...)."""
    with av.open(str(src)) as c:
        s = c.streams.video[0]
        rate = fps or int(round(float(s.average_rate)))
        frames = [fn(f.to_ndarray(format="rgb24")) for f in c.decode(s)]
    return write_video(dst, frames, fps=rate)


def decode_all(path: str | Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
