"""``vlp probe``, ``vlp split``, ``vlp score`` and ``vlp filter``: the curation stages outside DVC,
through the same runners as the DVC stages (``pipeline.curate.*.stage``) on ``--data DIR``."""

from __future__ import annotations

import polars as pl

from pipeline.core import schemas
from pipeline.core.cli import add_stage_options, layout, stage_params
from pipeline.core.layout import Layout


def _print(df: pl.DataFrame, columns: list[str]) -> None:
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=160, tbl_width_chars=400, float_precision=4):
        print(df.select(columns))


def _probe(args) -> tuple[dict, Layout]:
    from pipeline.curate.probe.stage import run_list, run_probe

    params, lay = stage_params(args), layout(args)
    run_list(params, lay, raw_dir=args.raw)
    run_probe(params, lay)
    return params, lay


def probe(args) -> int:
    _, lay = _probe(args)
    _print(schemas.read_table(lay.sources, "sources"),
           ["path", "kind", "codec", "width", "height", "rotation", "fps", "vfr", "n_frames", "duration_s", "has_audio",
            "status", "reason", "licence", "consent"])
    print(f"wrote {lay.sources}")
    return 0


def split(args) -> int:
    from pipeline.curate.split.stage import run

    params, lay = _probe(args)
    run(params, lay)
    _print(schemas.read_table(lay.clips, "clips"), ["clip_id", "source_path", "start_frame", "end_frame", "n_frames",
                                                    "fps", "width", "height", "status", "reason"])
    print(f"wrote {lay.clips}")
    return 0


def score(args) -> int:
    from pipeline.curate.score.stage import run

    lay = layout(args)
    run(stage_params(args), lay)
    _print(schemas.read_table(lay.scores, "scores"), ["clip_id", "duration_s", "motion", "static_fraction", "sharpness",
                                                      "luma_mean", "luma_std", "border_top", "border_left", "phash", "face_share",
                                                      "face", "status"])
    print(f"wrote {lay.scores}")
    return 0


def filter_(args) -> int:
    from pipeline.curate.filter.stage import run

    lay = layout(args)
    result = run(stage_params(args), lay)
    print(f"kept {result.dataset.height} of {result.metrics['clips']} clips -> {lay.dataset}; "
          f"rejected -> {lay.rejected}; counts -> {lay.metrics('filter')}; scores -> {lay.score_plots}")
    return 0


def register(sub) -> None:
    raw = {"nargs": "?", "default": None, "metavar": "RAW_DIR",
           "help": "folder of videos and photos (default probe.raw_dir, data/raw)"}
    p = sub.add_parser("probe", help="list and probe a folder of videos and photos: DIR/sources.parquet",
                       description="List RAW_DIR (nothing opened) and probe every media file in it: codec, size, "
                                   "rotation, frame rate, VFR, frames; unusable files get a reason.")
    p.add_argument("raw", **raw)
    add_stage_options(p, "folder for raw.listing.json and sources.parquet (default data)")
    p.set_defaults(run=probe)

    p = sub.add_parser("split", help="probe RAW_DIR and split its videos into clips: DIR/clips.parquet",
                       description="Probe RAW_DIR, then split every usable source into clips (the split stage), e.g. "
                                   "vlp split my_videos --data out -S split.max_s=6.")
    p.add_argument("raw", **raw)
    add_stage_options(p, "folder for the tables and DIR/clips/ (default data)")
    p.set_defaults(run=split)

    p = sub.add_parser("score", help="score the clips of DIR/clips.parquet: DIR/scores.parquet",
                       description="Score every ok clip: motion, sharpness, exposure, bars, pHash (the score stage).")
    add_stage_options(p, "folder holding clips.parquet (default data)")
    p.set_defaults(run=score)

    p = sub.add_parser("filter", help="filter scored clips: DIR/dataset.parquet, DIR/rejected.parquet with reasons",
                       description="Keep the clips that pass every filter rule, list the others with their reasons, "
                                   "write the counts (DIR/metrics/filter.json) and the scores (DIR/plots/scores.csv).")
    add_stage_options(p, "folder holding clips.parquet and scores.parquet (default data)")
    p.set_defaults(run=filter_)
