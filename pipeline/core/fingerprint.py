"""Fingerprints of model weights: what a cache key or a caption label says about the model that made it.

Real weights: sha256 of every weight/config/tokenizer/processor file of a model folder, combined
with the file names (``folder_fingerprint``; the encode stage's VAE, UMT5 and CLIP folders and
the caption VLM's folder alike). Hashing an 11 GB text encoder takes a minute, so each file's
digest is remembered in a small JSON memo keyed by (absolute path, size, mtime): a file is
re-hashed only when it changes. Tiny models (random weights built from a config): sha256 of the
state dict's bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from pipeline.core.fs import sha256_file, write_json

log = logging.getLogger("fingerprint")

# Files of a diffusers/transformers model folder that determine its outputs: weights, configs,
# and the tokenizer / processor (vocabularies, merges, chat templates, image/video preprocessing).
FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".json", ".jinja", ".model", ".txt", ".tiktoken")
# Weight files proper (what ``folder_fingerprint(..., require_weights=True)`` insists on).
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin")


def state_dict_fingerprint(module: torch.nn.Module, config: dict | None = None) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes, bytes) and its config."""
    h = hashlib.sha256()
    h.update(json.dumps(config or {}, sort_keys=True, default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FileHashMemo:
    """sha256 of files, remembered by (path, size, mtime) in a JSON file (None: in memory only)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self.table: dict[str, dict] = {}
        if self.path and self.path.exists():
            try:
                self.table = json.loads(self.path.read_text())
            except (OSError, ValueError):
                log.warning("%s: unreadable fingerprint memo, re-hashing", self.path)
        self.dirty = False

    def sha256(self, file: str | os.PathLike) -> str:
        file = Path(file).resolve()
        st = file.stat()
        rec = self.table.get(str(file))
        if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return rec["sha256"]
        if st.st_size > 1 << 30:
            log.info("hashing %s (%.1f GB, once; remembered by size and mtime)", file, st.st_size / 1e9)
        digest = sha256_file(file)
        self.table[str(file)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path and self.dirty:
            write_json(self.path, self.table)
            self.dirty = False


def fingerprint_files(folder: str | os.PathLike) -> list[Path]:
    """The files ``folder_fingerprint`` hashes: every weight/config/tokenizer/processor file under
    ``folder``, sorted, none whose relative path has a hidden part (``.git``, ``.cache``, ...)."""
    folder = Path(folder)
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix in FINGERPRINT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def folder_fingerprint(folder: str | os.PathLike, memo: FileHashMemo | None = None, *,
                       require_weights: bool = False) -> str:
    """sha256 over (relative name, sha256) of every weight/config/tokenizer/processor file under
    ``folder``. ``require_weights``: refuse a folder without ``*.safetensors`` / ``*.bin`` files
    (a model folder; a tokenizer or processor folder has none)."""
    folder = Path(folder)
    files = fingerprint_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no weight or config files to fingerprint")
    if require_weights and not any(p.suffix in WEIGHT_FILE_SUFFIXES for p in files):
        raise FileNotFoundError(f"{folder}: no weight files (*.safetensors / *.bin)")
    memo = memo or FileHashMemo()
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()}:{memo.sha256(f)}\n".encode())
    memo.save()
    return h.hexdigest()
