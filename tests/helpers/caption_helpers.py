"""Shared set-up of the caption tests: spans of real sample videos, a real photo, the tiny VLM."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.core import media, schemas
from pipeline.core.samples import sample_photo, sample_video


def cut_sample_clips(root: Path) -> list[dict]:
    """Three short clips of real footage (bikes, carphone) and one real photo, as dataset rows.

    A clip is a span of its source: the rows name the sample videos themselves (absolute paths),
    nothing is cut; the photo is copied under ``root`` as an RGB PNG."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for cid, name, start, end in (("bikes0", "bikes.mp4", 0, 30), ("bikes1", "bikes.mp4", 60, 85),
                                  ("carphone0", "carphone_pristine.mp4", 10, 40)):
        src = sample_video(name)
        info = media.video_info(src)
        rows.append(dataset_row(cid, "video", src, info.fps, end - start, info.width, info.height,
                                start=start, source_frames=info.n_frames))
    from PIL import Image

    photo = root / "astronaut.png"
    with Image.open(sample_photo("astronaut.png")) as im:
        im.convert("RGB").save(photo)
        rows.append(dataset_row("astronaut", "image", photo, 0.0, 1, im.width, im.height))
    return rows


def dataset_row(clip_id: str, kind: str, path: Path, fps: float, n: int, w: int, h: int, start: int = 0,
                source_frames: int = 0) -> dict:
    """A ``dataset`` row: the span ``[start, start + n)`` of ``path`` (a photo: 0-1); columns the
    caption stage does not read are left null."""
    end = 1 if kind == "image" else start + n
    known = {"clip_id": clip_id, "kind": kind, "path": str(path), "fps": fps, "n_frames": n,
             "start_frame": 0 if kind == "image" else start, "end_frame": end, "resampled": False,
             "source_frames": source_frames, "clip_file": "", "width": w, "height": h, "status": "ok",
             "reason": "", "note": ""}
    return {c: known.get(c) for c in schemas.DATASET}


def dataset(rows: list[dict]) -> pl.DataFrame:
    return schemas.frame("dataset", rows)


def tiny_params(tiny_dir: Path, **over) -> dict:
    """Caption params that keep the tiny model fast on a CPU (few, small frames; short answers)."""
    p = {"backend": "transformers", "model": "tiny", "tiny_dir": str(tiny_dir), "device": "cpu", "fps": 4.0,
         "max_frames": 4, "max_pixels": 56 * 112, "image_max_pixels": 112 * 112, "max_new_tokens": 20,
         "batch_size": 2, "chunk_size": 8}
    p.update(over)
    return p
