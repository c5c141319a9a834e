"""Listing a raw folder without ever blocking or looping on what is in it.

A raw folder can hold more than media files: symlinks (dangling, looping back into the
folder, or pointing outside it), FIFOs, sockets and devices. Reading a FIFO blocks forever and
following a symlink loop never ends, so the listing looks at every entry with ``lstat`` first
and opens nothing: each media file becomes an ``ok`` entry, and each entry that cannot be a
source becomes a ``rejected`` entry with its reason (``symlink loop``, ``dangling symlink``,
``not a regular file (fifo)``, ...), which probe turns into a rejected row. Hidden files and
folders (a leading ``.``) and files of other types are skipped.

A symlink to a file inside the folder is listed like the file (probe then names it a duplicate
of the real file). A symlink to something outside the folder is followed only when
``follow_outside`` is set (``probe.follow_symlinks_outside``).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".gif"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MEDIA_EXTS = VIDEO_EXTS | IMAGE_EXTS

SPECIAL = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


@dataclass(frozen=True)
class Entry:
    """One file the raw folder offers as a source."""

    rel: str  # path relative to the raw folder, forward slashes (as listed, links not resolved)
    status: str  # "ok" or "rejected"
    reason: str = ""
    size: int = 0  # of the file (a symlink's target)
    mtime_ns: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def is_media(name: str) -> bool:
    return Path(name).suffix.lower() in MEDIA_EXTS


def list_raw(root: str | os.PathLike, follow_outside: bool = False) -> list[Entry]:
    """Every media file under ``root`` and every entry that cannot be read as one, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: raw folder not found (put videos there, or run 'vlp fetch-samples {root}')")
    real_root = os.path.realpath(root)
    out: list[Entry] = []
    _walk(root, "", real_root, follow_outside, {real_root}, out)
    return sorted(out, key=lambda e: e.rel)


def _inside(path: str, real_root: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep)


def _walk(folder: Path, prefix: str, real_root: str, follow_outside: bool, visited: set[str], out: list[Entry]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        out.append(Entry(prefix.rstrip("/") or ".", "rejected", f"folder not readable: {e.strerror}"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        rel = f"{prefix}{entry.name}"
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            _symlink(Path(entry.path), rel, real_root, follow_outside, visited, out)
        elif stat.S_ISDIR(mode):
            _walk(Path(entry.path), f"{rel}/", real_root, follow_outside, visited, out)
        elif stat.S_ISREG(mode):
            if is_media(entry.name):
                st = entry.stat(follow_symlinks=False)
                out.append(Entry(rel, "ok", "", st.st_size, st.st_mtime_ns))
        else:
            out.append(Entry(rel, "rejected", f"not a regular file ({SPECIAL.get(stat.S_IFMT(mode), 'special file')})"))


def _symlink(path: Path, rel: str, real_root: str, follow_outside: bool, visited: set[str], out: list[Entry]) -> None:
    """A symlink: followed to a file or folder when allowed, else a rejected entry saying why."""
    try:
        st = os.stat(path)  # follows the link: raises for a dangling link or a loop
    except OSError as e:
        if e.errno == errno.ELOOP:
            out.append(Entry(rel, "rejected", "symlink loop"))
        elif is_media(rel) or e.errno != errno.ENOENT:
            out.append(Entry(rel, "rejected", f"dangling symlink (-> {os.readlink(path)})"))
        return
    target = os.path.realpath(path)
    inside = _inside(target, real_root)
    if stat.S_ISDIR(st.st_mode):
        if inside or target in visited:
            out.append(Entry(rel, "rejected", "symlink loop" if _inside(real_root, target) or target in visited
                             else "symlink to a folder already under the raw folder"))
        elif not follow_outside:
            out.append(Entry(rel, "rejected", f"symlink to a folder outside the raw folder ({target}); "
                                              "set probe.follow_symlinks_outside: true to follow it"))
        else:
            _walk(path, f"{rel}/", real_root, follow_outside, visited | {target}, out)
        return
    if not stat.S_ISREG(st.st_mode):
        out.append(Entry(rel, "rejected", f"symlink to something that is not a regular file "
                                          f"({SPECIAL.get(stat.S_IFMT(st.st_mode), 'special file')})"))
        return
    if not is_media(rel):
        return
    if not inside and not follow_outside:
        out.append(Entry(rel, "rejected", f"symlink to outside the raw folder ({target}); "
                                          "set probe.follow_symlinks_outside: true to follow it"))
        return
    out.append(Entry(rel, "ok", "", st.st_size, st.st_mtime_ns))


def write_listing(path: str | os.PathLike, root: str | os.PathLike, entries: list[Entry], records: list[dict] | None = None) -> None:
    """The listing as JSON (the probe stage's dependency); ``records``: the records files' fingerprints
    (``records.record_files``), so that editing ``sources.yaml`` or a sidecar re-runs the probe stage."""
    from pipeline.core.fs import write_json

    doc: dict = {"root": str(root), "entries": [e.as_dict() for e in entries]}
    if records is not None:
        doc["records"] = records
    write_json(path, doc)


def read_listing(path: str | os.PathLike) -> tuple[str, list[Entry]]:
    """(raw folder, entries) of a listing written by :func:`write_listing`."""
    import json

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return doc["root"], [Entry(**e) for e in doc["entries"]]
