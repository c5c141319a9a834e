"""Which model wrote a caption: hub id or local path plus a fingerprint of its config and weights.

Hashing 15 GB of weights on every run would cost minutes, so file hashes are memoised
(``pipeline.fingerprint.FileHashMemo``, keyed by absolute path, size and mtime) in
``$VLP_CACHE_DIR`` or ``~/.cache/vlp``: only a file that changed is hashed again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.fingerprint import FileHashMemo
from pipeline.fsutil import sha256_json

log = logging.getLogger("caption")

# Files that decide what the model outputs: config, weights, and the processor (tokenizer,
# chat template, image/video preprocessing).
FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".model", ".txt", ".tiktoken")
SKIP_NAMES = {"README.md", ".gitattributes"}


def default_hash_memo() -> Path:
    root = os.environ.get("VLP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vlp")
    return Path(root) / "caption-file-sha256.json"


def resolve_model_dir(model: str) -> Path:
    """A local folder as is; a hub id through the Hugging Face cache (downloaded first when missing and online)."""
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached yet: fetch it (needs the network / HF_TOKEN)
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(
                f"model '{model}' is neither a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE=1"
            ) from None
        log.info("downloading %s from the Hugging Face hub", model)
        return Path(snapshot_download(model))


def model_dir_fingerprint(model_dir: str | os.PathLike, memo: FileHashMemo | None = None) -> str:
    """sha256 over the (relative name, sha256) of every config, weight and processor file."""
    model_dir = Path(model_dir)
    memo = memo or FileHashMemo(default_hash_memo())
    files = sorted(
        p for p in model_dir.rglob("*")
        if p.is_file() and p.suffix in FINGERPRINT_SUFFIXES and p.name not in SKIP_NAMES
        and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
    )
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise FileNotFoundError(f"{model_dir}: no weight files (*.safetensors / *.bin)")
    entries = [[p.relative_to(model_dir).as_posix(), memo.sha256(p)] for p in files]
    memo.save()
    return sha256_json(entries)


def model_label(name: str, fingerprint: str) -> str:
    """What the ``model`` column holds: ``name@<first 16 hex of the fingerprint>``."""
    return f"{name}@{fingerprint[:16]}"
