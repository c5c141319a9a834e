"""Score clips: decode each clip once at a reduced resolution, run every scorer on those frames.

Clips are scored in parallel worker processes with a progress bar. A clip that cannot be
decoded (or whose scoring raises) becomes an ``error`` row with a one-line reason naming the
file; the other clips go on.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from tqdm import tqdm

from pipeline.core import schemas
from pipeline.core.errors import one_line
from pipeline.curate.score.config import ScoreConfig
from pipeline.curate.score.frames import decode_frames
from pipeline.curate.score.scorers import (
    BorderScorer,
    ExposureScorer,
    FaceScorer,
    MotionScorer,
    PHashScorer,
    Scorer,
    SharpnessScorer,
)

if TYPE_CHECKING:
    from pipeline.core.ray_engine import RayEngine

log = logging.getLogger(__name__)


def make_scorers(cfg: ScoreConfig) -> list[Scorer]:
    """The scorers the score stage runs, in column order."""
    return [
        MotionScorer(static_pair_motion=cfg.static_pair_motion, flow_short_side=cfg.flow_short_side),
        SharpnessScorer(),
        ExposureScorer(black_level=cfg.black_level, white_level=cfg.white_level, pixel_share=cfg.pixel_share),
        BorderScorer(dark_level=cfg.black_level, pixel_share=cfg.pixel_share),
        PHashScorer(),
        FaceScorer(min_confidence=cfg.face_min_confidence, min_share=cfg.face_min_share, enabled=cfg.faces),
    ]


def _base_row(clip: dict) -> dict:
    return {
        "clip_id": clip["clip_id"],
        "kind": clip["kind"],
        "duration_s": None,
        "width": clip.get("width"),
        "height": clip.get("height"),
        "n_sampled": 0,
        "status": "ok",
        "reason": "",
    }


def score_clip(clip: dict, root: str | os.PathLike, cfg: ScoreConfig, scorers: list[Scorer] | None = None) -> dict:
    """A scores row for one clips row (``path`` relative to ``root``). Raises on failure."""
    scorers = scorers if scorers is not None else make_scorers(cfg)
    frames = decode_frames(Path(root) / clip["path"], clip["kind"], cfg.sampling, int(clip.get("n_frames") or 0))
    row = _base_row(clip)
    row.update(duration_s=frames.duration_s, width=frames.width, height=frames.height, n_sampled=len(frames.gray))
    for scorer in scorers:
        row.update(scorer(frames))
    return row


def error_row(clip: dict, reason: str, scorers: list[Scorer]) -> dict:
    row = _base_row(clip)
    for scorer in scorers:
        row.update(dict.fromkeys(scorer.columns))
    row.update(status="error", reason=reason)
    return row


def _score_one(args) -> dict:
    clip, root, cfg = args
    # No cv2.setNumThreads here: in a forked worker whose parent already ran OpenCV it deadlocks
    # (it tries to stop the parent's thread pool). The frames are small; OpenCV barely threads them.
    scorers = make_scorers(cfg)
    try:
        return score_clip(clip, root, cfg, scorers)
    except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the batch
        msg = one_line(exc, with_type=False)
        if clip["path"] not in msg:
            msg = f"{clip['path']}: {one_line(exc)}"
        return error_row(clip, msg, scorers)


def score_clips(clips: pl.DataFrame, root: str | os.PathLike = ".", cfg: ScoreConfig = ScoreConfig(),
                jobs: int = 1, ray: RayEngine | None = None) -> pl.DataFrame:
    """Score every ``ok`` clip of a clips table; return the scores table (sorted by clip_id).
    With ``ray``, clips are scored as Ray tasks (the same function) instead of ``jobs`` local processes."""
    make_scorers(cfg)  # a missing face model fails here, once, not in every clip's worker
    ok = clips.filter(pl.col("status") == "ok").to_dicts()
    skipped = clips.height - len(ok)
    if skipped:
        log.info("score: skipping %d clip(s) the split stage marked as errors", skipped)
    tasks = [(c, str(root), cfg) for c in ok]
    rows: list[dict] = []
    bar = tqdm(total=len(tasks), desc="score", unit="clip")

    def done(row: dict) -> None:
        if row["status"] != "ok":
            log.warning("score: %s", row["reason"])
        rows.append(row)
        bar.update()

    if ray is not None:
        for row in ray.map_items(_score_one, tasks, name="score"):
            done(row)
    elif jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            done(_score_one(task))
    else:
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
            for fut in as_completed([pool.submit(_score_one, t) for t in tasks]):
                done(fut.result())
    bar.close()
    if not rows:
        return schemas.empty("scores")
    return schemas.frame("scores", rows).sort("clip_id")
