"""The encode stage's logic: plan samples from kept clips + captions, compute only the cache
entries that are missing, and build the ``encoded`` table.

1. Plan (no model loaded): every kept clip with an ok caption becomes one or more samples
   (windows, see ``pipeline.buckets``) with a frame bucket, a resolution bucket, and the keys
   of its latent and text entries (``pipeline.cache_keys``; the keys need only the weights'
   fingerprints, not the models).
2. VAE pass, only if some latent key is missing: load the VAE, encode the missing samples in
   same-bucket batches (posterior mean, normalised per channel with the VAE config's
   ``latents_mean``/``latents_std``: exactly the latents ``WanPipeline`` denoises), store each
   in the cache dtype as soon as its batch is done, free the VAE.
3. Text pass, only if some text key is missing: load the tokenizer + UMT5 encoder, encode the
   missing captions (padding trimmed, as Wan does), store, free.
4. The table: one row per sample whose entries are all in the store.

A tensor with NaN or Inf is never stored: its sample is rejected with a reason. A clip that
cannot be read rejects its samples; the batch goes on. Entries are written one by one and
atomically, so a killed run keeps what it finished and a re-run computes only the rest.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import torch
from tqdm import tqdm

from pipeline import schemas
from pipeline.buckets import MODES, Resize, check_frame_buckets, frame_windows, pick_resolution
from pipeline.cache import CacheStore
from pipeline.cache_keys import FORMAT_VERSION, POSTERIOR, latent_key, text_key
from pipeline.fingerprint import FileHashMemo
from pipeline.frames import load_frames, to_pixels
from pipeline.models.devices import compute_dtype, dtype_name, free_memory, parse_dtype, resolve_device
from pipeline.profiles import Profile

log = logging.getLogger("encode")


@dataclass(frozen=True)
class EncodeConfig:
    frame_buckets: tuple[int, ...] = (17, 33, 49, 81)
    target_fps: float | None = 16.0
    mode: str = "head"
    windows: int = 1
    area: int = 480 * 832
    image_area: int = 480 * 832
    step: int = 16
    upscale: bool = False
    interpolation: str = "area"
    dtype: str = "bfloat16"
    vae_dtype: str = "float32"
    device: str = "auto"
    batch_size: int = 1
    text_batch_size: int = 8
    vae_tiling: bool = True
    tile_size: int = 256
    tile_stride: int = 192
    max_text_tokens: int | None = None  # None: the profile's

    @classmethod
    def from_params(cls, p: dict) -> "EncodeConfig":
        unknown = sorted(set(p) - set(cls.__dataclass_fields__) - {"cache_dir"})
        if unknown:
            raise ValueError(f"params.yaml encode: unknown key(s) {unknown}")
        known = {k: v for k, v in p.items() if k in cls.__dataclass_fields__}
        if "frame_buckets" in known:
            known["frame_buckets"] = tuple(known["frame_buckets"])
        return cls(**known)

    def resize_params(self) -> dict:
        """What the latent key records about resizing (the bucket itself is keyed separately)."""
        return {"fit": "cover", "crop": "center", "interpolation": self.interpolation, "upscale": self.upscale}


@dataclass
class Sample:
    sample_id: str
    clip_id: str
    kind: str
    window: int
    path: str
    clip_sha256: str
    size: tuple[int, int]  # (width, height) of the clip's frames
    frame_indices: list[int]
    resize: Resize
    caption: str
    latent_key: str = ""
    text_key: str = ""
    tiling: str = ""  # "" = encoded whole; "SIZE/STRIDE" = encoded in tiles

    @property
    def bucket(self) -> tuple[int, int, int]:
        return (len(self.frame_indices), self.resize.height, self.resize.width)


@dataclass
class EncodeResult:
    table: pl.DataFrame
    metrics: dict
    rejected: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


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
    if cfg.step % (profile.vae_scale_spatial * 2):
        raise ValueError(f"encode.step {cfg.step} must be a multiple of {profile.vae_scale_spatial * 2} for {profile.name}")
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
                r = pick_resolution(*size, area=cfg.image_area, step=cfg.step, upscale=cfg.upscale)
                windows = [[0]]
            else:
                r = pick_resolution(*size, area=cfg.area, step=cfg.step, upscale=cfg.upscale)
                _, windows = frame_windows(int(row["n_frames"]), float(row["fps"] or 0), cfg.target_fps, buckets, cfg.mode, cfg.windows)
        except ValueError as e:
            skipped.append({"clip_id": cid, "reason": str(e)})
            continue
        if not windows:
            skipped.append({
                "clip_id": cid,
                "reason": f"too short: {row['n_frames']} frames at {row['fps']:.3g} fps < {buckets[0]} frames at {cfg.target_fps} fps",
            })
            continue
        for w, idx in enumerate(windows):
            samples.append(Sample(
                sample_id=f"{cid}#{w}", clip_id=cid, kind=row["kind"], window=w, path=str(Path(root) / row["path"]),
                clip_sha256=row["sha256"], size=size, frame_indices=idx, resize=r, caption=text[cid],
            ))
    for s in skipped:
        log.info("skip clip %s: %s", s["clip_id"], s["reason"])
    return samples, skipped


def assign_keys(samples: list[Sample], cfg: EncodeConfig, vae_fp: str, text_fp: str, max_len: int, device: torch.device) -> None:
    from pipeline.models.text_encoder import clean_prompt

    vae_comp = dtype_name(compute_dtype(parse_dtype(cfg.vae_dtype), device))
    text_comp = dtype_name(compute_dtype(parse_dtype(cfg.dtype), device))
    for s in samples:
        tiled = cfg.vae_tiling and (s.resize.height > cfg.tile_size or s.resize.width > cfg.tile_size)
        s.tiling = f"{cfg.tile_size}/{cfg.tile_stride}" if tiled else ""
        s.latent_key = latent_key(
            clip_sha256=s.clip_sha256, frame_indices=s.frame_indices, bucket=s.bucket,
            resize=cfg.resize_params(), vae_fingerprint=vae_fp, dtype=cfg.dtype, compute_dtype=vae_comp, tiling=s.tiling,
        )
        s.text_key = text_key(caption=clean_prompt(s.caption), text_fingerprint=text_fp, max_length=max_len, dtype=cfg.dtype, compute_dtype=text_comp)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


class Encoder:
    """Runs the stage against one cache store with one profile."""

    def __init__(self, store: CacheStore, profile: Profile, cfg: EncodeConfig, memo: FileHashMemo | None = None):
        from pipeline.models.text_encoder import text_fingerprint
        from pipeline.models.vae import vae_fingerprint

        self.store, self.profile, self.cfg = store, profile, cfg
        self.device = resolve_device(cfg.device)
        self.store_dtype = parse_dtype(cfg.dtype)
        self.compute_dtype = compute_dtype(self.store_dtype, self.device)  # text encoder
        self.vae_compute_dtype = compute_dtype(parse_dtype(cfg.vae_dtype), self.device)
        self.max_len = int(cfg.max_text_tokens or profile.max_text_tokens)
        memo = memo if memo is not None else FileHashMemo(store.root / "fingerprints.json")
        self.vae_fp = vae_fingerprint(profile, memo)
        self.text_fp = text_fingerprint(profile, memo)

    @property
    def vae_id(self) -> str:
        from pipeline.models.vae import vae_id

        return vae_id(self.profile, self.vae_fp)

    @property
    def text_id(self) -> str:
        from pipeline.models.text_encoder import text_encoder_id

        return text_encoder_id(self.profile, self.text_fp)

    # -- VAE pass -------------------------------------------------------------------------
    def load_vae(self):
        from pipeline.models.vae import load_vae

        vae = load_vae(self.profile, self.vae_compute_dtype, self.device)
        if self.cfg.vae_tiling:
            vae.enable_tiling(
                tile_sample_min_height=self.cfg.tile_size, tile_sample_min_width=self.cfg.tile_size,
                tile_sample_stride_height=self.cfg.tile_stride, tile_sample_stride_width=self.cfg.tile_stride,
            )
        return vae

    def latent_batches(self, todo: list[Sample]) -> list[list[Sample]]:
        by_bucket: dict[tuple, list[Sample]] = defaultdict(list)
        for s in todo:
            by_bucket[s.bucket].append(s)
        bs = max(1, int(self.cfg.batch_size))
        return [group[i : i + bs] for b in sorted(by_bucket) for group in [by_bucket[b]] for i in range(0, len(group), bs)]

    def _frames(self, batch: list[Sample]) -> tuple[list[Sample], list, list[dict]]:
        """Decoded, resized frames of a batch (runs in the reader thread: no torch ops here, they
        would start a second OpenMP pool competing with the model's)."""
        ok, frames, bad = [], [], []
        for s in batch:
            try:
                frames.append(load_frames(s.path, s.kind, s.frame_indices, s.resize, s.size, self.cfg.interpolation))
                ok.append(s)
            except Exception as e:  # unreadable/truncated clip: reject this sample, go on
                bad.append({"sample_id": s.sample_id, "reason": f"{s.path}: {e}".splitlines()[0]})
        return ok, frames, bad

    def encode_latents(self, todo: list[Sample]) -> tuple[int, list[dict]]:
        """Encode and store the latents of ``todo`` (one sample per missing key). Returns (computed, rejected)."""
        from pipeline.models.vae import encode_mean

        rejected: list[dict] = []
        computed = 0
        batches = self.latent_batches(todo)
        vae = self.load_vae()
        try:
            reader = self._read_ahead(batches, threaded=self.device.type == "cuda")
            for ok, frames, bad in tqdm(reader, total=len(batches), desc="encode latents", unit="batch", disable=None):
                rejected += bad
                if not ok:
                    continue
                lat = encode_mean(vae, torch.stack([to_pixels(f) for f in frames]))
                for s, z in zip(ok, lat):
                    z = z.to(self.store_dtype).cpu()
                    if not _finite(z):
                        rejected.append({"sample_id": s.sample_id, "reason": "latent has NaN or Inf values"})
                        continue
                    self.store.put(s.latent_key, {"latents": z}, self._latent_meta(s, z))
                    computed += 1
        finally:
            del vae
            free_memory(self.device)
        return computed, rejected

    def _read_ahead(self, batches: list[list[Sample]], threaded: bool):
        """Frames of each batch. ``threaded`` (on a GPU): the next batch is read in a thread while the
        VAE runs; on the CPU that thread would only take cores from the VAE, so batches are read in turn."""
        if not threaded:
            yield from (self._frames(b) for b in batches)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self._frames, batches[0])
            for i in range(len(batches)):
                cur = nxt.result()
                if i + 1 < len(batches):
                    nxt = pool.submit(self._frames, batches[i + 1])
                yield cur

    def _latent_meta(self, s: Sample, z: torch.Tensor) -> dict[str, str]:
        return {
            "kind": "latent", "tensor": "latents", "shape": json.dumps(list(z.shape)), "dtype": dtype_name(z.dtype),
            "format": FORMAT_VERSION, "family": self.profile.family, "model": self.vae_id, "fingerprint": self.vae_fp,
            "clip_id": s.clip_id, "sample_kind": s.kind, "frame_indices": json.dumps(s.frame_indices),
            "bucket": json.dumps(list(s.bucket)), "posterior": POSTERIOR,
            "normalization": "(mean - latents_mean) / latents_std", "created": _now(),
        }

    # -- text pass ------------------------------------------------------------------------
    def encode_texts(self, todo: list[Sample]) -> tuple[int, list[str]]:
        """Encode and store the prompt embeddings of ``todo`` (one sample per missing key).
        Returns (computed, text keys rejected for NaN/Inf)."""
        from pipeline.models.text_encoder import encode_prompts, load_text_encoder

        bad_keys: list[str] = []
        computed = 0
        bs = max(1, int(self.cfg.text_batch_size))
        tokenizer, encoder = load_text_encoder(self.profile, self.compute_dtype, self.device)
        try:
            for i in tqdm(range(0, len(todo), bs), desc="encode captions", unit="batch", disable=None):
                batch = todo[i : i + bs]
                embeds, truncated = encode_prompts(tokenizer, encoder, [s.caption for s in batch], self.max_len)
                for s, e, cut in zip(batch, embeds, truncated):
                    if cut:
                        log.warning("caption of %s is longer than %d tokens; truncated", s.clip_id, self.max_len)
                    e = e.to(self.store_dtype)
                    if not _finite(e):
                        bad_keys.append(s.text_key)
                        continue
                    self.store.put(s.text_key, {"prompt_embeds": e}, {
                        "kind": "text", "tensor": "prompt_embeds", "shape": json.dumps(list(e.shape)),
                        "dtype": dtype_name(e.dtype), "format": FORMAT_VERSION, "family": self.profile.family,
                        "model": self.text_id, "fingerprint": self.text_fp, "clip_id": s.clip_id,
                        "caption": s.caption, "max_length": str(self.max_len), "created": _now(),
                    })
                    computed += 1
        finally:
            del tokenizer, encoder
            free_memory(self.device)
        return computed, bad_keys

    # -- the whole stage ------------------------------------------------------------------
    def run(self, samples: list[Sample], skipped: list[dict] | None = None) -> EncodeResult:
        assign_keys(samples, self.cfg, self.vae_fp, self.text_fp, self.max_len, self.device)
        rejected: list[dict] = []

        first_by_latent = {}
        for s in samples:
            first_by_latent.setdefault(s.latent_key, s)
        missing = [s for k, s in first_by_latent.items() if not self.store.has(k)]
        lat_computed, rej_latent = 0, []
        if missing:
            log.info("encoding %d latents (%d already cached)", len(missing), len(first_by_latent) - len(missing))
            lat_computed, rej_latent = self.encode_latents(missing)
        reason_by_key = {}
        by_id = {s.sample_id: s for s in missing}
        for r in rej_latent:
            reason_by_key[by_id[r["sample_id"]].latent_key] = r["reason"]
        alive = []
        for s in samples:  # a sample whose latent is not in the store (rejected) drops out, with its reason
            if self.store.has(s.latent_key):
                alive.append(s)
            else:
                rejected.append({"sample_id": s.sample_id, "reason": reason_by_key.get(s.latent_key, "latent not stored")})

        first_by_text = {}
        for s in alive:
            first_by_text.setdefault(s.text_key, s)
        missing_t = [s for k, s in first_by_text.items() if not self.store.has(k)]
        txt_computed = 0
        if missing_t:
            log.info("encoding %d captions (%d already cached)", len(missing_t), len(first_by_text) - len(missing_t))
            txt_computed, bad_text = self.encode_texts(missing_t)
            for s in alive:
                if s.text_key in bad_text:
                    rejected.append({"sample_id": s.sample_id, "reason": "prompt embedding has NaN or Inf values"})
            alive = [s for s in alive if s.text_key not in bad_text]

        for r in rejected:
            log.warning("reject sample %s: %s", r["sample_id"], r["reason"])
        table = self.table(alive)
        metrics = {
            "samples": table.height,
            "latents_computed": lat_computed,
            "latents_reused": len(first_by_latent) - len(missing),
            "texts_computed": txt_computed,
            "texts_reused": len(first_by_text) - len(missing_t),
            "rejected": len(rejected),
            "skipped": len(skipped or []),
            "rejections": rejected,
            "skips": list(skipped or []),
        }
        return EncodeResult(table, metrics, rejected, list(skipped or []))

    def table(self, samples: list[Sample]) -> pl.DataFrame:
        rows = []
        for s in samples:
            lm, tm = self.store.metadata(s.latent_key), self.store.metadata(s.text_key)
            rows.append({
                "sample_id": s.sample_id, "clip_id": s.clip_id, "kind": s.kind, "window": s.window,
                "frame_indices": s.frame_indices, "bucket_frames": s.bucket[0], "bucket_height": s.bucket[1],
                "bucket_width": s.bucket[2], "latent_key": s.latent_key, "text_key": s.text_key,
                "cond_key": "", "image_key": "",
                "latent_shape": json.loads(lm["shape"]), "text_shape": json.loads(tm["shape"]), "dtype": self.cfg.dtype,
                "family": self.profile.family, "vae": self.vae_id, "text_encoder": self.text_id, "caption": s.caption,
            })
        return schemas.frame("encoded", rows)


def encode_dataset(
    dataset: pl.DataFrame, captions: pl.DataFrame, store: CacheStore, profile: Profile, cfg: EncodeConfig,
    root: str | Path = ".", memo: FileHashMemo | None = None,
) -> EncodeResult:
    """Plan, encode what is missing, and return the ``encoded`` table with the stage metrics."""
    samples, skipped = plan_samples(dataset, captions, cfg, profile, root)
    return Encoder(store, profile, cfg, memo).run(samples, skipped)

