"""A small curated dataset built by hand (real tiny source files + every table) for the report and export tests.

Sources (under ``root/data/raw``): two videos, one photo, one rejected file. A clip is a span of its
source: v1a, v1b, v1c are frames 0-20, 20-40, 40-60 of alice_walk.mp4 (three scenes of 20 frames),
v2a and v2b frames 0-20 and 20-40 of bob.mp4. Clips: v1a (kept, VLM caption), v1b (kept, edited
caption), v1c (rejected: static + too dark), v2a (kept, caption failed), v2b (split error), p1 (kept
photo). ``path`` in the clip tables is the source file relative to ``root``, as in the repository;
``sha256`` a content address of the span; no clip file is written (``clip_file`` "").
"""

from __future__ import annotations

from pathlib import Path

import cv2
import polars as pl

from pipeline.core import schemas
from pipeline.core.fs import sha256_json
from tests.helpers.synthetic_media import scenes_video, textured

FPS = 25.0
RAW = "data/raw"  # the sources, relative to root


def _frame(name: str, rows: list[dict]) -> pl.DataFrame:
    """schemas.frame, with columns these tests do not care about left null (the schemas grow as stages land)."""
    cols = schemas.TABLES[name]
    return schemas.frame(name, [{c: r.get(c) for c in cols} for r in rows])


def _conform(df: pl.DataFrame, name: str) -> pl.DataFrame:
    missing = [c for c in schemas.TABLES[name] if c not in df.columns]
    return schemas.conform(df.with_columns([pl.lit(None).alias(c) for c in missing]), name)


def _source(sid, path, kind, status="ok", reason="", w=128, h=72, n=60):
    return {"source_id": sid, "path": path, "kind": kind, "size_bytes": 1000, "container": "mp4" if kind == "video" else "png_pipe",
            "codec": "h264" if kind == "video" else "png", "width": w, "height": h, "rotation": 0,
            "fps": FPS if kind == "video" else 0.0, "vfr": False, "n_frames": n if kind == "video" else 1,
            "duration_s": n / FPS if kind == "video" else 0.0, "has_audio": False, "status": status, "reason": reason}


def _clip(cid, sid, spath, kind, start, end, status="ok", reason="", w=128, h=72, source_frames=0):
    """A clips row: the span [start, end) of the source ``spath`` (relative to the raw folder)."""
    n = 1 if kind == "image" else end - start
    return {"clip_id": cid, "source_id": sid, "source_path": spath, "kind": kind, "scene_index": 0,
            "start_frame": start, "end_frame": end, "start_s": start / FPS, "end_s": end / FPS, "n_frames": n,
            "fps": FPS if kind == "video" else 0.0, "resampled": False, "rotation_applied": 0, "width": w, "height": h,
            "path": f"{RAW}/{spath}", "source_frames": source_frames, "clip_file": "",
            "sha256": sha256_json({"source": sid, "span": [start, end]}), "status": status, "reason": reason, "note": ""}


def _score(cid, kind, motion, sharp, luma, static=0.0, black=0.0, n=20):
    return {"clip_id": cid, "kind": kind, "duration_s": 0.0 if kind == "image" else n / FPS, "width": 128, "height": 72,
            "n_sampled": 1 if kind == "image" else 8, "motion": motion, "static_fraction": static, "sharpness": sharp,
            "luma_mean": luma, "luma_std": 40.0, "black_fraction": black, "white_fraction": 0.0, "border_top": 0.0,
            "border_bottom": 0.0, "border_left": 0.0, "border_right": 0.0, "phash": "f0f0f0f0f0f0f0f0",
            "status": "ok", "reason": ""}


def build(root: Path) -> dict:
    """Write the source files under ``root/data/raw`` and every table under ``root/data``; return the frames."""
    raw = root / RAW
    scenes_video(raw / "people" / "alice_walk.mp4", [20, 20, 20], h=72, w=128, fps=int(FPS))
    scenes_video(raw / "bob.mp4", [20, 20], h=72, w=128, fps=int(FPS))
    photo = textured(72, 96, seed=5)
    photo[20:50, 30:60] = (255, 40, 40)  # something to see in the thumbnail
    (raw / "photos").mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    (raw / "photos" / "cat <1>.png").write_bytes(png.tobytes())  # cv2.imwrite does not take every file name
    (raw / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")

    s1, s2, sp, sx = "a1" * 32, "b2" * 32, "c3" * 32, "d4" * 32
    names = ("v1a", "v1b", "v1c", "v2a", "v2b", "p1")
    ids = {name: f"{name}{'0' * (64 - len(name))}".replace("v", "e").replace("p", "f") for name in names}
    sources = _frame("sources", [
        _source(s1, "people/alice_walk.mp4", "video"), _source(s2, "bob.mp4", "video"),
        _source(sp, "photos/cat <1>.png", "image", w=96), _source(sx, "broken.mp4", "video", status="rejected",
                                                                   reason="truncated: 12 of 60 frames decode"),
    ])
    clips = _frame("clips", [
        _clip(ids["v1a"], s1, "people/alice_walk.mp4", "video", 0, 20, source_frames=60),
        _clip(ids["v1b"], s1, "people/alice_walk.mp4", "video", 20, 40, source_frames=60),
        _clip(ids["v1c"], s1, "people/alice_walk.mp4", "video", 40, 60, source_frames=60),
        _clip(ids["v2a"], s2, "bob.mp4", "video", 0, 20, source_frames=40),
        _clip(ids["v2b"], s2, "bob.mp4", "video", 20, 40, status="error", reason="decoded 18 frames, span says 20",
              source_frames=40),
        _clip(ids["p1"], sp, "photos/cat <1>.png", "image", 0, 1, w=96),
    ])
    scores = _frame("scores", [
        _score(ids["v1a"], "video", 0.02, 300.0, 120.0), _score(ids["v1b"], "video", 0.03, 250.0, 110.0),
        _score(ids["v1c"], "video", 0.0001, 40.0, 12.0, static=0.95, black=0.6),
        _score(ids["v2a"], "video", 0.05, 500.0, 140.0), _score(ids["p1"], "image", 0.0, 800.0, 100.0),
    ])
    joined = clips.join(scores.drop("kind", "status", "reason", "width", "height", "duration_s"), on="clip_id")
    joined = joined.with_columns(duration_s=joined["end_s"] - joined["start_s"])
    kept = [ids["v1a"], ids["v1b"], ids["v2a"], ids["p1"]]
    dataset = _conform(joined.filter(joined["clip_id"].is_in(kept)), "dataset")
    rej = joined.filter(joined["clip_id"] == ids["v1c"]).with_columns(
        pl.Series("reasons", [["static: static_fraction 0.95 > 0.9", "too dark: luma_mean 12.0 < 30"]], dtype=pl.List(pl.String)))
    rejected = _conform(rej, "rejected")
    cap = lambda cid, text, src="vlm", status="ok", reason="": {  # noqa: E731
        "clip_id": cid, "caption": text, "model": "tiny@abc", "prompt_sha256": "0" * 64, "sampling": "{}",
        "source": src, "status": status, "reason": reason, "created_at": "2026-11-28T08:00:00Z"}
    captions = _frame("captions", [
        cap(ids["v1a"], "sks woman walks along a <b>street</b> & waves"),
        cap(ids["v1b"], "sks woman turns to the camera", src="edit"),
        cap(ids["v2a"], "", status="caption_failed", reason="VLM returned an empty caption"),
        cap(ids["p1"], "sks cat portrait, red square"),
    ])
    data = root / "data"
    for name, df in (("sources", sources), ("clips", clips), ("scores", scores), ("dataset", dataset),
                     ("rejected", rejected), ("captions", captions)):
        schemas.write_table(df, data / f"{name}.parquet", name)
    return {"ids": ids, "sources": sources, "clips": clips, "scores": scores, "dataset": dataset,
            "rejected": rejected, "captions": captions, "kept": kept}
