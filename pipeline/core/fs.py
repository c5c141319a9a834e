"""File helpers: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20

# What an id must look like before it becomes part of a file name (clip ids are 16 hex digits;
# tests and hand-made tables use short names): no separators, no dots, no leading dash.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_id(value: str, what: str = "clip id") -> str:
    """``value`` when it is safe as a file name component, else a one-line ValueError."""
    if not isinstance(value, str) or not SAFE_ID.match(value):
        raise ValueError(f"not a valid {what}: {value!r} (letters, digits, '_' and '-' only)")
    return value


def confined(folder: str | os.PathLike, *parts: str) -> Path:
    """``folder / parts``, refusing (ValueError, one line) any result outside ``folder``."""
    base = Path(folder).resolve()
    joined = base.joinpath(*parts)
    parent = joined.parent.resolve()  # the file itself may be a symlink (exports with --link): not followed
    path = parent / joined.name
    if joined.name in ("", ".", "..") or (parent != base and base not in parent.parents):
        raise ValueError(f"{Path(folder).joinpath(*parts)}: outside {Path(folder)}, not written")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    A kill or an exception mid-write leaves ``path`` untouched (the temporary file is removed
    on exceptions; a hard kill may leave a ``.tmp-*`` file behind, never a half-written target).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the permissions a plain open() would
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``.tmp-*`` files an :func:`atomic_path` writer killed mid-write left in ``folder``
    (call only where no other writer runs); returns what was removed."""
    folder = Path(folder)
    gone = sorted(p for p in folder.glob(".tmp-*") if p.is_file()) if folder.is_dir() else []
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Stable hash of a JSON-serialisable object (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
