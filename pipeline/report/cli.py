"""``vlp report``: the report stage outside DVC (the same runner, :mod:`pipeline.report.stage`)."""

from __future__ import annotations

from pipeline.core.cli import add_stage_options, layout, stage_params


def report(args) -> int:
    from pipeline.report.stage import run

    index = run(stage_params(args), layout(args))
    print(f"wrote {index} (open it in a browser: file://{index.resolve()})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="write the static dataset report DIR/report/index.html",
                       description="Write the static dataset report (the report stage): DIR/report/index.html with "
                                   "thumbnails, score histograms, captions and the LoRA runs under DIR/lora.")
    add_stage_options(p, "folder of the tables, DIR/lora and DIR/report (default data)")
    p.set_defaults(run=report)
