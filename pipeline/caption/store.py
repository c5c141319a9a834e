"""Every caption the VLM wrote, kept in small parquet parts so a killed run loses at most one chunk.

``parts_dir/<run>-<n>.parquet`` files hold rows of the ``captions`` schema. A run appends a part
atomically every ``chunk_size`` results (and whatever is pending when it stops on an exception
or Ctrl-C); at the end :meth:`CaptionStore.compact` folds all parts into one. A caption is
found again by its key: (clip_id, model, prompt_sha256, sampling). DVC keeps the folder
across runs (``persist: true``), so changing a param and back reuses the earlier captions.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import polars as pl

from pipeline.core import schemas

log = logging.getLogger("caption")

Key = tuple[str, str, str, str]


def row_key(row: dict) -> Key:
    return (row["clip_id"], row["model"], row["prompt_sha256"], row["sampling"])


class CaptionStore:
    def __init__(self, parts_dir: str | os.PathLike, chunk_size: int = 8):
        self.dir = Path(parts_dir)
        self.chunk_size = max(1, int(chunk_size))
        self.rows: dict[Key, dict] = {}
        self.pending: list[dict] = []
        self.files: list[Path] = []  # parts folded into self.rows
        self.run = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        self.seq = 0

    def load(self, extra: list[Path] | None = None) -> CaptionStore:
        """Read every part (and ``extra`` tables, e.g. a previous captions.parquet); later rows win.

        An unreadable part (a disk-full leftover, a schema from an older version) is logged and skipped.
        """
        paths = sorted(self.dir.glob("*.parquet")) if self.dir.exists() else []
        for path in [p for p in (extra or []) if p.exists()] + paths:
            try:
                df = schemas.read_table(path, "caption_parts")
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: skipped unreadable caption part (%s)", path, exc)
                continue
            for row in df.filter(pl.col("source") == "vlm").iter_rows(named=True):
                self._keep(row)
            if path.parent == self.dir:
                self.files.append(path)
        return self

    def _keep(self, row: dict) -> None:
        key = row_key(row)
        old = self.rows.get(key)
        row_ok, old_ok = row["status"] == "ok", old is not None and old["status"] == "ok"
        # A success beats a failure; between equals the newer one wins.
        if old is None or (row_ok and not old_ok) or (row_ok == old_ok and row["created_at"] >= old["created_at"]):
            self.rows[key] = row

    def get(self, key: Key) -> dict | None:
        return self.rows.get(key)

    def add(self, row: dict) -> None:
        self._keep(row)
        self.pending.append(row)
        if len(self.pending) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows as one new part, atomically."""
        if not self.pending:
            return
        self.seq += 1
        path = self.dir / f"{self.run}-{self.seq:05d}.parquet"
        schemas.write_table(schemas.frame("caption_parts", self.pending), path, "caption_parts")
        self.files.append(path)
        self.pending = []

    def compact(self) -> None:
        """Fold every part into one (written before the others are removed, so a kill loses nothing)."""
        self.flush()
        if len(self.files) <= 1:
            return
        self.seq += 1
        path = self.dir / f"{self.run}-{self.seq:05d}-all.parquet"
        rows = sorted(self.rows.values(), key=lambda r: (r["clip_id"], r["created_at"]))
        schemas.write_table(schemas.frame("caption_parts", rows), path, "caption_parts")
        for old in self.files:
            if old != path:
                old.unlink(missing_ok=True)
        self.files = [path]
