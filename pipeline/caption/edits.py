"""Human caption edits: ``data/captions_edits.csv`` (``clip_id,caption``), git-tracked.

An edit wins over the VLM for its clip on every run. Writes are atomic and sorted by clip id,
so the file diffs cleanly in git.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from pipeline.core.fs import write_text_atomic

HEADER = ["clip_id", "caption"]


class EditsError(ValueError):
    """The edits file is malformed."""


def read_edits(path: str | os.PathLike) -> dict[str, str]:
    """clip_id -> caption; a missing file is no edits. Blank captions are ignored."""
    path = Path(path)
    if not path.exists():
        return {}
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return {}
        if [h.strip() for h in header] != HEADER:
            raise EditsError(f"{path}: header must be 'clip_id,caption', got {','.join(header)!r}")
        edits: dict[str, str] = {}
        for row in reader:
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise EditsError(f"{path}:{reader.line_num}: expected 2 fields (clip_id,caption), got {len(row)}")
            clip_id, caption = row[0].strip(), normalise_edit(row[1])
            if clip_id and caption:
                edits[clip_id] = caption
    except csv.Error as exc:
        raise EditsError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    return edits


def read_text(path: Path) -> str:
    """The file as UTF-8 text; :class:`EditsError` naming the file (and line) when it cannot be read or is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EditsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise EditsError(f"{path}:{line}: not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
                         "save the file as UTF-8") from None


def normalise_edit(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def write_edits(path: str | os.PathLike, edits: dict[str, str]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for clip_id in sorted(edits):
        w.writerow([clip_id, edits[clip_id]])
    return write_text_atomic(path, buf.getvalue())


def set_edit(path: str | os.PathLike, clip_id: str, caption: str) -> Path:
    """Add or replace the edit of ``clip_id``; an empty caption removes it."""
    edits = read_edits(path)
    caption = normalise_edit(caption)
    if caption:
        edits[clip_id] = caption
    else:
        edits.pop(clip_id, None)
    return write_edits(path, edits)
