"""Frame-accurate clip cutting with ffmpeg (argv lists, re-encode), checked twice: the decoded
frame count, and the content: the clip's first and last frames are compared with the source
frames of its span (``verify_content``), so a cut that lands on the wrong frames (a stream
that starts after the container, a seek that misses) fails loudly instead of training on the
wrong scene."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.core import media
from pipeline.core.errors import last_line
from pipeline.core.fs import atomic_path


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


def needs_even_crop(width: int, height: int, enc: Encoding) -> bool:
    """Subsampled chroma (yuv420p, yuv422p) needs an even width (and height for 4:2:0)."""
    if enc.pix_fmt.startswith("yuv420"):
        return width % 2 == 1 or height % 2 == 1
    if enc.pix_fmt.startswith("yuv422"):
        return width % 2 == 1
    return False


EVEN_CROP = "crop=trunc(iw/2)*2:trunc(ih/2)*2:0:0"  # drop the last column / row of an odd size


def cut_argv(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    seek_s: float,
    n_out: int,
    enc: Encoding,
    target_fps: float | None = None,
    ffmpeg: str | None = None,
    even_crop: bool = False,
) -> list[str]:
    """The ffmpeg command that writes ``n_out`` frames from ``seek_s`` on (seconds after the
    container's start, as ``-ss`` counts), upright, re-encoded; ``even_crop`` drops the last pixel
    column / row of an odd-sized video, which yuv420p cannot hold."""
    argv = [ffmpeg or ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if seek_s > 0:
        argv += ["-ss", f"{seek_s:.6f}"]
    argv += ["-i", str(src), "-map", "0:v:0", "-an", "-sn", "-dn", "-map_metadata", "-1"]
    filters = ([f"fps={target_fps}"] if target_fps else []) + ([EVEN_CROP] if even_crop else [])
    if filters:
        argv += ["-vf", ",".join(filters)]
    if not target_fps:
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


def span_frames(times: list[float], start: int, end: int, target_fps: float | None) -> int:
    """Frames the clip of source frames ``[start, end)`` holds (resampled to ``target_fps`` if set)."""
    step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
    end_t = times[end] if end < len(times) else times[-1] + step
    return expected_frames(end - start, end_t - times[start], target_fps)


def finished_clip(dst: str | os.PathLike, times: list[float], start: int, end: int,
                  target_fps: float | None = None) -> tuple[int, int, int, float] | None:
    """(n_frames, width, height, fps) of a clip file a killed run finished but did not record, when
    it holds the frames its span should (clips are renamed into place only after both checks
    passed, so a file under its final name was complete); None when there is none or it is not."""
    if not Path(dst).is_file():
        return None
    try:
        got, w, h, fps = count_decoded_frames(dst)
    except Exception:  # noqa: BLE001 - an unreadable leftover is simply cut again
        return None
    if got != span_frames(times, start, end, target_fps):
        return None
    return got, w, h, (float(target_fps) if target_fps else fps)


def cut_clip(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    times: list[float],
    start: int,
    end: int,
    enc: Encoding,
    target_fps: float | None = None,
    clip_id: str = "",
    offset_s: float = 0.0,
    even_crop: bool = False,
    rotation: int = 0,
    verify: bool = True,
) -> tuple[int, int, int, float]:
    """Cut source frames ``[start, end)`` into ``dst`` atomically; check the decoded frame count
    and (``verify``) that the clip's first and last frames are the source's at its span.

    ``times``: each source frame's time after the first video frame; ``offset_s``: the first
    video frame's time after the container's start (``probe.video_timeline``). Returns
    (n_frames, width, height, fps) of the written clip. Raises :class:`CutError` naming the clip
    when ffmpeg fails or the clip holds the wrong frames.
    """
    name = clip_id or Path(dst).name
    if not 0 <= start < end <= len(times):
        raise CutError(f"clip {name}: span {start}-{end} outside the source's {len(times)} frames")
    n_out = span_frames(times, start, end, target_fps)
    with atomic_path(dst) as tmp:
        seek = seek_time(times, start) + offset_s if start > 0 else 0.0
        argv = cut_argv(src, tmp, seek, n_out, enc, target_fps, even_crop=even_crop)
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            err = last_line(proc.stderr, "no output")
            raise CutError(f"clip {name}: ffmpeg failed ({proc.returncode}): {err}")
        got, w, h, fps = count_decoded_frames(tmp)
        if got != n_out:
            raise CutError(
                f"clip {name}: decoded {got} frames, span {start}-{end} should give {n_out}"
            )
        if verify:
            last_src = end - 1
            if target_fps:  # the last output frame shows the source at start + (n_out - 1) / fps
                t_last = times[start] + (n_out - 1) / target_fps
                last_src = min(range(start, end), key=lambda i: abs(times[i] - t_last))
            problem = verify_content(src, tmp, start, last_src, got - 1, rotation)
            if problem:
                raise CutError(f"clip {name}: {problem}")
    return got, w, h, (float(target_fps) if target_fps else fps)


# verify_content: frames are compared as 32x32 grey thumbnails (mean absolute difference, 0..255).
# A re-encoded frame differs from its source by ~1-3; a frame of another scene by tens.
CONTENT_TOLERANCE = 12.0
NEIGHBOUR_MARGIN = 3.0  # a neighbouring source frame matching this much better means an off-by-one cut


def _thumb(frame: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def _upright_options(frame: np.ndarray, rotation: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """The source frame turned the way the clip shows it (90 and 270 both tried: containers
    disagree on the sign of the display matrix)."""
    turns = {0: [0], 90: [1, 3], 180: [2], 270: [3, 1]}.get(rotation % 360, [0])
    out = [np.ascontiguousarray(np.rot90(frame, k)) for k in turns]
    fits = [f for f in out if f.shape[0] >= shape[0] and f.shape[1] >= shape[1]]  # an even crop is smaller
    return fits or out


def verify_content(src: str | os.PathLike, clip: str | os.PathLike, first_src: int, last_src: int, last_clip: int,
                   rotation: int = 0) -> str:
    """"" when the clip's first and last frames show source frames ``first_src`` and ``last_src``,
    else what is wrong. The source frames are read by index (``read_frames``), each neighbour too."""
    wanted = sorted({i for i in (first_src - 1, first_src, first_src + 1, last_src - 1, last_src, last_src + 1) if i >= 0})
    src_frames = read_frames(src, wanted)
    clip_frames = read_frames(clip, [0, last_clip])
    for which, c_idx, s_idx in (("first", 0, first_src), ("last", last_clip, last_src)):
        if c_idx not in clip_frames:
            return f"the clip's frame {c_idx} does not decode"
        c = clip_frames[c_idx]
        target = _thumb(c)

        def dist(i: int, c: np.ndarray = c, target: np.ndarray = target) -> float:
            if i not in src_frames:
                return float("inf")
            options = _upright_options(src_frames[i], rotation, c.shape[:2])
            return min(float(np.abs(_thumb(np.ascontiguousarray(o[: c.shape[0], : c.shape[1]])) - target).mean())
                       for o in options)

        here = dist(s_idx)
        best_neighbour = min(dist(s_idx - 1), dist(s_idx + 1))
        if here > CONTENT_TOLERANCE or best_neighbour + NEIGHBOUR_MARGIN < here:
            return (f"the {which} frame does not show source frame {s_idx} (difference {here:.1f}, "
                    f"a neighbour {best_neighbour:.1f}): the cut landed on other frames")
    return ""


def read_frames(path: str | os.PathLike, indices: list[int]) -> dict[int, np.ndarray]:
    """RGB frames of a video by index in presentation order (index ``i`` = the ``i``-th smallest
    pts), as stored (the display rotation is not applied: ``verify_content`` turns the source's
    frames itself); indices outside the video, or whose frame does not decode, are left out.
    Read with ``pipeline.core.media``, which seeks to the keyframe before a frame."""
    n = media.frame_count(path)
    wanted = sorted({i for i in indices if 0 <= i < n})
    try:
        return dict(zip(wanted, media.read_frames(path, wanted)))
    except media.MediaReadError:  # a frame that does not decode: keep the others
        out: dict[int, np.ndarray] = {}
        for i in wanted:
            try:
                out[i] = media.read_frames(path, [i])[0]
            except media.MediaReadError:
                pass
        return out
