"""Planning the encode stage without loading any model: every kept clip with an ok caption becomes
one or more samples (windows) with a frame bucket, a resolution bucket, and the cache keys of
its entries (which need only the weights' fingerprints).

A window holds clip frame indices; a clip is a span of its source, so the frames are read from the
source at the span's source indices (:meth:`Sample.source_indices`), mapped only when they are read.
The keys stay content-addressed: the clip's ``sha256`` (source, span, resampling, rotation) and the
clip frame indices."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from pipeline.core.clip import ClipSpan
from pipeline.core.devices import (
    compute_dtype,
    dtype_name,
    parse_dtype,
)
from pipeline.encode.buckets import (
    MODES,
    Resize,
    check_frame_buckets,
    frame_windows,
    pick_resolution,
)
from pipeline.encode.config import EncodeConfig
from pipeline.encode.keys import (
    cond_key,
    image_key,
    latent_key,
    text_key,
)
from pipeline.models.profiles import Profile

log = logging.getLogger("encode")


@dataclass
class Sample:
    sample_id: str
    clip_id: str
    kind: str
    window: int
    path: str  # the file the frames are read from: the clip's source (or a train.samples image)
    clip_sha256: str
    size: tuple[int, int]  # (width, height) of the clip's frames
    frame_indices: list[int]  # clip frame indices (what the keys and the encoded table hold)
    resize: Resize
    caption: str
    latent_key: str = ""
    text_key: str = ""
    cond_key: str = ""  # I2V families: first-frame conditioning latents; "" otherwise
    image_key: str = ""  # Wan 2.1 I2V: CLIP embedding of the first frame; "" otherwise
    tiling: str = ""  # "" = encoded whole; "SIZE/STRIDE" = encoded in tiles
    span: ClipSpan | None = None  # where a video clip's frames lie in its source; None: ``path``'s frames as they are

    def source_indices(self, frames: list[int]) -> list[int]:
        """The frames of ``path`` to read for clip frames ``frames`` (the span's source frames)."""
        if self.span is None or self.kind == "image":
            return list(frames)
        return self.span.source_indices(frames)

    @property
    def bucket(self) -> tuple[int, int, int]:
        return (len(self.frame_indices), self.resize.height, self.resize.width)


def ok_captions(captions: pl.DataFrame) -> dict[str, str]:
    """clip_id -> caption text, from rows with status ok and a non-empty caption."""
    ok = captions.filter((pl.col("status") == "ok") & (pl.col("caption").str.strip_chars() != ""))
    return dict(zip(ok["clip_id"].to_list(), ok["caption"].to_list()))


def plan_samples(
    dataset: pl.DataFrame, captions: pl.DataFrame, cfg: EncodeConfig, profile: Profile, root: str | Path = "."
) -> tuple[list[Sample], list[dict]]:
    """Samples for every kept clip (no keys yet) and the clips skipped, each with a reason."""
    buckets = check_frame_buckets(list(cfg.frame_buckets), profile.vae_scale_temporal)
    if cfg.mode not in MODES:
        raise ValueError(f"encode.mode '{cfg.mode}' is not one of {MODES}")
    step = cfg.spatial_step(profile)
    fps = cfg.frame_rate(profile)
    text = ok_captions(captions)
    samples: list[Sample] = []
    skipped: list[dict] = []
    for row in dataset.sort("clip_id").iter_rows(named=True):
        cid = row["clip_id"]
        if row.get("status", "ok") != "ok":
            continue
        if cid not in text:
            skipped.append({"clip_id": cid, "reason": "no ok caption"})
            continue
        size = (int(row["width"]), int(row["height"]))
        try:
            if row["kind"] == "image":
                r = pick_resolution(*size, area=cfg.image_area, step=step, upscale=cfg.upscale)
                windows = [[0]]
            else:
                r = pick_resolution(*size, area=cfg.area, step=step, upscale=cfg.upscale)
                _, windows = frame_windows(int(row["n_frames"]), float(row["fps"] or 0), fps, buckets, cfg.mode, cfg.windows)
        except ValueError as e:
            skipped.append({"clip_id": cid, "reason": str(e)})
            continue
        if not windows:
            skipped.append({
                "clip_id": cid,
                "reason": f"too short: {row['n_frames']} frames at {row['fps']:.3g} fps < {buckets[0]} frames"
                          + (f" at {fps:g} fps" if fps else ""),
            })
            continue
        span = ClipSpan.from_row(row, root)
        for w, idx in enumerate(windows):
            samples.append(Sample(
                sample_id=f"{cid}#{w}", clip_id=cid, kind=row["kind"], window=w, path=span.path,
                clip_sha256=row["sha256"], size=size, frame_indices=idx, resize=r, caption=text[cid], span=span,
            ))
    for s in skipped:
        log.info("skip clip %s: %s", s["clip_id"], s["reason"])
    return samples, skipped


def assign_keys(
    samples: list[Sample], cfg: EncodeConfig, vae_fp: str, text_fp: str, max_len: int, device: torch.device,
    *, cond: bool = False, image_fp: str = "", processor: dict | None = None,
) -> None:
    """Set each sample's keys: latent and text always; ``cond`` (I2V first-frame latents) when
    ``cond``; ``image`` (CLIP embedding) when ``image_fp`` (the image encoder's fingerprint) is given."""
    from pipeline.models.text_encoder import clean_prompt

    vae_comp = dtype_name(compute_dtype(parse_dtype(cfg.vae_dtype), device))
    text_comp = dtype_name(compute_dtype(parse_dtype(cfg.dtype), device))
    resize = cfg.resize_params()
    for s in samples:
        tiled = cfg.vae_tiling and (s.resize.height > cfg.tile_size or s.resize.width > cfg.tile_size)
        s.tiling = f"{cfg.tile_size}/{cfg.tile_stride}" if tiled else ""
        s.latent_key = latent_key(
            clip_sha256=s.clip_sha256, frame_indices=s.frame_indices, bucket=s.bucket,
            resize=resize, vae_fingerprint=vae_fp, dtype=cfg.dtype, compute_dtype=vae_comp, tiling=s.tiling,
        )
        s.text_key = text_key(caption=clean_prompt(s.caption), text_fingerprint=text_fp, max_length=max_len,
                              dtype=cfg.dtype, compute_dtype=text_comp)
        s.cond_key = cond_key(
            clip_sha256=s.clip_sha256, frame_index=s.frame_indices[0], bucket=s.bucket, resize=resize,
            vae_fingerprint=vae_fp, dtype=cfg.dtype, compute_dtype=vae_comp, tiling=s.tiling,
        ) if cond else ""
        s.image_key = image_key(
            clip_sha256=s.clip_sha256, frame_index=s.frame_indices[0], size=s.bucket[1:], resize=resize,
            processor=processor or {}, image_encoder_fingerprint=image_fp, dtype=cfg.dtype, compute_dtype=text_comp,
        ) if image_fp else ""
