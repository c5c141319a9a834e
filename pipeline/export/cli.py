"""``vlp export``: the command line of :mod:`pipeline.export.export` (see there for the layout it writes)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core import schemas
from pipeline.core.cli import CommandError, UsageError
from pipeline.core.clip_writer import Encoding, encoder_available
from pipeline.core.params import load_params
from pipeline.export.export import CONFIG_NAME, FORMATS, ExportConfig, plan_export, write_export

log = logging.getLogger(__name__)


def split_encoding(params: Path) -> Encoding:
    """How clip files are written: the ``split`` group's codec, crf, preset and pix_fmt in ``params``
    when it has them (``split.write_clips`` writes with the same), the defaults for the others."""
    if not params.exists():
        return Encoding()
    try:
        split = load_params("split", params)
    except KeyError:
        return Encoding()
    known = {k: split[k] for k in ("codec", "crf", "preset", "pix_fmt") if split.get(k) is not None}
    enc = Encoding(**{**Encoding().as_key(), **known})
    if not isinstance(enc.crf, int) or isinstance(enc.crf, bool):
        raise ValueError(f"{params}: split.crf: {enc.crf!r} is not an integer")
    if not encoder_available(str(enc.codec)):
        raise ValueError(f"{params}: split.codec: {enc.codec!r} is not a video encoder PyAV's FFmpeg has")
    return enc


def run(args) -> int:
    try:
        cfg = ExportConfig(format=args.format, link=args.link, resolution=tuple(args.resolution),
                           frame_buckets=tuple(int(x) for x in args.frames.split(",") if x.strip()),
                           frame_extraction=args.frame_extraction, batch_size=args.batch_size,
                           num_repeats=args.repeats, image_repeats=args.image_repeats,
                           encoding=split_encoding(args.params))
        dataset = schemas.read_table(args.dataset, "dataset")
        captions = schemas.read_table(args.captions, "captions") if args.captions.exists() else None
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    if captions is None:
        log.warning("%s: not found; no clip has a caption to export (run the caption stage)", args.captions)
    plan, skipped = plan_export(dataset, captions)
    for line in skipped:
        log.info("skipped %s", line)
    record = write_export(plan, args.out, cfg, args.root)
    exported = set(record["clips"])
    n_img = sum(1 for p in plan if p["kind"] == "image" and p["clip_id"] in exported)
    print(f"exported {len(record['clips'])} clips ({n_img} images) to {args.out} "
          f"({'links to clip files where the split wrote them' if cfg.link else 'files'}); {len(skipped)} kept clips "
          f"skipped for captions, {len(record['missing'])} not exported; config {Path(args.out) / CONFIG_NAME}")
    if not record["clips"]:
        raise CommandError(f"nothing exported: {dataset.height} kept clips in {args.dataset}, none with an ok caption "
                           "and a readable source")
    return 0


def register(sub) -> None:
    ap = sub.add_parser("export", help="export kept clips + captions + dataset TOML for musubi-tuner / diffusion-pipe",
                        description="Export the kept, captioned clips with .txt captions and a dataset TOML.")
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--format", required=True, choices=FORMATS, help="trainer whose layout to write")
    ap.add_argument("--link", action="store_true",
                    help="symlink the clip files the split stage wrote (split.write_clips) instead of copying them; "
                         "clips without one are written from their spans")
    ap.add_argument("--dataset", type=Path, default=Path("data/dataset.parquet"), help="kept clips (default data/dataset.parquet)")
    ap.add_argument("--captions", type=Path, default=Path("data/captions.parquet"), help="default data/captions.parquet")
    ap.add_argument("--root", type=Path, default=Path("."), help="folder the clip paths are relative to (default .)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="params file whose split codec/crf/preset/pix_fmt the clip files are written with "
                         "(default params.yaml; libx264 crf 18 veryfast yuv420p without one)")
    ap.add_argument("--resolution", type=int, nargs=2, metavar=("W", "H"), default=(832, 480), help="default 832 480")
    ap.add_argument("--frames", default="17,33,49,81", help="frame buckets, 4n+1, comma-separated (default 17,33,49,81)")
    ap.add_argument("--frame-extraction", default="full", choices=("head", "chunk", "slide", "uniform", "full"),
                    help="musubi frame extraction (default full: whole clip up to the largest bucket)")
    ap.add_argument("--repeats", type=int, default=1, help="num_repeats of the video datasets (default 1)")
    ap.add_argument("--image-repeats", type=int, default=1, help="num_repeats of the image datasets (default 1)")
    ap.add_argument("--batch-size", type=int, default=1, help="musubi batch_size (default 1)")
    ap.set_defaults(run=run)
