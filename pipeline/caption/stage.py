"""The caption stage's runner: read edits and stored captions, caption the rest of the kept clips,
write ``captions.parquet`` and the throughput metrics. Used by ``stages/caption.py`` and ``vlp caption``."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from pipeline.caption.captioning import caption_clips
from pipeline.caption.config import CaptionConfig, make_backend, run_settings
from pipeline.caption.edits import read_edits
from pipeline.caption.store import CaptionStore
from pipeline.core import schemas
from pipeline.core.engine import stage_engine
from pipeline.core.fs import write_json
from pipeline.core.layout import Layout
from pipeline.core.timings import split_timings

if TYPE_CHECKING:
    from pipeline.core.ray_engine import RayEngine

log = logging.getLogger("caption")

# what varies from one machine (or run) to the next: data/timings/caption.json, not the DVC metrics
TIMINGS = frozenset({"vlm_seconds", "clips_per_s", "tokens_per_s"})


def run_caption(
    dataset: pl.DataFrame,
    params: dict | CaptionConfig,
    captions_path: str | os.PathLike,
    parts_dir: str | os.PathLike,
    metrics_path: str | os.PathLike,
    edits_path: str | os.PathLike,
    timings_path: str | os.PathLike | None = None,
    ray: RayEngine | None = None,
) -> tuple[pl.DataFrame, dict]:
    """Caption ``dataset`` (rows with status ok when it has a status column) and write the outputs;
    ``params`` is the ``caption`` group or the settings already loaded from it. The metrics file
    leaves out the throughput figures (``TIMINGS``), which go to ``timings_path`` (``core.timings``);
    the returned metrics have both. With ``ray``, the clips to caption go to a Ray actor pool (one
    actor per GPU of the cluster with a transformers model that is not on the CPU)."""
    captions_path, edits_path = Path(captions_path), Path(edits_path)
    if "status" in dataset.columns:
        dataset = dataset.filter(pl.col("status") == "ok")
    cfg = CaptionConfig.from_params(params)
    gpu = ray is not None and cfg.backend == "transformers" and ray.wants_gpu(cfg.device)
    if gpu and cfg.device.startswith("cuda:"):
        cfg = dataclasses.replace(cfg, device="cuda")  # an actor sees its own GPU as the first one
    settings = run_settings(cfg)
    edits = read_edits(edits_path)
    edits_at = (
        datetime.fromtimestamp(edits_path.stat().st_mtime, UTC).isoformat(timespec="seconds")
        if edits_path.exists() else ""
    )
    unknown = sorted(set(edits) - set(dataset["clip_id"].to_list()))
    if unknown:
        log.info("%d caption edit(s) name clips not in this dataset (kept in %s): %s", len(unknown), edits_path,
                 ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    store = CaptionStore(parts_dir, chunk_size=cfg.chunk_size).load(extra=[captions_path])
    label, factory = make_backend(cfg, settings)
    table, metrics = caption_clips(
        dataset, factory, label, settings, store, edits, edits_at, backend_name=cfg.backend, ray=ray, gpu=gpu
    )
    store.compact()
    schemas.write_table(table, captions_path, "captions")
    stable, timing = split_timings(metrics, TIMINGS)
    write_json(metrics_path, stable)
    if timings_path is not None:
        write_json(timings_path, timing)
    return table, metrics


def _interrupt(signum, frame):  # noqa: ARG001 - SIGTERM ends the run like Ctrl-C: finished captions are flushed
    raise KeyboardInterrupt(f"signal {signum}")


def run(params: dict, layout: Layout) -> dict:
    """Caption ``layout.dataset`` with the ``caption`` params group into ``layout.captions``."""
    cfg = CaptionConfig.from_params(params.get("caption"))  # a bad value stops here, before any work
    dataset = schemas.read_table(layout.dataset, "dataset")
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        with stage_engine(params, "caption") as ray:
            table, metrics = run_caption(dataset, cfg, layout.captions, layout.caption_parts, layout.metrics("caption"),
                                         layout.caption_edits, layout.timings("caption"), ray=ray)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    ok = table.filter(table["status"] == "ok").height
    log.info("%d captions ok, %d failed -> %s", ok, table.height - ok, layout.captions)
    return metrics
