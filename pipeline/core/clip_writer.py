"""The one place a clip FILE is written from a span (``vlp export``, ``split.write_clips``).

A clip is a span of its source (:class:`pipeline.core.clip.ClipSpan`); a file is written only
when asked for, from exactly the frames every stage reads (``span.iter()``: upright, resampled),
encoded with PyAV at a constant rate, renamed into place only when the written file decodes to
as many frames as were written. A photo clip becomes an RGB PNG of the upright photo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.core.clip import ClipSpan
from pipeline.core.errors import one_line
from pipeline.core.fs import atomic_path


class ClipWriteError(RuntimeError):
    """A clip file could not be written, or does not hold the frames written; the message names the file."""


@dataclass(frozen=True)
class Encoding:
    """How clip files are encoded; every field changes the file's pixels, so it is part of its key."""

    codec: str = "libx264"
    crf: int = 18
    preset: str = "veryfast"
    pix_fmt: str = "yuv420p"

    def as_key(self) -> dict:
        return {"codec": self.codec, "crf": self.crf, "preset": self.preset, "pix_fmt": self.pix_fmt}


def encoder_available(codec: str) -> bool:
    """Whether PyAV's FFmpeg has a video encoder named ``codec`` (e.g. libx264)."""
    if codec not in av.codecs_available:
        return False
    try:
        return av.Codec(codec, "w").type == "video"
    except (ValueError, av.FFmpegError):  # known name, no encoder
        return False


def even_size(width: int, height: int, pix_fmt: str) -> tuple[int, int]:
    """(w, h) the pixel format can hold: subsampled chroma (4:2:0, 4:2:2) drops the last column
    (and, for 4:2:0, row) of an odd size."""
    if "420" in pix_fmt or pix_fmt in ("nv12", "nv21"):
        return width - width % 2, height - height % 2
    if "422" in pix_fmt:
        return width - width % 2, height
    return width, height


def _options(enc: Encoding) -> dict[str, str]:
    """Encoder options: quality (crf) for every encoder, the speed preset for x264 / x265."""
    opts = {"crf": str(enc.crf)}
    if enc.codec.startswith("libx26"):
        opts["preset"] = enc.preset
    return opts


def decoded_frames(path: str | os.PathLike) -> int:
    """Frames a written file's first video stream decodes to."""
    with av.open(os.fspath(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        return sum(1 for _ in c.decode(s))


def _write_image(span: ClipSpan, dst: Path) -> tuple[int, int, int]:
    img = span.read()[0]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ClipWriteError(f"{dst}: cannot encode the photo {span.path} as PNG")
    with atomic_path(dst) as tmp:
        tmp.write_bytes(buf.tobytes())
    return 1, int(img.shape[1]), int(img.shape[0])


def _write_video(span: ClipSpan, dst: Path, enc: Encoding, fps: float) -> tuple[int, int, int]:
    if not fps or fps <= 0:
        raise ClipWriteError(f"{dst}: no frame rate to write {span.path} at (fps {fps!r})")
    if not encoder_available(enc.codec):
        raise ClipWriteError(f"{dst}: no video encoder {enc.codec!r} in PyAV's FFmpeg")
    rate = Fraction(fps).limit_denominator(1001)
    n, w, h = 0, 0, 0
    with atomic_path(dst) as tmp:
        try:
            with av.open(os.fspath(tmp), "w", options={"movflags": "+faststart"}) as out:
                stream = None
                for frame in span.iter(batch=8):
                    if stream is None:
                        w, h = even_size(frame.shape[1], frame.shape[0], enc.pix_fmt)
                        if w < 2 or h < 2:
                            raise ClipWriteError(f"{dst}: frames of {span.path} too small to encode ({w}x{h})")
                        stream = out.add_stream(enc.codec, rate=rate)
                        stream.width, stream.height, stream.pix_fmt = w, h, enc.pix_fmt
                        stream.codec_context.time_base = 1 / rate
                        stream.options = _options(enc)
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")
                    vf.pts = n
                    vf.time_base = stream.codec_context.time_base
                    out.mux(stream.encode(vf))
                    n += 1
                if stream is None:
                    raise ClipWriteError(f"{dst}: the span {span.start}-{span.end} of {span.path} has no frames")
                out.mux(stream.encode())
        except av.FFmpegError as exc:
            raise ClipWriteError(f"{dst}: encoding {span.path} failed: {one_line(exc)}") from exc
        got = decoded_frames(tmp)
        if got != n:
            raise ClipWriteError(f"{dst}: decodes to {got} frames, {n} were written from {span.path}")
    return n, w, h


def write_clip(span: ClipSpan, dst: str | os.PathLike, enc: Encoding, fps: float) -> tuple[int, int, int]:
    """Write the span's frames to ``dst`` atomically: a video at the constant rate ``fps`` with
    ``enc`` (an odd size cropped to what ``enc.pix_fmt`` holds), or an RGB PNG for a photo.
    Returns (n_frames, width, height) of the written file. Raises :class:`ClipWriteError` (or
    the reader's ``MediaReadError``) naming the file."""
    dst = Path(dst)
    if span.kind == "image":
        return _write_image(span, dst)
    return _write_video(span, dst, enc, fps)
