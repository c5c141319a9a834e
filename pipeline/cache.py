"""A content-addressed store of tensors: one safetensors file per key, ``root/ab/<key>.safetensors``.

Keys are sha256 hex digests of everything that determines the tensors (see
``pipeline.cache_keys``), so an entry never goes stale: a changed input is a new key.
Writes are atomic (temporary file in the same folder, then rename), so two writers or a
kill mid-write never leave a half-written entry. Files are read with safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.fsutil import atomic_path

SUFFIX = ".safetensors"


class CacheMiss(KeyError):
    """A key the store does not hold."""


class CacheStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.expanduser(str(root)))

    def path(self, key: str) -> Path:
        if len(key) < 3 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
        """Write an entry atomically; ``metadata`` values must be strings. ``key`` and ``content_sha256``
        (a hash of the tensors, checked by :meth:`verify_entry`) are stored in it too."""
        path = self.path(key)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta["key"] = key
        meta["content_sha256"] = content_sha256(tensors)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    def get(self, key: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        path = self.path(key)
        if not path.exists():
            raise CacheMiss(f"{path}: cache entry missing (re-run the encode stage)")
        out = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for name in f.keys():
                out[name] = f.get_tensor(name)
        return out

    def metadata(self, key: str) -> dict[str, str]:
        path = self.path(key)
        if not path.exists():
            raise CacheMiss(f"{path}: cache entry missing")
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})

    def keys(self) -> Iterator[str]:
        """Every key in the store (leftover temporary files are skipped)."""
        if not self.root.exists():
            return
        for sub in sorted(self.root.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sorted(sub.glob(f"*{SUFFIX}")):
                if not f.name.startswith("."):
                    yield f.name[: -len(SUFFIX)]

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def verify_entry(self, key: str) -> str | None:
        """None when the entry is sound, else why not: unreadable file, metadata key differs from the
        file name, shape/dtype differ from the metadata, non-finite values, content hash mismatch."""
        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as e:  # safetensors raises several types for a damaged file
            return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        if meta.get("key") != key:
            return f"metadata key {meta.get('key')!r} does not match the file name"
        if not tensors:
            return "no tensors"
        name = meta.get("tensor") or next(iter(tensors))
        if name not in tensors:
            return f"tensor '{name}' named in metadata is missing"
        t = tensors[name]
        if "shape" in meta and json.loads(meta["shape"]) != list(t.shape):
            return f"shape {list(t.shape)} != metadata {meta['shape']}"
        if "dtype" in meta and str(t.dtype).removeprefix("torch.") != meta["dtype"]:
            return f"dtype {str(t.dtype).removeprefix('torch.')} != metadata {meta['dtype']}"
        for n, v in tensors.items():
            if v.is_floating_point() and not bool(v.float().isfinite().all()):
                return f"tensor '{n}' has NaN or Inf values"
        if "content_sha256" in meta and content_sha256(tensors) != meta["content_sha256"]:
            return "content does not match its sha256 (corrupted bytes)"
        return None

    def verify(self, keys: Iterable[str] | None = None) -> Iterator[tuple[str, str | None]]:
        """(key, problem or None) for every entry (or for ``keys``)."""
        for key in self.keys() if keys is None else keys:
            yield key, self.verify_entry(key)

    def leftovers(self) -> list[Path]:
        """Temporary files left by a killed writer (``.tmp-*``), safe to delete when no writer runs."""
        if not self.root.exists():
            return []
        return sorted(p for sub in self.root.iterdir() if sub.is_dir() and len(sub.name) == 2 for p in sub.glob(".tmp-*"))

    def unreferenced(self, keep: Iterable[str]) -> list[str]:
        """Keys in the store that are not in ``keep``."""
        keep = set(keep)
        return [k for k in self.keys() if k not in keep]


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
