"""``vlp encode``: the encode stage outside DVC (the same runner, ``pipeline.encode.stage``)."""

from __future__ import annotations

from pipeline.core.cli import add_stage_options, layout, stage_params


def encode(args) -> int:
    from pipeline.encode.stage import run

    lay = layout(args)
    metrics = run(stage_params(args), lay)
    print(f"wrote {lay.encoded}: {metrics['samples']} samples; latents {metrics['latents_computed']} computed, "
          f"{metrics['latents_reused']} reused; texts {metrics['texts_computed']} computed, {metrics['texts_reused']} reused")
    return 0


def register(sub) -> None:
    p = sub.add_parser("encode", help="encode kept clips + captions into the cache: DIR/encoded.parquet",
                       description="Encode the kept clips and their captions into the content-addressed cache (Wan VAE "
                                   "latents, UMT5 prompt embeddings; I2V conditioning): only missing entries are "
                                   "computed (the encode stage).")
    add_stage_options(p, "folder holding dataset.parquet and captions.parquet (default data)")
    p.set_defaults(run=encode)
