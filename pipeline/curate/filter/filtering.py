"""Compose the filter rules over the clips and their scores: kept clips, rejected clips with every
reason, counts per reason category, and the per-clip score table the DVC plots read."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.core import schemas
from pipeline.curate.filter.rules import FilterConfig, find_duplicates, make_rules

# Categories of rejections that are not per-clip score rules.
SPLIT_ERROR = "split_error"
NO_CLIP = "no_clip"  # a source that gave no clip (split's "skipped" row)
SCORE_ERROR = "score_error"
NOT_SCORED = "not_scored"
DUPLICATE = "duplicate"

PLOT_COLUMNS = [
    "motion", "static_fraction", "sharpness", "luma_mean", "luma_std", "black_fraction", "white_fraction",
    "letterbox", "pillarbox", "duration_s",
]


@dataclass
class FilterResult:
    dataset: pl.DataFrame  # schema "dataset"
    rejected: pl.DataFrame  # schema "rejected"
    metrics: dict  # counts kept / rejected / per reason category
    plot_rows: pl.DataFrame  # one row per scored clip: each score, kept or not, first reason category


def join_scores(clips: pl.DataFrame, scores: pl.DataFrame) -> list[dict]:
    """Clip rows with their score columns (nulls where a clip has no score row)."""
    score_cols = [c for c in schemas.SCORES if c not in schemas.CLIPS and c not in ("status", "reason")]
    right = scores.select(
        "clip_id", *score_cols, pl.col("status").alias("score_status"), pl.col("reason").alias("score_reason")
    )
    return clips.join(right, on="clip_id", how="left").to_dicts()


def filter_clips(clips: pl.DataFrame, scores: pl.DataFrame, cfg: FilterConfig = FilterConfig()) -> FilterResult:
    """Apply every rule to every clip, then drop near-duplicates among the clips that passed."""
    rules = make_rules(cfg)
    rows = join_scores(clips, scores)
    reasons: dict[str, list[str]] = {}
    categories: dict[str, list[str]] = {}

    def reject(row: dict, category: str, reason: str) -> None:
        reasons.setdefault(row["clip_id"], []).append(reason)
        categories.setdefault(row["clip_id"], []).append(category)

    passed: list[dict] = []
    for row in rows:
        if row["status"] == "skipped":
            reject(row, NO_CLIP, row["reason"])
            continue
        if row["status"] != "ok":
            reject(row, SPLIT_ERROR, f"split error: {row['reason']}")
            continue
        if row["score_status"] is None:
            reject(row, NOT_SCORED, "not scored: no row in the scores table (re-run the score stage)")
            continue
        if row["score_status"] != "ok":
            reject(row, SCORE_ERROR, f"score error: {row['score_reason']}")
            continue
        for rule in rules:
            why = rule(row)
            if why:
                reject(row, rule.name, why)
        if row["clip_id"] not in reasons:
            passed.append(row)
    for cid, why in find_duplicates(passed, cfg.dedup_max_distance, cfg.dedup_same_scene).items():
        reasons[cid] = [why]
        categories[cid] = [DUPLICATE]

    kept_rows = [r for r in rows if r["clip_id"] not in reasons]
    rejected_rows = [{**r, "reasons": reasons[r["clip_id"]]} for r in rows if r["clip_id"] in reasons]
    dataset = schemas.frame("dataset", kept_rows)
    rejected = schemas.frame("rejected", rejected_rows)

    by_category = dict.fromkeys([r.name for r in rules] + [DUPLICATE, SPLIT_ERROR, NO_CLIP, SCORE_ERROR, NOT_SCORED], 0)
    for cats in categories.values():
        for c in set(cats):
            by_category[c] += 1
    metrics = {
        "clips": len(rows),
        "kept": len(kept_rows),
        "rejected": len(rejected_rows),
        "kept_seconds": round(sum((r["duration_s"] or 0.0) for r in kept_rows), 3),
        "rejected_by": by_category,
    }
    plot_rows = [
        {
            "clip_id": r["clip_id"],
            "kind": r["kind"],
            "kept": r["clip_id"] not in reasons,
            "reason": categories[r["clip_id"]][0] if r["clip_id"] in reasons else "",
            **{c: r[c] for c in PLOT_COLUMNS if c in r},
            "letterbox": r["border_top"] + r["border_bottom"],
            "pillarbox": r["border_left"] + r["border_right"],
        }
        for r in rows
        if r["score_status"] == "ok"
    ]
    plot_schema = {"clip_id": pl.String, "kind": pl.String, "kept": pl.Boolean, "reason": pl.String,
                   **dict.fromkeys(PLOT_COLUMNS, pl.Float64)}
    plots = pl.DataFrame(plot_rows, schema=plot_schema) if plot_rows else pl.DataFrame(schema=plot_schema)
    return FilterResult(dataset=dataset, rejected=rejected, metrics=metrics, plot_rows=plots)
