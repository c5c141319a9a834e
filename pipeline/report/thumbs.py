"""Small JPEG thumbnails of clips for the report: first, middle and last frame (one for a photo).

A clip is a span of its source: the frames are read from the source, upright, through
:class:`pipeline.core.clip.ClipSpan`. Thumbnails are named by clip id and width (``<clip_id>_w160_0.jpg`` ...). A clip id changes
whenever the clip's pixels could, so an existing thumbnail is never stale and is never made twice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.core.clip import ClipSpan
from pipeline.core.errors import one_line
from pipeline.core.fs import atomic_path, check_id

log = logging.getLogger(__name__)

JPEG_QUALITY = 80


def thumb_names(clip_id: str, kind: str, width: int) -> list[str]:
    """File names of a clip's thumbnails: three for a video, one for a photo."""
    return [f"{clip_id}_w{width}_{i}.jpg" for i in range(1 if kind == "image" else 3)]


def _scaled(rgb: np.ndarray, width: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if w <= width:
        return rgb
    return cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def _write_jpeg(rgb: np.ndarray, path: Path) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"{path}: JPEG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def video_frames(span: ClipSpan, n_frames: int) -> list[np.ndarray]:
    """Upright RGB clip frames 0, n//2 and n-1 of a span.

    A span that holds fewer frames than ``n_frames`` gives its last frame instead.
    """
    n = max(1, int(n_frames))
    count = span.n_frames
    if not count:
        raise RuntimeError(f"{span.path}: no frame in the span {span.start}-{span.end}")
    return list(span.read([min(i, count - 1) for i in (0, n // 2, n - 1)]))


def make_thumbs(span: ClipSpan, n_frames: int, out_paths: list[Path], width: int) -> None:
    frames = list(span.read()[:1]) if span.kind == "image" else video_frames(span, n_frames)
    for rgb, path in zip(frames, out_paths):
        _write_jpeg(_scaled(rgb, width), path)


def ensure_thumbs(clips: list[dict], root: str | os.PathLike, thumbs_dir: str | os.PathLike, width: int = 160,
                  prune: bool = True) -> dict[str, list[str]]:
    """Make the thumbnails that are missing; return clip_id -> thumbnail file names (in ``thumbs_dir``).

    ``clips``: rows with clip_id, kind, n_frames and the span (path of the source relative to
    ``root``, start_frame, end_frame, fps, resampled, source_frames). A clip whose source is
    missing, changed or does not decode is logged and gets no thumbnails; the others go on. With
    ``prune``, thumbnails of clips not in ``clips`` are removed.
    """
    root, thumbs_dir = Path(root), Path(thumbs_dir)
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {}
    todo = []
    for row in clips:
        check_id(row["clip_id"])
        names = thumb_names(row["clip_id"], row["kind"], width)
        if all((thumbs_dir / n).exists() for n in names):
            out[row["clip_id"]] = names
        else:
            todo.append((row, names))
    made = failed = 0
    for row, names in tqdm(todo, desc="thumbnails", unit="clip", disable=len(todo) < 20):
        try:
            span = ClipSpan.from_row(row, root)
            if not Path(span.path).exists():
                raise FileNotFoundError(f"{span.path}: source file missing")
            make_thumbs(span, row["n_frames"] or 1, [thumbs_dir / n for n in names], width)
        except Exception as exc:  # one bad clip never stops the report
            failed += 1
            log.warning("no thumbnails for %s: %s", row["clip_id"][:12], one_line(exc, with_type=False))
            continue
        made += 1
        out[row["clip_id"]] = names
    if prune:
        keep = {n for names in out.values() for n in names} | {n for _, names in todo for n in names}
        for f in thumbs_dir.glob("*.jpg"):
            if f.name not in keep:
                f.unlink()
    log.info("thumbnails: %d made, %d already there, %d failed", made, len(out) - made, failed)
    return out
