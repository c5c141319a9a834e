"""``vlp probe`` and ``vlp split``: the probe and split stages outside DVC."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import polars as pl

from pipeline import schemas
from pipeline.params import resolve_jobs
from pipeline.probe import list_media
from pipeline.probe_table import probe_paths
from pipeline.split import SplitConfig, split_sources


def _expand(inputs: list[str]) -> tuple[list[Path], Path]:
    """Files named, plus the media inside folders named; and the common folder they sit in."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        paths += list_media(p) if p.is_dir() else [p]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"vlp: no such file: {', '.join(missing)}")
    if not paths:
        raise SystemExit("vlp: no media files given")
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return [p.resolve() for p in paths], root


def _print(df: pl.DataFrame, columns: list[str]) -> None:
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=160, tbl_width_chars=400):
        print(df.select(columns))


def probe_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vlp probe", description="Probe videos and images and print what they are.")
    ap.add_argument("inputs", nargs="+", help="video/image files or folders")
    ap.add_argument("--out", help="also write the table to this parquet file")
    args = ap.parse_args(argv)
    paths, root = _expand(args.inputs)
    table = probe_paths(paths, root)
    shown = table.with_columns(pl.Series("path", [os.path.relpath(p) for p in paths]))
    _print(shown, ["path", "kind", "codec", "width", "height", "rotation", "fps", "vfr", "n_frames",
                   "duration_s", "has_audio", "status", "reason"])
    if args.out:
        schemas.write_table(table, args.out, "sources")
    return 0


def split_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vlp split", description="Split videos into scene clips (same code as the split stage).")
    ap.add_argument("inputs", nargs="+", help="video/image files or folders")
    ap.add_argument("--out", required=True, help="folder for the clips and clips.parquet")
    ap.add_argument("--detector", default="adaptive", help="adaptive | content | threshold | hash | histogram")
    ap.add_argument("--min-s", type=float, default=1.0, help="shortest clip in seconds (default 1.0)")
    ap.add_argument("--max-s", type=float, default=10.0, help="longest clip in seconds (default 10.0)")
    ap.add_argument("--trim-frames", type=int, default=1, help="frames dropped at each cut (default 1)")
    ap.add_argument("--fps", type=float, default=None, help="resample clips to this frame rate")
    ap.add_argument("--crf", type=int, default=18, help="x264 quality (default 18)")
    ap.add_argument("--jobs", type=int, default=0, help="videos in parallel; 0 = all cores")
    args = ap.parse_args(argv)
    paths, root = _expand(args.inputs)
    sources = probe_paths(paths, root)
    cfg = SplitConfig.from_params(
        {"detector": args.detector, "min_s": args.min_s, "max_s": args.max_s, "trim_frames": args.trim_frames,
         "fps": args.fps, "crf": args.crf}
    )
    out = Path(args.out)
    table_path = out / "clips.parquet"
    previous = schemas.read_table(table_path, "clips") if table_path.exists() else None
    clips = split_sources(sources, root, out, cfg, previous, jobs=resolve_jobs(args.jobs))
    schemas.write_table(clips, table_path, "clips")
    _print(clips, ["clip_id", "source_path", "start_frame", "end_frame", "n_frames", "fps", "width", "height",
                   "status", "reason"])
    print(f"wrote {table_path}")
    return 0
