"""A content-addressed store of tensors: one safetensors file per key, ``root/ab/<key>.safetensors``.

Keys are sha256 hex digests of everything that determines the tensors (see
``pipeline.encode.keys``), so an entry never goes stale: a changed input is a new key.
Writes are atomic (temporary file in the same folder, then rename), so two writers or a
kill mid-write never leave a half-written entry. Files are read with safetensors only.

Several processes (machines sharing a folder) may encode into one store at once: a reader never
sees a partial file (an entry appears whole, by rename), two writers of one key end with one
whole entry (the last rename wins; both wrote the same tensors), and ``vlp cache gc`` leaves
alone what is younger than its grace period (a writer's temporary file, an entry not yet in the
index its writer will write). A reader whose entry was removed by a gc meanwhile gets
:class:`CacheMiss`, as for an entry never written.

Entries can still be damaged on disk (a bad disk, a copy cut short, a hand edit). Two checks
find them: :meth:`CacheStore.check_header` (cheap: size, header, key; what the encode stage runs
before reusing an entry) and :meth:`CacheStore.verify_entry` (reads every byte and compares the
stored ``content_sha256``; ``vlp cache verify`` and the train stage). Reading a damaged file raises
:class:`CacheDamaged`, whose message is one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

from pipeline.core.errors import one_line
from pipeline.core.fs import atomic_path

SUFFIX = ".safetensors"


# Bytes per element of each safetensors dtype (the header names them so).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
# A header larger than this is not one the store wrote (ours are a few KB): the length bytes are damaged.
MAX_HEADER_BYTES = 100 * 2**20


class CacheMiss(KeyError):
    """A key the store does not hold."""


class CacheDamaged(ValueError):
    """An entry whose file cannot be read as what the store wrote; the message is one line naming the file."""


def _header_length(path: Path, head: bytes, size: int) -> int:
    """The header length a file of ``size`` bytes starts with (``head``: its first 8 bytes), if plausible."""
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if n > MAX_HEADER_BYTES:
        raise CacheDamaged(f"{path}: implausible header length {n} (damaged file)")
    if n < 0 or 8 + n > size:
        raise CacheDamaged(f"{path}: truncated ({size} bytes, the header alone needs {8 + max(n, 0)})")
    return n


def read_header(path: Path) -> dict:
    """The parsed safetensors header of ``path`` (tensor entries and ``__metadata__``), checked against
    the file's size: raises :class:`CacheDamaged` naming the file and what is wrong."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = _header_length(path, f.read(8), size)
            raw = f.read(n)
    except OSError as e:
        raise CacheDamaged(f"{path}: unreadable ({one_line(e)})") from None
    return _decode_header(path, raw, size - 8 - n)


def _decode_header(path: Path, raw: bytes, data_bytes: int) -> dict:
    """The header's JSON, checked against the ``data_bytes`` of tensor data that follow it."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CacheDamaged(f"{path}: header is not valid JSON ({one_line(e)})") from None
    if not isinstance(header, dict):
        raise CacheDamaged(f"{path}: header is not a JSON object")
    _check_layout(path, header, data_bytes)
    return header


def _check_layout(path: Path, header: dict, data_bytes: int) -> None:
    """Every tensor's dtype, shape and byte range fit together and the data fills the file exactly."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            width = DTYPE_BYTES[entry["dtype"]]
            numel = 1
            for d in entry["shape"]:
                numel *= int(d)
            begin, stop = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CacheDamaged(f"{path}: header entry of tensor '{name}' is damaged") from None
        if stop - begin != numel * width or begin < 0:
            raise CacheDamaged(f"{path}: tensor '{name}' byte range {begin}..{stop} does not fit its shape and dtype")
        end = max(end, stop)
    if end != data_bytes:
        what = "truncated" if end > data_bytes else "has trailing bytes"
        raise CacheDamaged(f"{path}: {what} (tensor data {data_bytes} bytes, the header describes {end})")


class CacheStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.expanduser(str(root)))

    def path(self, key: str) -> Path:
        if len(key) < 3 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def has(self, key: str) -> bool:
        """Whether the key's file exists (sound or not: see :meth:`check_header`)."""
        return self.path(key).exists()

    def check_header(self, key: str) -> str | None:
        """None when the entry looks sound without reading its tensors, else why not: missing file,
        size that does not match its header, header that does not parse, ``key`` metadata that
        differs from the file name. Cheap (reads the header only); bytes flipped inside the tensor
        data are found by :meth:`verify_entry`."""
        path = self.path(key)
        if not path.exists():
            return "missing"
        try:
            header = read_header(path)
        except CacheDamaged as e:
            return str(e).removeprefix(f"{path}: ")
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict) or meta.get("key") != key:
            found = meta.get("key") if isinstance(meta, dict) else None
            return f"metadata key {found!r} does not match the file name"
        return None

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

    def get(self, key: str, device: str | torch.device = "cpu", verify: bool = False) -> dict[str, torch.Tensor]:
        """The entry's tensors. Raises :class:`CacheMiss` when it is missing and :class:`CacheDamaged`
        (one line naming the file) when it cannot be read, or with ``verify`` when its content does
        not match the stored ``content_sha256``. The file is read, not memory-mapped: the tensors
        are the process's own (a file changed or truncated later cannot change them or crash a reader)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # never written, or removed by a gc since
            raise CacheMiss(f"{path}: cache entry missing (re-run the encode stage)") from None
        except OSError as e:
            raise CacheDamaged(f"{path}: unreadable cache entry ({one_line(e)})") from None
        n = _header_length(path, data[:8], len(data))
        header = _decode_header(path, data[8 : 8 + n], len(data) - 8 - n)
        try:
            out = safetensors_load(data)
        except Exception as e:  # safetensors raises several types for a damaged file
            raise CacheDamaged(f"{path}: unreadable cache entry ({one_line(e)})") from None
        if verify and (header.get("__metadata__") or {}).get("content_sha256") != content_sha256(out):
            raise CacheDamaged(f"{path}: content does not match its sha256 (corrupted bytes)")
        if torch.device(device).type != "cpu":
            out = {name: t.to(device) for name, t in out.items()}
        return out

    def metadata(self, key: str) -> dict[str, str]:
        path = self.path(key)
        if not path.exists():
            raise CacheMiss(f"{path}: cache entry missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                return dict(f.metadata() or {})
        except Exception as e:  # safetensors raises several types for a damaged file
            raise CacheDamaged(f"{path}: unreadable cache entry ({one_line(e)})") from None

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
            return f"unreadable ({one_line(e)})"
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

    def leftovers(self, older_than_s: float = 0.0) -> list[Path]:
        """Temporary files (``.tmp-*``) last written more than ``older_than_s`` seconds ago: left by a
        killed writer (a running writer's file is younger: give a grace period when others may write)."""
        if not self.root.exists():
            return []
        found = (p for sub in self.root.iterdir() if sub.is_dir() and len(sub.name) == 2 for p in sub.glob(".tmp-*"))
        return sorted(p for p in found if _age_s(p) > older_than_s)

    def unreferenced(self, keep: Iterable[str], older_than_s: float = 0.0) -> list[str]:
        """Keys in the store that are not in ``keep`` and were written more than ``older_than_s`` seconds
        ago (an entry another process wrote a moment ago may not be in its index yet)."""
        keep = set(keep)
        return [k for k in self.keys() if k not in keep and _age_s(self.path(k)) > older_than_s]


def _age_s(path: Path) -> float:
    """Seconds since ``path`` was last written (infinite when it is gone: nothing to keep it for)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
