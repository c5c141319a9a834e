"""Probe source files: what each one is, and whether the pipeline can use it.

A file that cannot be read becomes a ``rejected`` row with a one-line reason; probing
never raises for bad media.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from statistics import median

import av

from pipeline.core.errors import one_line
from pipeline.core.fs import sha256_file
from pipeline.curate.probe.listing import IMAGE_EXTS, list_raw

log = logging.getLogger(__name__)

# A frame duration differing from the median by more than this (and by more than one
# tick of the stream's time base) counts as irregular; more than 1% irregular = VFR.
VFR_REL_TOLERANCE = 0.02
VFR_IRREGULAR_FRACTION = 0.01


def list_media(root: str | os.PathLike) -> list[Path]:
    """Every readable media file under ``root`` (recursively, hidden files skipped), sorted.
    (``listing.list_raw`` also returns the entries that cannot be sources, with their reasons.)"""
    root = Path(root)
    return [root / e.rel for e in list_raw(root) if e.status == "ok"]


def kind_of(path: str | os.PathLike) -> str:
    return "image" if Path(path).suffix.lower() in IMAGE_EXTS else "video"


def rejected_row(rel: str, reason: str) -> dict:
    """A ``sources`` row for an entry that is not readable media (see ``listing``)."""
    row = _base_row(Path(rel), rel, kind_of(rel))
    row.update(status="rejected", reason=reason)
    return row


def _base_row(path: Path, rel: str, kind: str) -> dict:
    return {
        "source_id": "",
        "path": rel,
        "kind": kind,
        "size_bytes": 0,
        "container": "",
        "codec": "",
        "width": 0,
        "height": 0,
        "rotation": 0,
        "fps": 0.0,
        "vfr": False,
        "n_frames": 0,
        "duration_s": 0.0,
        "has_audio": False,
        "status": "ok",
        "reason": "",
    }


def is_vfr(pts: list[int]) -> bool:
    """True when the presentation timestamps (any order) have irregular spacing."""
    if len(pts) < 3:
        return False
    ts = sorted(pts)
    deltas = [b - a for a, b in zip(ts, ts[1:])]
    med = median(deltas)
    if med <= 0:
        return True
    tol = max(1, VFR_REL_TOLERANCE * med)
    irregular = sum(1 for d in deltas if abs(d - med) > tol)
    return irregular > VFR_IRREGULAR_FRACTION * len(deltas)


def video_timeline(path: str | os.PathLike) -> tuple[list[float], float]:
    """(presentation time in seconds of every video frame relative to the first, in display order;
    the first frame's time after the container's start).

    Read from the demuxer (no decoding), so it is cheap even for long files. The offset matters
    when the video stream starts after the container does (phone and screen recordings often
    start their audio first): ffmpeg's ``-ss`` counts from the container's start.
    """
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb = float(s.time_base)
        pts = sorted(p.pts for p in c.demux(s) if p.pts is not None and p.size > 0)
        container_start = (c.start_time or 0) / av.time_base if c.start_time is not None else 0.0
    if not pts:
        return [], 0.0
    return [(p - pts[0]) * tb for p in pts], max(0.0, pts[0] * tb - container_start)


def frame_times(path: str | os.PathLike) -> list[float]:
    """Presentation time in seconds of every video frame, relative to the first, in display order."""
    return video_timeline(path)[0]


def probe_video(path: Path, row: dict) -> dict:
    with av.open(str(path)) as c:
        if not c.streams.video:
            row.update(status="rejected", reason="no video stream", container=c.format.name,
                       has_audio=bool(c.streams.audio))
            return row
        s = c.streams.video[0]
        row["container"] = c.format.name
        row["codec"] = s.codec_context.name or ""
        row["width"] = int(s.codec_context.width or 0)
        row["height"] = int(s.codec_context.height or 0)
        row["has_audio"] = bool(c.streams.audio)
        declared = int(s.frames or 0)
        pts = []
        last_duration = 0
        for pkt in c.demux(s):
            if pkt.pts is None or pkt.size == 0:
                continue
            pts.append(pkt.pts)
            last_duration = pkt.duration or last_duration
        if not pts:
            row.update(status="rejected", reason="no readable video frames")
            return row
        if declared and len(pts) < declared:
            row.update(status="rejected",
                       reason=f"truncated: header declares {declared} frames, only {len(pts)} readable")
            return row
        tb = float(s.time_base)
        pts.sort()
        rate = s.average_rate or s.guessed_rate
        # Decode the first frame: the stream must really decode, and it carries the rotation.
        c.seek(0)
        first = next(c.decode(s), None)
        if first is None:
            row.update(status="rejected", reason="first video frame does not decode")
            return row
        row["rotation"] = int(round(getattr(first, "rotation", 0) or 0)) % 360
        n = len(pts)
        span = (pts[-1] - pts[0] + (last_duration or 0)) * tb
        fps = float(rate) if rate else (n / span if span > 0 else 0.0)
        if fps <= 0:
            row.update(status="rejected", reason="unknown frame rate")
            return row
        row["fps"] = fps
        row["n_frames"] = n
        row["vfr"] = is_vfr(pts)
        row["duration_s"] = span if span > 0 else n / fps
        if row["width"] <= 0 or row["height"] <= 0:
            row.update(status="rejected", reason="video stream has no frame size")
    return row


def probe_image(path: Path, row: dict) -> dict:
    from PIL import Image  # only for photos: Pillow's import is a tenth of a second

    with Image.open(path) as im:
        row["container"] = (im.format or "").lower()
        row["codec"] = im.mode
        exif_orientation = im.getexif().get(0x0112, 1)
        im.load()  # decodes every pixel: raises on truncated data
        row["width"], row["height"] = im.size
        # EXIF orientation as a clockwise display rotation (mirrored orientations count as their rotation)
        row["rotation"] = {3: 180, 4: 180, 5: 90, 6: 90, 7: 270, 8: 270}.get(exif_orientation, 0)
    if row["container"] == "jpeg" and (err := jpeg_decode_error(path)):
        row.update(status="rejected", reason=f"corrupt image data: {err}")  # e.g. a garbled middle
        return row
    row["fps"] = 0.0
    row["n_frames"] = 1
    row["duration_s"] = 0.0
    return row


def jpeg_decode_error(path: Path) -> str:
    """Why ffmpeg's strict JPEG decoder refuses the file ("" when it decodes). Pillow decodes past
    errors in the middle of the entropy-coded data (a band of grey or shifted blocks), ffmpeg with
    ``err_detect explode`` stops at them."""
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.codec_context.options = {"err_detect": "explode"}
            for _ in c.decode(s):
                pass
    except Exception as exc:  # noqa: BLE001 - any decoder error is the answer
        text = re.sub(r"^\[Errno -?\d+\] ", "", one_line(exc, with_type=False))
        return f"JPEG decode error ({text.split(':')[0] or type(exc).__name__})"
    return ""


def mark_duplicates(rows: list[dict]) -> list[dict]:
    """Rows of files with the same bytes as an earlier path (path order) become rejected
    ``duplicate of <path>`` rows: a source is trained on once, under its first name."""
    first: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        if row["status"] != "ok" or not row["source_id"]:
            continue
        if row["source_id"] in first:
            row.update(status="rejected", reason=f"duplicate of {first[row['source_id']]}")
        else:
            first[row["source_id"]] = row["path"]
    return rows


def probe_file(path: str | os.PathLike, root: str | os.PathLike) -> dict:
    """One ``sources`` row for ``path``; never raises for unreadable media."""
    path = Path(path)
    rel = path.relative_to(root).as_posix()
    row = _base_row(path, rel, kind_of(path))
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
            row.update(status="rejected", reason="not a regular file")
            return row
        row["size_bytes"] = st.st_size
        row["source_id"] = sha256_file(path)
        if row["size_bytes"] == 0:
            row.update(status="rejected", reason="empty file (0 bytes)")
            return row
        if row["kind"] == "image":
            return probe_image(path, row)
        return probe_video(path, row)
    except Exception as exc:  # noqa: BLE001 - bad media must become a row, not a crash
        row.update(status="rejected", reason=f"unreadable: {one_line(exc)}")
        return row
