"""The caption stage's runner: read edits and stored captions, caption the rest of the kept clips,
write ``captions.parquet`` and the throughput metrics. Used by ``stages/caption.py`` and ``vlp caption``."""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from pipeline.caption.captioning import caption_clips
from pipeline.caption.config import CaptionConfig, make_backend, run_settings
from pipeline.caption.edits import read_edits
from pipeline.caption.store import CaptionStore
from pipeline.core import schemas
from pipeline.core.fs import write_json
from pipeline.core.layout import Layout

log = logging.getLogger("caption")


def run_caption(
    dataset: pl.DataFrame,
    params: dict | CaptionConfig,
    captions_path: str | os.PathLike,
    parts_dir: str | os.PathLike,
    metrics_path: str | os.PathLike,
    edits_path: str | os.PathLike,
) -> tuple[pl.DataFrame, dict]:
    """Caption ``dataset`` (rows with status ok when it has a status column) and write the outputs;
    ``params`` is the ``caption`` group or the settings already loaded from it."""
    captions_path, edits_path = Path(captions_path), Path(edits_path)
    if "status" in dataset.columns:
        dataset = dataset.filter(pl.col("status") == "ok")
    cfg = CaptionConfig.from_params(params)
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
        dataset, factory, label, settings, store, edits, edits_at, backend_name=cfg.backend
    )
    store.compact()
    schemas.write_table(table, captions_path, "captions")
    write_json(metrics_path, metrics)
    return table, metrics


def _interrupt(signum, frame):  # noqa: ARG001 - SIGTERM ends the run like Ctrl-C: finished captions are flushed
    raise KeyboardInterrupt(f"signal {signum}")


def run(params: dict, layout: Layout) -> dict:
    """Caption ``layout.dataset`` with the ``caption`` params group into ``layout.captions``."""
    cfg = CaptionConfig.from_params(params.get("caption"))  # a bad value stops here, before any work
    dataset = schemas.read_table(layout.dataset, "dataset")
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        table, metrics = run_caption(dataset, cfg, layout.captions, layout.caption_parts,
                                     layout.metrics("caption"), layout.caption_edits)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    ok = table.filter(table["status"] == "ok").height
    log.info("%d captions ok, %d failed -> %s", ok, table.height - ok, layout.captions)
    return metrics
