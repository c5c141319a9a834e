"""Frame-accurate clip cutting with ffmpeg (argv lists, re-encode) and a decoded-count check."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av

from pipeline.fsutil import atomic_path


class CutError(RuntimeError):
    """A clip could not be cut, or the written clip does not hold the frames it should."""


@dataclass(frozen=True)
class Encoding:
    """How clips are re-encoded; every field changes the clip's pixels, so it is part of the clip id."""

    codec: str = "libx264"
    crf: int = 18
    preset: str = "veryfast"
    pix_fmt: str = "yuv420p"

    def as_key(self) -> dict:
        return {"codec": self.codec, "crf": self.crf, "preset": self.preset, "pix_fmt": self.pix_fmt}


def ffmpeg_binary() -> str:
    """Debian's ffmpeg when installed, else the one shipped by imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001
        raise CutError("ffmpeg not found: install Debian's ffmpeg (apt-get install ffmpeg)") from exc


def seek_time(times: list[float], start: int) -> float:
    """A time that lies strictly between frame ``start - 1`` and frame ``start``.

    ffmpeg's accurate input seeking (``-ss`` before ``-i`` while re-encoding) drops every
    frame before this time, so the first frame out is exactly frame ``start``. Works for
    variable frame rates too, since it uses the real timestamps.
    """
    if start <= 0:
        return 0.0
    return (times[start - 1] + times[start]) / 2.0


def expected_frames(n_src: int, src_duration: float, target_fps: float | None) -> int:
    """Frames a clip holds: the source span, or its duration times the target fps."""
    if not target_fps:
        return n_src
    return max(1, int(src_duration * target_fps + 1e-6))


def cut_argv(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    seek_s: float,
    n_out: int,
    enc: Encoding,
    target_fps: float | None = None,
    ffmpeg: str | None = None,
) -> list[str]:
    """The ffmpeg command that writes ``n_out`` frames from ``seek_s`` on, upright, re-encoded."""
    argv = [ffmpeg or ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if seek_s > 0:
        argv += ["-ss", f"{seek_s:.6f}"]
    argv += ["-i", str(src), "-map", "0:v:0", "-an", "-sn", "-dn", "-map_metadata", "-1"]
    if target_fps:
        argv += ["-vf", f"fps={target_fps}"]
    else:
        argv += ["-fps_mode", "passthrough"]
    argv += [
        "-frames:v", str(n_out),
        "-c:v", enc.codec, "-preset", enc.preset, "-crf", str(enc.crf), "-pix_fmt", enc.pix_fmt,
        "-movflags", "+faststart", "-f", "mp4", str(dst),
    ]
    return argv


def count_decoded_frames(path: str | os.PathLike) -> tuple[int, int, int, float]:
    """(decoded frames, width, height, average fps) of a written clip."""
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        w, h = s.codec_context.width, s.codec_context.height
        rate = float(s.average_rate or 0)
        for _ in c.decode(s):
            n += 1
    return n, int(w), int(h), rate


def cut_clip(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    times: list[float],
    start: int,
    end: int,
    enc: Encoding,
    target_fps: float | None = None,
    clip_id: str = "",
) -> tuple[int, int, int, float]:
    """Cut source frames ``[start, end)`` into ``dst`` atomically; check the decoded frame count.

    Returns (n_frames, width, height, fps) of the written clip. Raises :class:`CutError`
    naming the clip when ffmpeg fails or the clip holds the wrong number of frames.
    """
    name = clip_id or Path(dst).name
    if not 0 <= start < end <= len(times):
        raise CutError(f"clip {name}: span {start}-{end} outside the source's {len(times)} frames")
    step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
    end_t = times[end] if end < len(times) else times[-1] + step
    n_out = expected_frames(end - start, end_t - times[start], target_fps)
    with atomic_path(dst) as tmp:
        argv = cut_argv(src, tmp, seek_time(times, start), n_out, enc, target_fps)
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CutError(f"clip {name}: ffmpeg failed ({proc.returncode}): {err}")
        got, w, h, fps = count_decoded_frames(tmp)
        if got != n_out:
            raise CutError(
                f"clip {name}: decoded {got} frames, span {start}-{end} should give {n_out}"
            )
    return got, w, h, (float(target_fps) if target_fps else fps)
