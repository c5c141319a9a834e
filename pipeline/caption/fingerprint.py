"""Which model wrote a caption: hub id or local path plus a fingerprint of its config and weights.

The fingerprint is ``pipeline.core.fingerprint.folder_fingerprint`` (the one the encode stage
takes of its models): config, weight and processor files (tokenizer, chat template,
image/video preprocessing). Hashing 15 GB of weights on every run would cost minutes, so file
hashes are memoised (``FileHashMemo``, keyed by absolute path, size and mtime) in
``$VLP_CACHE_DIR`` or ``~/.cache/vlp``: only a file that changed is hashed again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.core.fingerprint import FileHashMemo, folder_fingerprint

log = logging.getLogger("caption")


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
    """``folder_fingerprint`` of a model folder (it must hold weights), file hashes memoised in
    ``default_hash_memo()`` unless ``memo`` is given."""
    return folder_fingerprint(model_dir, memo or FileHashMemo(default_hash_memo()), require_weights=True)


def model_label(name: str, fingerprint: str) -> str:
    """What the ``model`` column holds: ``name@<first 16 hex of the fingerprint>``."""
    return f"{name}@{fingerprint[:16]}"
