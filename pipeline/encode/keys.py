"""Cache keys: sha256 of everything that determines an entry's tensors, and nothing else.

A key never goes stale: change the clip's bytes, the frames taken, the bucket, the resize,
the model weights, the dtype or this module's format version, and the key changes, so the
old entry is simply not found (``vlp cache gc`` removes it later). Change anything else (a
caption, a train param) and the key stays, so nothing is re-encoded. The encode frame rate
(``encode.target_fps``, by default the profile's) is keyed through the frame indices it picks:
the same frames give the same tensors whatever rate picked them.

Entry kinds (``kind`` in the key and in the entry metadata):
- ``latent``: VAE posterior mean of a window of frames, normalised (see pipeline.encode.encode);
- ``text``: UMT5 prompt embeddings, padding trimmed;
- ``cond`` (image-to-video families): the window's first frame followed by zeros, VAE-encoded
  and normalised like the latents (``WanImageToVideoPipeline``'s ``latent_condition``);
- ``image`` (Wan 2.1 I2V): CLIP vision embedding (penultimate hidden states) of the first frame.
Every key names the model fingerprint, so an entry made by one VAE (or image encoder) is never
found by a profile with another; profiles that share a VAE share its latent and cond entries.
"""

from __future__ import annotations

from pipeline.core.fs import sha256_json

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


COND_I2V = "i2v-first-frame"


def cond_key(
    *,
    clip_sha256: str,
    frame_index: int,
    bucket: tuple[int, int, int],
    resize: dict,
    vae_fingerprint: str,
    dtype: str,
    compute_dtype: str,
    tiling: str = "",
    posterior: str = POSTERIOR,
    condition: str = COND_I2V,
) -> str:
    """Key of an I2V conditioning entry: the first frame (clip bytes + frame index) resized/cropped
    into the bucket, followed by zeros up to the bucket's frame count, encoded by the VAE."""
    return sha256_json({
        "kind": "cond",
        "format": FORMAT_VERSION,
        "condition": condition,
        "clip_sha256": clip_sha256,
        "frame_index": int(frame_index),
        "bucket": [int(b) for b in bucket],
        "resize": resize,
        "vae": vae_fingerprint,
        "dtype": dtype,
        "compute_dtype": compute_dtype,
        "tiling": tiling,
        "posterior": posterior,
    })


def image_key(
    *,
    clip_sha256: str,
    frame_index: int,
    size: tuple[int, int],
    resize: dict,
    processor: dict,
    image_encoder_fingerprint: str,
    dtype: str,
    compute_dtype: str,
) -> str:
    """Key of a CLIP image-embedding entry: the first frame (clip bytes + frame index) as cropped
    into the bucket (``size`` = height, width), the image processor's config, the encoder weights."""
    return sha256_json({
        "kind": "image",
        "format": FORMAT_VERSION,
        "clip_sha256": clip_sha256,
        "frame_index": int(frame_index),
        "size": [int(v) for v in size],
        "resize": resize,
        "processor": processor,
        "image_encoder": image_encoder_fingerprint,
        "dtype": dtype,
        "compute_dtype": compute_dtype,
        "hidden_state": -2,
    })
