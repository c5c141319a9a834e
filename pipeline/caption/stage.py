"""Caption a table of clips end to end: read edits and stored captions, caption the rest, write
``captions.parquet`` and the throughput metrics. Used by ``stages/caption.py`` and ``vlp caption run``."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from pipeline import schemas
from pipeline.caption.config import make_backend, run_settings
from pipeline.caption.edits import read_edits
from pipeline.caption.runner import caption_clips
from pipeline.caption.store import CaptionStore
from pipeline.fsutil import write_json

log = logging.getLogger("caption")


def run_caption(
    dataset: pl.DataFrame,
    params: dict,
    captions_path: str | os.PathLike,
    parts_dir: str | os.PathLike,
    metrics_path: str | os.PathLike,
    edits_path: str | os.PathLike,
) -> tuple[pl.DataFrame, dict]:
    """Caption ``dataset`` (rows with status ok when it has a status column) and write the outputs."""
    captions_path, edits_path = Path(captions_path), Path(edits_path)
    if "status" in dataset.columns:
        dataset = dataset.filter(pl.col("status") == "ok")
    settings = run_settings(params)
    edits = read_edits(edits_path)
    edits_at = (
        datetime.fromtimestamp(edits_path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        if edits_path.exists() else ""
    )
    unknown = sorted(set(edits) - set(dataset["clip_id"].to_list()))
    if unknown:
        log.info("%d caption edit(s) name clips not in this dataset (kept in %s): %s", len(unknown), edits_path,
                 ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    store = CaptionStore(parts_dir, chunk_size=int(params.get("chunk_size", 8))).load(extra=[captions_path])
    label, factory = make_backend(params, settings)
    table, metrics = caption_clips(
        dataset, factory, label, settings, store, edits, edits_at, backend_name=params.get("backend", "transformers")
    )
    store.compact()
    schemas.write_table(table, captions_path, "captions")
    write_json(metrics_path, metrics)
    return table, metrics
