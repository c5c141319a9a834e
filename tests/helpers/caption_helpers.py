"""Shared set-up of the caption tests: real sample clips cut short, a real photo, the tiny VLM."""

from __future__ import annotations

from pathlib import Path

import av
import polars as pl

from pipeline.core import schemas
from pipeline.core.samples import sample_photo, sample_video
from pipeline.curate.split.cutting import Encoding, cut_clip


def frame_times(path: Path, limit: int = 200) -> list[float]:
    """Presentation times of the first ``limit`` frames (from packets, no decoding)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None)
    return pts[:limit]


def cut_sample_clips(root: Path) -> list[dict]:
    """Three short clips of real footage (bikes, carphone) and one real photo, as dataset rows."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    enc = Encoding(preset="ultrafast")
    for cid, name, start, end in (("bikes0", "bikes.mp4", 0, 30), ("bikes1", "bikes.mp4", 60, 85),
                                  ("carphone0", "carphone_pristine.mp4", 10, 40)):
        src = sample_video(name)
        dst = root / f"{cid}.mp4"
        n, w, h, fps = cut_clip(src, dst, frame_times(src), start, end, enc, clip_id=cid)
        rows.append(dataset_row(cid, "video", dst, fps, n, w, h))
    from PIL import Image

    photo = root / "astronaut.png"
    with Image.open(sample_photo("astronaut.png")) as im:
        im.convert("RGB").save(photo)
        rows.append(dataset_row("astronaut", "image", photo, 0.0, 1, im.width, im.height))
    return rows


def dataset_row(clip_id: str, kind: str, path: Path, fps: float, n: int, w: int, h: int) -> dict:
    """A ``dataset`` row; columns the caption stage does not read are left null."""
    known = {"clip_id": clip_id, "kind": kind, "path": str(path), "fps": fps, "n_frames": n,
             "width": w, "height": h, "status": "ok", "reason": "", "note": ""}
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
