"""Compose the filter rules over the clips and their scores: kept clips, rejected clips with every
reason, counts per reason category, and the per-clip score table the DVC plots read. Each clip also
carries its source's licence and consent (from the sources table): a clip of a withdrawn source is
rejected whatever else is true of it (``consent withdrawn``)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.core import schemas
from pipeline.core.consent import UNKNOWN, WITHDRAWN, WITHDRAWN_REASON
from pipeline.curate.filter.rules import Consent, FilterConfig, find_duplicates, make_rules

# Categories of rejections that are not per-clip score rules.
SPLIT_ERROR = "split_error"
NO_CLIP = "no_clip"  # a source that gave no clip (split's "skipped" row)
SCORE_ERROR = "score_error"
NOT_SCORED = "not_scored"
DUPLICATE = "duplicate"
CONSENT = Consent.name  # a withdrawn source, or (filter.require_consent) a source without consent "yes"

PLOT_COLUMNS = [
    "motion", "static_fraction", "sharpness", "luma_mean", "luma_std", "black_fraction", "white_fraction",
    "letterbox", "pillarbox", "duration_s",
]
# The limit columns of the plots data: ``<score>_min`` / ``<score>_max``, the value the rules hold that row's
# score to (the DVC plot templates in .dvc/plots/ draw them as rules); see :func:`plot_limits`.
LIMIT_COLUMNS = [
    "duration_s_min", "duration_s_max", "motion_min", "static_fraction_max", "sharpness_min", "luma_mean_min",
    "luma_mean_max", "luma_std_min", "black_fraction_max", "white_fraction_max", "letterbox_max", "pillarbox_max",
]


def plot_limits(kind: str, cfg: FilterConfig) -> dict[str, float | None]:
    """The thresholds the rules apply to a clip of ``kind``, one per :data:`LIMIT_COLUMNS` name: null where no rule
    applies (a photo has no duration or motion limit; ``max_duration_s`` 0 is no limit); a photo's sharpness limit is
    ``image_min_sharpness``."""
    video = kind != "image"
    limits = {
        "duration_s_min": cfg.min_duration_s if video else None,
        "duration_s_max": cfg.max_duration_s if video and cfg.max_duration_s else None,
        "motion_min": cfg.min_motion if video else None,
        "static_fraction_max": cfg.max_static_fraction if video else None,
        "sharpness_min": cfg.min_sharpness if video else cfg.image_min_sharpness,
        "luma_mean_min": cfg.min_luma, "luma_mean_max": cfg.max_luma, "luma_std_min": cfg.min_contrast,
        "black_fraction_max": cfg.max_black_fraction, "white_fraction_max": cfg.max_white_fraction,
        "letterbox_max": cfg.max_letterbox, "pillarbox_max": cfg.max_pillarbox,
    }
    return {k: None if v is None else float(v) for k, v in limits.items()}


@dataclass
class FilterResult:
    dataset: pl.DataFrame  # schema "dataset"
    rejected: pl.DataFrame  # schema "rejected"
    metrics: dict  # counts kept / rejected / per reason category
    plot_rows: pl.DataFrame  # one row per scored clip: each score, kept or not, first reason category, verdict, limits


def join_scores(clips: pl.DataFrame, scores: pl.DataFrame, sources: pl.DataFrame | None = None) -> list[dict]:
    """Clip rows with their score columns (nulls where a clip has no score row) and their source's
    ``licence`` and ``consent`` (``""`` and ``unknown`` without a sources table or row)."""
    score_cols = [c for c in schemas.SCORES if c not in schemas.CLIPS and c not in ("status", "reason")]
    right = scores.select(
        "clip_id", *score_cols, pl.col("status").alias("score_status"), pl.col("reason").alias("score_reason")
    )
    out = clips.join(right, on="clip_id", how="left")
    if sources is not None:  # ok sources have distinct ids (a copy is a rejected "duplicate of" row)
        src = sources.filter(pl.col("status") == "ok").select("source_id", "licence", "consent").unique("source_id")
        out = out.join(src, on="source_id", how="left")
    else:
        out = out.with_columns(pl.lit(None, pl.String).alias("licence"), pl.lit(None, pl.String).alias("consent"))
    return out.with_columns(pl.col("licence").fill_null(""), pl.col("consent").fill_null(UNKNOWN)).to_dicts()


def filter_clips(clips: pl.DataFrame, scores: pl.DataFrame, cfg: FilterConfig = FilterConfig(),
                 sources: pl.DataFrame | None = None) -> FilterResult:
    """Apply every rule to every clip, then drop near-duplicates among the clips that passed.
    ``sources``: the sources table, for each clip's consent (without it every clip's is ``unknown``)."""
    rules = make_rules(cfg)
    rows = join_scores(clips, scores, sources)
    reasons: dict[str, list[str]] = {}
    categories: dict[str, list[str]] = {}

    def reject(row: dict, category: str, reason: str) -> None:
        reasons.setdefault(row["clip_id"], []).append(reason)
        categories.setdefault(row["clip_id"], []).append(category)

    passed: list[dict] = []
    for row in rows:
        if row["consent"] == WITHDRAWN or (row["status"] == "skipped" and row["reason"] == WITHDRAWN_REASON):
            reject(row, CONSENT, WITHDRAWN_REASON)  # whatever else is true of the clip
            continue
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
            # what the plot templates colour by: "kept", or the rule that rejected the clip (its first reason)
            "verdict": categories[r["clip_id"]][0] if r["clip_id"] in reasons else "kept",
            **{c: r[c] for c in PLOT_COLUMNS if c in r},
            "letterbox": r["border_top"] + r["border_bottom"],
            "pillarbox": r["border_left"] + r["border_right"],
            **plot_limits(r["kind"], cfg),
        }
        for r in rows
        if r["score_status"] == "ok"
    ]
    plot_schema = {"clip_id": pl.String, "kind": pl.String, "kept": pl.Boolean, "reason": pl.String,
                   "verdict": pl.String, **dict.fromkeys(PLOT_COLUMNS, pl.Float64),
                   **dict.fromkeys(LIMIT_COLUMNS, pl.Float64)}
    plots = pl.DataFrame(plot_rows, schema=plot_schema) if plot_rows else pl.DataFrame(schema=plot_schema)
    return FilterResult(dataset=dataset, rejected=rejected, metrics=metrics, plot_rows=plots)
