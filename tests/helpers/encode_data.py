"""Test data for the encode stage: small real source files with dataset + captions rows.

A clip is a span of its source: each video clip here is the middle of a slightly longer source
video (``LEAD`` frames before it, one after), so reading a clip's frames exercises the span's
clip-to-source frame mapping."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.core import schemas
from pipeline.core.fs import sha256_file, sha256_json
from tests.helpers.synthetic_media import panning, textured, write_video


def blank_row(table: str) -> dict:
    """Every column of ``table`` with a neutral value (0, 0.0, False, "" or [])."""
    def blank(t):
        if isinstance(t, pl.List):
            return []
        return 0 if t in (schemas.I32, schemas.I64) else 0.0 if t == schemas.F64 else False if t == schemas.Bool else ""
    return {c: blank(t) for c, t in schemas.TABLES[table].items()}


LEAD = 2  # source frames before each video clip's span


def dataset_row(clip_id: str, path: Path, root: Path, kind: str, n_frames: int, fps: float, width: int, height: int,
                start: int = 0, source_frames: int = 0) -> dict:
    """A ``dataset`` row (clip columns + scores): the span ``[start, start + n_frames)`` of the
    source ``path`` under ``root`` (a photo: the whole photo); ``sha256`` a content address of the span."""
    row = blank_row("dataset")
    source_id = sha256_file(path)
    end = 1 if kind == "image" else start + n_frames
    row.update(
        clip_id=clip_id, source_id=source_id, source_path=path.name, kind=kind, n_frames=n_frames, fps=fps,
        width=width, height=height, path=path.relative_to(root).as_posix(), source_frames=source_frames,
        sha256=sha256_json({"source": source_id, "span": [start, end]}), status="ok",
        start_frame=start, end_frame=end, start_s=start / fps if fps else 0.0, end_s=end / fps if fps else 0.0,
    )
    return row


def caption_row(clip_id: str, caption: str, status: str = "ok") -> dict:
    row = blank_row("captions")
    row.update(clip_id=clip_id, caption=caption, status=status)
    return row


def make_video(root: Path, name: str, n: int, w: int = 80, h: int = 64, fps: int = 16, seed: int = 1) -> tuple[Path, dict]:
    """A source ``root/raw/<name>.mp4`` of ``LEAD + n + 1`` panning frames and the row of its ``n``-frame clip."""
    total = LEAD + n + 1
    big = textured(h + 2 * total, w + 2 * total, seed=seed)
    path = write_video(root / "raw" / f"{name}.mp4", panning(big, total, h, w, dx=1, dy=1), fps=fps)
    return path, dataset_row(name, path, root, "video", n, float(fps), w, h, start=LEAD, source_frames=total)


def make_image(root: Path, name: str, w: int = 72, h: int = 56, seed: int = 3) -> tuple[Path, dict]:
    import cv2

    path = root / "raw" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(textured(h, w, seed), cv2.COLOR_RGB2BGR))
    return path, dataset_row(name, path, root, "image", 1, 0.0, w, h)


def tables(rows: list[dict], captions: dict[str, str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    return schemas.frame("dataset", rows), schemas.frame("captions", [caption_row(k, v) for k, v in captions.items()])


def small_dataset(root: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Three videos (20, 40 and 24 frames at 16 fps: one 17-frame window each) and one image, all captioned."""
    rows = [
        make_video(root, "clip_a", 20, seed=1)[1],
        make_video(root, "clip_b", 40, w=96, h=64, seed=2)[1],
        make_video(root, "clip_c", 24, w=64, h=80, seed=4)[1],
        make_image(root, "photo_d")[1],
    ]
    caps = {"clip_a": "a red bike on a road", "clip_b": "waves at dusk", "clip_c": "a cat on a mat", "photo_d": "a portrait"}
    return tables(rows, caps)

