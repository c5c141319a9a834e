"""``vlp render``: the render stage outside DVC (the same runner, :mod:`pipeline.render.stage`)."""

from __future__ import annotations

from pipeline.core.cli import add_stage_options, layout, stage_params


def render(args) -> int:
    from pipeline.render.stage import run

    metrics = run(stage_params(args), layout(args))
    return 1 if metrics["failed"] else 0


def register(sub) -> None:
    p = sub.add_parser("render", help="decode the sample latents of training runs to mp4 (DIR/samples)",
                       description="Decode the sample latents the train stage made (train.samples) with the model's VAE "
                                   "to DIR/samples/<run>/step-<NNNNN>/<i>.mp4 (the render stage).")
    add_stage_options(p, "folder holding lora/ and samples/ (default data)")
    p.set_defaults(run=render)
