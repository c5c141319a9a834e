"""``vlp score`` and ``vlp filter``: the score and filter stages outside DVC, on a folder written by
``vlp split --out DIR`` (DIR/clips.parquet; clip paths relative to the current folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from pipeline import schemas
from pipeline.filtering import filter_clips
from pipeline.filters import FilterConfig
from pipeline.fsutil import write_json
from pipeline.params import load_params, resolve_jobs
from pipeline.scoring import ScoreConfig, score_clips


def _group(params: str | None, group: str) -> dict:
    return load_params(group, params) if params else {}


def score_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vlp score", description="Score clips: motion, sharpness, exposure, bars, pHash.")
    ap.add_argument("dir", help="folder holding clips.parquet (from vlp split --out DIR); writes DIR/scores.parquet")
    ap.add_argument("--params", help="read the 'score' group of this params.yaml (default: built-in defaults)")
    ap.add_argument("--jobs", type=int, default=0, help="clips in parallel; 0 = all cores")
    args = ap.parse_args(argv)
    folder = Path(args.dir)
    clips = schemas.read_table(folder / "clips.parquet", "clips")
    table = score_clips(clips, ".", ScoreConfig.from_params(_group(args.params, "score")), jobs=resolve_jobs(args.jobs))
    schemas.write_table(table, folder / "scores.parquet", "scores")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, float_precision=4):
        print(table.select("clip_id", "duration_s", "motion", "static_fraction", "sharpness", "luma_mean",
                           "luma_std", "border_top", "border_left", "phash", "status"))
    print(f"wrote {folder / 'scores.parquet'}")
    return 0


def filter_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vlp filter", description="Keep the clips that pass every threshold; list why the others did not.")
    ap.add_argument("dir", help="folder holding clips.parquet and scores.parquet; writes dataset.parquet, rejected.parquet, filter.json")
    ap.add_argument("--params", help="read the 'filter' group of this params.yaml (default: built-in defaults)")
    args = ap.parse_args(argv)
    folder = Path(args.dir)
    result = filter_clips(schemas.read_table(folder / "clips.parquet", "clips"),
                          schemas.read_table(folder / "scores.parquet", "scores"),
                          FilterConfig.from_params(_group(args.params, "filter")))
    schemas.write_table(result.dataset, folder / "dataset.parquet", "dataset")
    schemas.write_table(result.rejected, folder / "rejected.parquet", "rejected")
    write_json(folder / "filter.json", result.metrics)
    for row in result.rejected.select("clip_id", "reasons").to_dicts():
        print(f"rejected {row['clip_id']}: {'; '.join(row['reasons'])}")
    print(f"kept {result.dataset.height} of {result.metrics['clips']} clips -> {folder / 'dataset.parquet'}")
    return 0
