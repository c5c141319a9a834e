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
DATA = "data"
CLIP_ID_CHARS = frozenset("0123456789abcdef")
CLIP_ID_LENGTH = 16  # pipeline.split.make_clip_id: the first 16 hex digits of a sha256
MIN_PREFIX = 4


class ClipIdError(ValueError):
    """A clip id given on the command line names no kept clip (or more than one)."""


def kept_clip_ids(data_dir: str | Path) -> list[str]:
    """Ids of the clips the caption stage captions: the rows of ``DATA/dataset.parquet`` with status ok."""
    path = Path(data_dir) / "dataset.parquet"
    if not path.exists():
        raise ClipIdError(f"{path}: not found, so the clip id cannot be checked (run the pipeline up to "
                          "the filter stage, or point --data at the folder holding dataset.parquet)")
    try:
        table = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ClipIdError(f"{path}: cannot read the kept clips ({' '.join(str(exc).split())[:200]})") from None
    if "clip_id" not in table.columns:
        raise ClipIdError(f"{path}: no clip_id column")
    if "status" in table.columns:
        table = table.filter(pl.col("status") == "ok")
    return table["clip_id"].drop_nulls().cast(pl.Utf8).to_list()


def resolve_clip_id(given: str, known: list[str], where: str) -> str:
    """The kept clip ``given`` names: its exact id, or the one id it is a prefix of (at least
    ``MIN_PREFIX`` hex characters). Path-like text, anything but lowercase hex, an unknown id
    and an ambiguous prefix are a :class:`ClipIdError`; ``where`` names the table in messages."""
    if not given or any(bad in given for bad in ("/", "\\", "..")):
        raise ClipIdError(f"{given!r} is not a clip id but looks like a path (clip ids are {CLIP_ID_LENGTH} "
                          "lowercase hex characters)")
    if given in known:
        return given
    if not set(given) <= CLIP_ID_CHARS or len(given) > CLIP_ID_LENGTH:
        raise ClipIdError(f"{given!r} is not a clip id (clip ids are {CLIP_ID_LENGTH} lowercase hex characters)")
    if len(given) < MIN_PREFIX:
        raise ClipIdError(f"{given!r} is too short: give at least {MIN_PREFIX} characters of the clip id")
    matches = sorted({cid for cid in known if cid.startswith(given)})
    if not matches:
        raise ClipIdError(f"no kept clip in {where} has the id {given!r}")
    if len(matches) > 1:
        shown = ", ".join(matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
        raise ClipIdError(f"clip id prefix {given!r} is ambiguous in {where}: {shown}")
    return matches[0]


def edit_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="vlp caption edit",
        description="Set (or with an empty TEXT, remove) the human caption of a clip. It wins over the VLM on every "
                    "run. CLIP_ID is a kept clip's id (DATA/dataset.parquet) or a unique prefix of it (4+ characters).")
    ap.add_argument("clip_id")
    ap.add_argument("text")
    ap.add_argument("--edits", default=EDITS, help=f"edits CSV (default {EDITS})")
    ap.add_argument("--data", default=DATA, help=f"folder holding dataset.parquet, the kept clips (default {DATA})")
    a = ap.parse_args(argv)
    removing = not a.text.strip()
    try:
        known = kept_clip_ids(a.data)
        if removing:  # an edit of a clip no longer kept can still be removed
            known += list(read_edits(a.edits))
        clip_id = resolve_clip_id(a.clip_id, known, str(Path(a.data) / "dataset.parquet"))
        set_edit(a.edits, clip_id, a.text)
        n = len(read_edits(a.edits))
    except (EditsError, ClipIdError) as exc:
        print(f"vlp caption edit: {exc}", file=sys.stderr)
        return 1
    action = "removed" if removing else "set"
    print(f"{a.edits}: caption of {clip_id} {action} ({n} edits); run 'dvc repro caption' to apply it")
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
