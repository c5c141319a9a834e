"""Score clips: decode each clip once at a reduced resolution, run every scorer on those frames.

Clips are scored in parallel worker processes with a progress bar. A clip that cannot be
decoded (or whose scoring raises) becomes an ``error`` row with a one-line reason naming the
file; the other clips go on.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from pipeline import schemas
from pipeline.score_frames import FrameSampling, decode_frames
from pipeline.scorers import BorderScorer, ExposureScorer, MotionScorer, PHashScorer, SharpnessScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreConfig:
    sampling: FrameSampling = field(default_factory=FrameSampling)
    flow_short_side: int = 64  # optical flow runs on frames shrunk to this short side
    static_pair_motion: float = 0.005  # a frame pair moving less (diagonals/s) counts as static
    black_level: int = 24  # luma at or below which a pixel is dark (near-black frames, bars)
    white_level: int = 232  # luma at or above which a pixel is bright (near-white frames)
    pixel_share: float = 0.02  # share of pixels allowed to break the black/white/bar rule

    KEYS = ("short_side", "sample_fps", "max_frames", "flow_short_side", "static_pair_motion", "black_level",
            "white_level", "pixel_share")

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> "ScoreConfig":
        """From the ``score`` params group (``jobs`` is read by the caller)."""
        unknown = sorted(set(p) - set(cls.KEYS) - {"jobs"})
        if unknown:
            raise KeyError(f"score params: unknown key(s) {unknown}")
        return cls(
            sampling=FrameSampling(
                short_side=int(p.get("short_side", 160)),
                sample_fps=float(p.get("sample_fps", 8.0)),
                max_frames=int(p.get("max_frames", 48)),
            ),
            flow_short_side=int(p.get("flow_short_side", 64)),
            static_pair_motion=float(p.get("static_pair_motion", 0.005)),
            black_level=int(p.get("black_level", 24)),
            white_level=int(p.get("white_level", 232)),
            pixel_share=float(p.get("pixel_share", 0.02)),
        )


def make_scorers(cfg: ScoreConfig) -> list:
    """The scorers the score stage runs, in column order."""
    return [
        MotionScorer(static_pair_motion=cfg.static_pair_motion, flow_short_side=cfg.flow_short_side),
        SharpnessScorer(),
        ExposureScorer(black_level=cfg.black_level, white_level=cfg.white_level, pixel_share=cfg.pixel_share),
        BorderScorer(dark_level=cfg.black_level, pixel_share=cfg.pixel_share),
        PHashScorer(),
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


def score_clip(clip: dict, root: str | os.PathLike, cfg: ScoreConfig, scorers: list | None = None) -> dict:
    """A scores row for one clips row (``path`` relative to ``root``). Raises on failure."""
    scorers = scorers if scorers is not None else make_scorers(cfg)
    frames = decode_frames(Path(root) / clip["path"], clip["kind"], cfg.sampling, int(clip.get("n_frames") or 0))
    row = _base_row(clip)
    row.update(duration_s=frames.duration_s, width=frames.width, height=frames.height, n_sampled=len(frames.gray))
    for scorer in scorers:
        row.update(scorer(frames))
    return row


def error_row(clip: dict, reason: str, scorers: list) -> dict:
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
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if clip["path"] not in msg:
            msg = f"{clip['path']}: {type(exc).__name__}: {msg}"
        return error_row(clip, msg, scorers)


def score_clips(clips: pl.DataFrame, root: str | os.PathLike = ".", cfg: ScoreConfig = ScoreConfig(),
                jobs: int = 1) -> pl.DataFrame:
    """Score every ``ok`` clip of a clips table; return the scores table (sorted by clip_id)."""
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

    if jobs <= 1 or len(tasks) <= 1:
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
