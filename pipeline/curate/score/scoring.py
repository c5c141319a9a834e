"""Score clips: aggregate the measurements the split stage made of each source over each clip's span.

No frame is decoded here: the split stage's one decode of a source measured its sampled frames
(``data/clips/.measure``), and each clip's scores are computed from the rows inside its span
(:mod:`pipeline.curate.score.scorers`), so changing a threshold or ``max_frames`` re-runs this stage in
seconds. Aggregating is cheap, so it runs in this process (on ``engine: ray``, as Ray tasks, one
per source), with a progress bar. A clip whose measurements are missing or unreadable becomes an ``error`` row with a one-line reason
naming the file; the other clips go on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from tqdm import tqdm

from pipeline.core import schemas
from pipeline.core.errors import one_line
from pipeline.curate.measure.config import measure_file
from pipeline.curate.score.config import ScoreConfig
from pipeline.curate.score.scorers import (
    BorderScorer,
    ExposureScorer,
    FaceScorer,
    MotionScorer,
    PHashScorer,
    Scorer,
    SharpnessScorer,
    SpanMeasures,
)

if TYPE_CHECKING:
    from pipeline.core.ray_engine import RayEngine

log = logging.getLogger(__name__)


def make_scorers(cfg: ScoreConfig) -> list[Scorer]:
    """The scorers the score stage runs, in column order."""
    return [
        MotionScorer(static_pair_motion=cfg.static_pair_motion),
        SharpnessScorer(),
        ExposureScorer(pixel_share=cfg.pixel_share),
        BorderScorer(pixel_share=cfg.pixel_share),
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


def score_clip(clip: dict, measures: pl.DataFrame, cfg: ScoreConfig, scorers: list[Scorer] | None = None) -> dict:
    """A scores row for one clips row, from its source's measurements. Raises on failure."""
    scorers = scorers if scorers is not None else make_scorers(cfg)
    start, end = (0, 1) if clip["kind"] == "image" else (int(clip["start_frame"]), int(clip["end_frame"]))
    span = SpanMeasures.of(measures, start, end, clip["kind"], cfg.max_frames)
    if span.rows.height == 0:
        raise ValueError(f"{clip['path']}: no sampled frame in frames {start}-{end}")
    fps = float(clip.get("fps") or 0.0)
    row = _base_row(clip)
    row.update(duration_s=int(clip["n_frames"] or 0) / fps if fps > 0 else 0.0, n_sampled=span.used.height)
    for scorer in scorers:
        row.update(scorer(span))
    return row


def error_row(clip: dict, reason: str, scorers: list[Scorer]) -> dict:
    row = _base_row(clip)
    for scorer in scorers:
        row.update(dict.fromkeys(scorer.columns))
    row.update(status="error", reason=reason)
    return row


def _score_source(args) -> list[dict]:
    clips, path, cfg = args
    scorers = make_scorers(cfg)
    try:
        measures = schemas.read_table(path, "measures")
    except Exception as exc:  # noqa: BLE001 - one bad source must not stop the batch
        reason = (f"{clips[0]['path']}: no measurements at {path} for score params "
                  f"{cfg.measure().key()} (run the split stage: dvc repro split)" if not Path(path).exists()
                  else one_line(exc, with_type=False))
        return [error_row(c, reason, scorers) for c in clips]
    out = []
    for clip in clips:
        try:
            out.append(score_clip(clip, measures, cfg, scorers))
        except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the batch
            msg = one_line(exc, with_type=False)
            out.append(error_row(clip, msg if clip["path"] in msg else f"{clip['path']}: {one_line(exc)}", scorers))
    return out


def score_clips(clips: pl.DataFrame, clips_dir: str | os.PathLike, cfg: ScoreConfig = ScoreConfig(),
                ray: RayEngine | None = None) -> pl.DataFrame:
    """Score every ``ok`` clip of a clips table from the measurements in ``clips_dir``; return the
    scores table (sorted by clip_id). With ``ray``, sources are aggregated as Ray tasks (the same
    function). (Not in a local process pool: polars in a forked child of a process that already ran
    polars can deadlock, and aggregating takes milliseconds a clip.)"""
    ok = clips.filter(pl.col("status") == "ok").to_dicts()
    skipped = clips.height - len(ok)
    if skipped:
        log.info("score: skipping %d row(s) the split stage marked as errors or skipped sources", skipped)
    by_source: dict[str, list[dict]] = {}
    for c in ok:
        by_source.setdefault(c["source_id"], []).append(c)
    tasks = [(rows, str(measure_file(clips_dir, sid, cfg.measure())), cfg) for sid, rows in by_source.items()]
    rows: list[dict] = []
    bar = tqdm(total=len(ok), desc="score", unit="clip")

    def done(result: list[dict]) -> None:
        for row in result:
            if row["status"] != "ok":
                log.warning("score: %s", row["reason"])
            rows.append(row)
        bar.update(len(result))

    if ray is not None:
        for result in ray.map_items(_score_source, tasks, name="score"):
            done(result)
    else:
        for task in tasks:
            done(_score_source(task))
    bar.close()
    if not rows:
        return schemas.empty("scores")
    return schemas.frame("scores", rows).sort("clip_id")
