"""A content-addressed store of tensors: one safetensors file per key, ``root/ab/<key>.safetensors``.

Keys are sha256 hex digests of everything that determines the tensors (see
``pipeline.cache_keys``), so an entry never goes stale: a changed input is a new key.
Writes are atomic (temporary file in the same folder, then rename), so two writers or a
kill mid-write never leave a half-written entry. Files are read with safetensors only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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
        """Write an entry atomically; ``metadata`` values must be strings. ``key`` is stored in it too."""
        path = self.path(key)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta["key"] = key
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
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
