"""Probe a whole folder into a ``sources`` table, with a progress bar."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
from tqdm import tqdm

from pipeline import schemas
from pipeline.probe import list_media, probe_file

log = logging.getLogger(__name__)


def probe_paths(paths: list[Path], root: str | os.PathLike, jobs: int = 4) -> pl.DataFrame:
    """Probe files (relative paths taken against ``root``); rejected files are logged, one line each."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        rows = list(tqdm(pool.map(lambda p: probe_file(p, root), paths), total=len(paths), desc="probe", unit="file"))
    for r in rows:
        if r["status"] != "ok":
            log.warning("rejected %s: %s", Path(root) / r["path"], r["reason"])
    return schemas.frame("sources", rows)


def probe_folder(root: str | os.PathLike, jobs: int = 4) -> pl.DataFrame:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: raw folder not found (put videos there, or run 'vlp fetch-samples {root}')")
    return probe_paths(list_media(root), root, jobs)
