"""``vlp caption``: caption clips outside DVC, and record human caption edits."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import polars as pl

from pipeline.caption.edits import EditsError, read_edits, set_edit
from pipeline.params import load_params

EDITS = "data/captions_edits.csv"


def edit_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vlp caption edit", description="Set (or with an empty TEXT, remove) the human caption of a clip. It wins over the VLM on every run.")
    ap.add_argument("clip_id")
    ap.add_argument("text")
    ap.add_argument("--edits", default=EDITS, help=f"edits CSV (default {EDITS})")
    a = ap.parse_args(argv)
    try:
        set_edit(a.edits, a.clip_id, a.text)
        n = len(read_edits(a.edits))
    except EditsError as exc:
        print(f"vlp caption edit: {exc}", file=sys.stderr)
        return 1
    action = "set" if a.text.strip() else "removed"
    print(f"{a.edits}: caption of {a.clip_id} {action} ({n} edits); run 'dvc repro caption' to apply it")
    return 0


def run_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="vlp caption run",
        description="Caption the clips of a clips/dataset parquet table: OUT/captions.parquet, OUT/captions.parts/, OUT/metrics/caption.json.",
    )
    ap.add_argument("table", help="clips.parquet or dataset.parquet (columns clip_id, kind, path, fps, n_frames)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--params", default="params.yaml", help="params file whose 'caption' group is used (default params.yaml)")
    ap.add_argument("--edits", default=EDITS, help=f"edits CSV (default {EDITS})")
    ap.add_argument("--model", help="override caption.model (tiny, a hub id or a local folder)")
    ap.add_argument("--backend", choices=["transformers", "openai"], help="override caption.backend")
    ap.add_argument("--batch-size", type=int, help="override caption.batch_size")
    a = ap.parse_args(argv)

    from pipeline.caption.config import stage_paths
    from pipeline.caption.stage import run_caption

    params = load_params("caption", a.params) if Path(a.params).exists() else {}
    for key, value in (("model", a.model), ("backend", a.backend), ("batch_size", a.batch_size)):
        if value is not None:
            params[key] = value
    try:
        table = pl.read_parquet(a.table)
    except (OSError, pl.exceptions.PolarsError) as exc:
        print(f"vlp caption run: {a.table}: cannot read table ({exc})", file=sys.stderr)
        return 1
    paths = stage_paths(a.out)
    result, metrics = run_caption(table, params, paths["captions"], paths["parts"], paths["metrics"], a.edits)
    with pl.Config(tbl_rows=50, fmt_str_lengths=80, tbl_width_chars=160):
        print(result.select("clip_id", "kind", "source", "status", "caption"))
    logging.getLogger("caption").info("wrote %s", paths["captions"])
    return 0


SUBCOMMANDS = {"run": run_main, "edit": edit_main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: vlp caption {run,edit} ...\n\n"
              "  run TABLE --out DIR     caption the clips of a clips/dataset table outside DVC\n"
              "  edit CLIP_ID TEXT       set the human caption of a clip (data/captions_edits.csv)",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return SUBCOMMANDS[argv[0]](argv[1:])
