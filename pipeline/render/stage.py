"""The render stage's runner: every run's sample latents (``<lora>/<run>/samples/``) that have no
video yet -> ``<samples>/<run>/step-<NNNNN>/<i>.mp4``; videos whose latents are gone are removed."""

from __future__ import annotations

import logging

from pipeline.core.devices import resolve_device
from pipeline.core.fs import write_json
from pipeline.core.layout import Layout
from pipeline.models.config import ModelConfig
from pipeline.render.render import find_sample_latents, render_samples

log = logging.getLogger("render")


def run(params: dict, layout: Layout) -> dict:
    profile = ModelConfig.from_params(params.get("model")).resolve()
    device = resolve_device(str((params.get("render") or {}).get("device", "auto")))
    layout.samples.mkdir(parents=True, exist_ok=True)  # the stage's output, even with no samples to render
    found = find_sample_latents(layout.lora)
    todo = [s for s in found if not s.video(layout.samples).exists()
            or s.video(layout.samples).stat().st_mtime < s.path.stat().st_mtime]
    wanted = {s.video(layout.samples) for s in found}
    for old in sorted(layout.samples.glob("*/step-*/*.mp4")) if layout.samples.is_dir() else []:
        if old not in wanted:
            old.unlink()
            log.info("%s: removed (its sample latents are gone)", old)
    rendered, failed = render_samples(todo, layout.samples, profile, device)
    metrics = {"samples": len(found), "rendered": rendered, "reused": len(found) - len(todo), "failed": failed}
    write_json(layout.metrics("render"), metrics)
    log.info("%d sample videos (%d rendered, %d already there, %d failed) -> %s", len(found), rendered,
             len(found) - len(todo), len(failed), layout.samples)
    return metrics
