"""Probe a whole folder into a ``sources`` table, with a progress bar.

The folder is listed without opening anything (``listing``): entries that cannot be sources
(symlink loops, dangling symlinks, FIFOs, links out of the folder) become rejected rows, and
files with the same bytes as an earlier path become ``duplicate of <path>`` rows, so every
path has exactly one row and every ``ok`` source a distinct ``source_id``. A file whose size and
modification time match the previous run's is not read again (``cache``). Every row gets its
record (owner, licence, consent...: ``records``), read again at every run.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
from tqdm import tqdm

from pipeline.core import schemas
from pipeline.core.fs import write_json
from pipeline.curate.probe.files import mark_duplicates, probe_file, rejected_row
from pipeline.curate.probe.listing import Entry, list_raw
from pipeline.curate.probe.records import apply_records

log = logging.getLogger(__name__)


def probe_paths(paths: list[Path], root: str | os.PathLike, jobs: int = 4) -> pl.DataFrame:
    """Probe files (relative paths taken against ``root``); rejected files are logged, one line each."""
    return _table(_probe_all(paths, root, jobs), root)


def _probe_all(paths: list[Path], root: str | os.PathLike, jobs: int) -> list[dict]:
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(tqdm(pool.map(lambda p: probe_file(p, root), paths), total=len(paths), desc="probe", unit="file"))


def _table(rows: list[dict], root: str | os.PathLike) -> pl.DataFrame:
    rows = mark_duplicates(rows)
    for r in sorted(rows, key=lambda r: r["path"]):
        if r["status"] != "ok":
            log.warning("rejected %s: %s", Path(root) / r["path"], r["reason"])
    rows, _ = apply_records(rows, root)  # a malformed record is logged (one line) and left out
    return schemas.frame("sources", sorted(rows, key=lambda r: r["path"]))


def probe_entries(entries: list[Entry], root: str | os.PathLike, jobs: int = 4, cache: dict | None = None) -> pl.DataFrame:
    """The sources table of a listing; ``cache`` (path -> {"size", "mtime_ns", "row"}, from
    :func:`probe_cache`) spares re-reading files that did not change."""
    root = Path(root)
    cache = cache or {}
    rows, todo = [], []
    for e in entries:
        hit = cache.get(e.rel)
        if e.status != "ok":
            rows.append(rejected_row(e.rel, e.reason))
        elif hit and hit["size"] == e.size and hit["mtime_ns"] == e.mtime_ns:
            rows.append(dict(hit["row"]))
        else:
            todo.append(e)
    if cache and todo:
        log.info("probe: %d new or changed file(s), %d unchanged", len(todo), len(entries) - len(todo))
    rows += _probe_all([root / e.rel for e in todo], root, jobs)
    return _table(rows, root)


def probe_cache(entries: list[Entry], table: pl.DataFrame) -> dict:
    """What :func:`probe_entries` may reuse next time: each ok entry's row under its size and mtime."""
    by_path = {r["path"]: r for r in table.to_dicts()}
    return {e.rel: {"size": e.size, "mtime_ns": e.mtime_ns, "row": by_path[e.rel]}
            for e in entries if e.status == "ok" and e.rel in by_path}


def read_probe_cache(path: str | os.PathLike) -> dict:
    """The cache written by the last run, or empty (missing or unreadable: everything is probed)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_probe_cache(path: str | os.PathLike, cache: dict) -> None:
    write_json(path, cache)


def probe_folder(root: str | os.PathLike, jobs: int = 4, follow_outside: bool = False,
                 cache_path: str | os.PathLike | None = None) -> pl.DataFrame:
    """List ``root`` and probe it; with ``cache_path``, reuse and update the stat-keyed cache there."""
    entries = list_raw(root, follow_outside)
    cache = read_probe_cache(cache_path) if cache_path else {}
    table = probe_entries(entries, root, jobs, cache)
    if cache_path:
        write_probe_cache(cache_path, probe_cache(entries, table))
    return table
