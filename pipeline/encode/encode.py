"""The encode stage's logic: plan samples from kept clips + captions, compute only the cache
entries that are missing, and build the ``encoded`` table.

What a sample needs depends on the model family (the profile):

- every family: ``latent`` (the window's VAE latents) and ``text`` (the caption's UMT5 embeddings);
  Wan 2.2 TI2V encodes with its own VAE (48 channels, 16x) and needs nothing more: its
  conditioning is the first latent frame of the latents themselves;
- image-to-video (``task == "i2v"``: Wan 2.1 I2V, Wan 2.2 I2V A14B): ``cond``, the window's first
  frame followed by zeros up to the bucket's frame count, VAE-encoded and normalised like the
  latents (``WanImageToVideoPipeline.prepare_latents``' ``latent_condition``; the trainer adds the
  frame mask). For an image (1-frame bucket) the condition is the image itself;
- Wan 2.1 I2V (``image_encoder``): ``image``, the CLIP vision embedding of that first frame.

1. Plan (no model loaded): every kept clip with an ok caption becomes one or more samples
   (windows, see ``pipeline.encode.buckets``) with a frame bucket, a resolution bucket, and the keys
   of its entries (``pipeline.encode.keys``; the keys need only the weights' fingerprints).
2. VAE pass, only if some latent or cond key is missing: load the VAE, encode the missing
   samples in same-bucket batches (posterior mean, normalised per channel with the VAE config's
   ``latents_mean``/``latents_std``: exactly the latents ``WanPipeline`` denoises), store each
   in the cache dtype as soon as its batch is done, free the VAE.
3. Image pass, only if some image key is missing: load the CLIP vision encoder, embed, free.
4. Text pass, only if some text key is missing: load the tokenizer + UMT5 encoder, encode the
   missing captions (padding trimmed, as Wan does), store, free.
5. The table: one row per sample whose entries are all in the store.

An entry is reused only when it passes the store's cheap check (``CacheStore.check_header``: size,
header, key). A damaged one is treated as missing: one WARNING names the file and the reason, it is
encoded again and the new entry replaces it atomically (``damaged_recomputed`` in the metrics).

A tensor with NaN or Inf is never stored: its sample is rejected with a reason. A clip that
cannot be read rejects its samples; the batch goes on. Entries are written one by one and
atomically, so a killed run keeps what it finished and a re-run computes only the rest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.core.fingerprint import FileHashMemo
from pipeline.encode.config import EncodeConfig
from pipeline.encode.encoder import Encoder
from pipeline.encode.jobs import VaeJob, first_by
from pipeline.encode.plan import Sample, plan_samples
from pipeline.models.profiles import Profile

log = logging.getLogger("encode")


def encode_dataset(
    dataset: pl.DataFrame, captions: pl.DataFrame, store: CacheStore, profile: Profile, cfg: EncodeConfig,
    root: str | Path = ".", memo: FileHashMemo | None = None,
) -> EncodeResult:
    """Plan, encode what is missing, and return the ``encoded`` table with the stage metrics."""
    samples, skipped = plan_samples(dataset, captions, cfg, profile, root)
    return encode_samples(Encoder(store, profile, cfg, memo), samples, skipped)


@dataclass
class EncodeResult:
    table: pl.DataFrame
    metrics: dict
    rejected: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def _drop_missing(enc: Encoder, samples: list[Sample], attrs: tuple[str, ...], reasons: dict[str, str],
                  rejected: list[dict]) -> list[Sample]:
    """Samples whose entries named by ``attrs`` are all in the store; the others are rejected with
    the reason their entry was not made."""
    alive = []
    for s in samples:
        gone = [getattr(s, a) for a in attrs if getattr(s, a) and not enc._stored(getattr(s, a))]
        if gone:
            rejected.append({"sample_id": s.sample_id, "reason": next((reasons[k] for k in gone if k in reasons), "entry not stored")})
        else:
            alive.append(s)
    return alive
def encode_samples(enc: Encoder, samples: list[Sample], skipped: list[dict] | None = None) -> EncodeResult:
    """Compute what is missing of ``samples``' entries (model by model) and build the ``encoded`` table."""
    enc.assign_keys(samples)
    enc.damaged = set()
    rejected: list[dict] = []
    # VAE pass: latents (every family) and first-frame conditions (I2V)
    first_lat, first_cond = first_by(samples, "latent_key"), first_by(samples, "cond_key")
    lat_todo = {id(s) for k, s in first_lat.items() if not enc._reusable(k)}
    cond_todo = {id(s) for k, s in first_cond.items() if not enc._reusable(k)}
    jobs = [VaeJob(s, id(s) in lat_todo, id(s) in cond_todo) for s in samples if id(s) in lat_todo or id(s) in cond_todo]
    lat_computed = cond_computed = 0
    reasons: dict[str, str] = {}
    if jobs:
        what = f"{len(lat_todo)} latents" + (f" and {len(cond_todo)} first-frame conditions" if enc.needs_cond else "")
        log.info("encoding %s (%d + %d already cached)", what, len(first_lat) - len(lat_todo), len(first_cond) - len(cond_todo))
        lat_computed, cond_computed, rej = enc.encode_vae(jobs)
        by_id = {j.sample.sample_id: j.sample for j in jobs}
        for r in rej:
            s = by_id[r["sample_id"]]
            reasons[s.latent_key] = reasons[s.cond_key or s.latent_key] = r["reason"]
    alive = _drop_missing(enc, samples, ("latent_key", "cond_key"), reasons, rejected)
    # image pass: CLIP embeddings of the first frame (Wan 2.1 I2V)
    first_img = first_by(alive, "image_key")
    missing_i = [s for k, s in first_img.items() if not enc._reusable(k)]
    img_computed = 0
    if missing_i:
        log.info("embedding %d first frames (%d already cached)", len(missing_i), len(first_img) - len(missing_i))
        img_computed, rej = enc.encode_images(missing_i)
        by_id = {s.sample_id: s for s in missing_i}
        reasons = {by_id[r["sample_id"]].image_key: r["reason"] for r in rej}
        alive = _drop_missing(enc, alive, ("image_key",), reasons, rejected)
    # text pass
    first_text = first_by(alive, "text_key")
    missing_t = [s for k, s in first_text.items() if not enc._reusable(k)]
    txt_computed = 0
    if missing_t:
        log.info("encoding %d captions (%d already cached)", len(missing_t), len(first_text) - len(missing_t))
        txt_computed, bad_text = enc.encode_texts(missing_t)
        for s in alive:
            if s.text_key in bad_text:
                rejected.append({"sample_id": s.sample_id, "reason": "prompt embedding has NaN or Inf values"})
        alive = [s for s in alive if s.text_key not in bad_text]
    for r in rejected:
        log.warning("reject sample %s: %s", r["sample_id"], r["reason"])
    table = encoded_table(enc, alive)
    metrics = {
        "samples": table.height,
        "latents_computed": lat_computed,
        "latents_reused": len(first_lat) - len(lat_todo),
        "conds_computed": cond_computed,
        "conds_reused": len(first_cond) - len(cond_todo),
        "images_computed": img_computed,
        "images_reused": len(first_img) - len(missing_i),
        "texts_computed": txt_computed,
        "texts_reused": len(first_text) - len(missing_t),
        "rejected": len(rejected),
        "skipped": len(skipped or []),
        "rejections": rejected,
        "skips": list(skipped or []),
    }
    if enc.damaged:  # only when some were found, so a clean run's metrics keep their keys
        metrics["damaged_recomputed"] = len(enc.damaged)
    return EncodeResult(table, metrics, rejected, list(skipped or []))


def encoded_table(enc: Encoder, samples: list[Sample]) -> pl.DataFrame:
    rows = []
    for s in samples:
        lm, tm = enc.store.metadata(s.latent_key), enc.store.metadata(s.text_key)
        rows.append({
            "sample_id": s.sample_id, "clip_id": s.clip_id, "kind": s.kind, "window": s.window,
            "frame_indices": s.frame_indices, "bucket_frames": s.bucket[0], "bucket_height": s.bucket[1],
            "bucket_width": s.bucket[2], "latent_key": s.latent_key, "text_key": s.text_key,
            "cond_key": s.cond_key, "image_key": s.image_key,
            "latent_shape": json.loads(lm["shape"]), "text_shape": json.loads(tm["shape"]), "dtype": enc.cfg.dtype,
            "family": enc.profile.family, "vae": enc.vae_id, "text_encoder": enc.text_id, "caption": s.caption,
        })
    return schemas.frame("encoded", rows)
