"""``vlp caption``: the caption stage outside DVC, and ``vlp caption edit``: human caption edits."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.caption.edits import EditsError, read_edits, set_edit
from pipeline.core import schemas
from pipeline.core.cli import CommandError, add_stage_options, layout, stage_params
from pipeline.core.layout import Layout

CLIP_ID_CHARS = frozenset("0123456789abcdef")
CLIP_ID_LENGTH = 16  # pipeline.curate.split.split.make_clip_id: the first 16 hex digits of a sha256
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


def edit(args) -> int:
    removing = not args.text.strip()
    edits_path = args.edits or str(Layout.of(args.data).caption_edits)
    try:
        known = kept_clip_ids(args.data)
        if removing:  # an edit of a clip no longer kept can still be removed
            known += list(read_edits(edits_path))
        clip_id = resolve_clip_id(args.clip_id, known, str(Path(args.data) / "dataset.parquet"))
        set_edit(edits_path, clip_id, args.text)
        n = len(read_edits(edits_path))
    except (EditsError, ClipIdError) as exc:
        raise CommandError(str(exc)) from None
    action = "removed" if removing else "set"
    print(f"{edits_path}: caption of {clip_id} {action} ({n} edits); run 'dvc repro caption' to apply it")
    return 0


def caption(args) -> int:
    from pipeline.caption.stage import run

    lay = layout(args)
    run(stage_params(args), lay)
    result = schemas.read_table(lay.captions, "captions")
    with pl.Config(tbl_rows=50, fmt_str_lengths=80, tbl_width_chars=160):
        print(result.select("clip_id", "kind", "source", "status", "caption"))
    print(f"wrote {lay.captions}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("caption", help="caption the kept clips with a VLM (the caption stage); 'edit' sets a human caption",
                       description="Caption the kept clips of DIR/dataset.parquet with the VLM the caption params name "
                                   "(the caption stage): DIR/captions.parquet, DIR/captions.parts/, "
                                   "DIR/metrics/caption.json; e.g. vlp caption -S caption.model=Qwen/Qwen2.5-VL-3B-Instruct. "
                                   "'vlp caption edit CLIP_ID TEXT' sets a human caption instead.")
    add_stage_options(p, "folder holding dataset.parquet (default data)")
    p.set_defaults(run=caption)
    cs = p.add_subparsers(dest="caption_command", metavar="edit")
    e = cs.add_parser("edit", help="set (or with an empty TEXT, remove) the human caption of a clip",
                      description="Set (or with an empty TEXT, remove) the human caption of a clip. It wins over the VLM "
                                  "on every run. CLIP_ID is a kept clip's id (DATA/dataset.parquet) or a unique prefix of "
                                  "it (4+ characters).")
    e.add_argument("clip_id", metavar="CLIP_ID", help="a kept clip's id or a unique prefix of it (4+ characters)")
    e.add_argument("text", metavar="TEXT", help="the caption; '' removes the human caption")
    e.add_argument("--edits", default=None, help="edits CSV (default DATA/captions_edits.csv)")
    e.add_argument("--data", default="data", help="folder holding dataset.parquet, the kept clips (default data)")
    e.set_defaults(run=edit)
