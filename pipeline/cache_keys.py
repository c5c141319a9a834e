"""Cache keys: sha256 of everything that determines an entry's tensors, and nothing else.

A key never goes stale: change the clip's bytes, the frames taken, the bucket, the resize,
the model weights, the dtype or this module's format version, and the key changes, so the
old entry is simply not found (``vlp cache gc`` removes it later). Change anything else (a
caption, a train param) and the key stays, so nothing is re-encoded.

Entry kinds (``kind`` in the key and in the entry metadata):
- ``latent``: VAE posterior mean of a window of frames, normalised (see pipeline.encode);
- ``text``: UMT5 prompt embeddings, padding trimmed.
Families that need more (Wan I2V: the first frame encoded as conditioning and a CLIP image
embedding) add their own kinds with their own key functions here; every key names the model
fingerprint, so an entry made by one VAE is never found by a profile with another.
"""

from __future__ import annotations

from pipeline.fsutil import sha256_json

# Bump when what an entry holds changes meaning (tensor names, normalisation, layout).
FORMAT_VERSION = "vlp-cache/1"
POSTERIOR = "mean"


def latent_key(
    *,
    clip_sha256: str,
    frame_indices: list[int],
    bucket: tuple[int, int, int],
    resize: dict,
    vae_fingerprint: str,
    dtype: str,
    compute_dtype: str,
    tiling: str = "",
    posterior: str = POSTERIOR,
) -> str:
    """Key of a latent entry: clip bytes, frames, bucket (frames, height, width), resize/crop, VAE,
    dtypes, and the VAE tiling used ("" = none, else "SIZE/STRIDE": tiles blend, so values differ)."""
    return sha256_json({
        "kind": "latent",
        "format": FORMAT_VERSION,
        "clip_sha256": clip_sha256,
        "frame_indices": [int(i) for i in frame_indices],
        "bucket": [int(b) for b in bucket],
        "resize": resize,
        "vae": vae_fingerprint,
        "dtype": dtype,
        "compute_dtype": compute_dtype,
        "tiling": tiling,
        "posterior": posterior,
    })


def text_key(*, caption: str, text_fingerprint: str, max_length: int, dtype: str, compute_dtype: str) -> str:
    """Key of a text entry: caption text (as the encoder sees it, after ``WanPipeline``'s prompt
    clean-up), tokenizer + encoder fingerprint, max length, dtypes."""
    return sha256_json({
        "kind": "text",
        "format": FORMAT_VERSION,
        "caption": caption,
        "text_encoder": text_fingerprint,
        "max_length": int(max_length),
        "dtype": dtype,
        "compute_dtype": compute_dtype,
    })
