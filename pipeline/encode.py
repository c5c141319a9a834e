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
   (windows, see ``pipeline.buckets``) with a frame bucket, a resolution bucket, and the keys
   of its entries (``pipeline.cache_keys``; the keys need only the weights' fingerprints).
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
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from pipeline import schemas
from pipeline.buckets import MODES, Resize, check_frame_buckets, frame_windows, pick_resolution
from pipeline.cache import CacheStore
from pipeline.cache_keys import COND_I2V, FORMAT_VERSION, POSTERIOR, cond_key, image_key, latent_key, text_key
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
    step: int | None = None  # None: the profile's (2 x VAE spatial compression: 16 for Wan 2.1, 32 for Wan 2.2)
    upscale: bool = False
    interpolation: str = "area"
    dtype: str = "bfloat16"
    vae_dtype: str = "float32"
    device: str = "auto"
    batch_size: int = 1
    text_batch_size: int = 8
    image_batch_size: int = 8
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

    def spatial_step(self, profile: Profile) -> int:
        """Bucket sides are multiples of this: the VAE's spatial compression x the transformer's 2x2
        patches (16 px for the Wan 2.1 VAE, 32 px for the Wan 2.2 VAE), or a multiple of it."""
        unit = 2 * profile.vae_scale_spatial
        step = int(self.step or unit)
        if step % unit:
            raise ValueError(f"encode.step {step} must be a multiple of {unit} for {profile.name} ({profile.vae} VAE)")
        return step


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
    cond_key: str = ""  # I2V families: first-frame conditioning latents; "" otherwise
    image_key: str = ""  # Wan 2.1 I2V: CLIP embedding of the first frame; "" otherwise
    tiling: str = ""  # "" = encoded whole; "SIZE/STRIDE" = encoded in tiles

    @property
    def bucket(self) -> tuple[int, int, int]:
        return (len(self.frame_indices), self.resize.height, self.resize.width)


@dataclass
class VaeJob:
    """One sample in the VAE pass: its latents, its I2V condition, or both are missing."""

    sample: Sample
    latent: bool
    cond: bool

    @property
    def bucket(self) -> tuple[int, int, int]:
        return self.sample.bucket


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
    step = cfg.spatial_step(profile)
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
        s.text_key = text_key(caption=clean_prompt(s.caption), text_fingerprint=text_fp, max_length=max_len, dtype=cfg.dtype, compute_dtype=text_comp)
        s.cond_key = cond_key(
            clip_sha256=s.clip_sha256, frame_index=s.frame_indices[0], bucket=s.bucket, resize=resize,
            vae_fingerprint=vae_fp, dtype=cfg.dtype, compute_dtype=vae_comp, tiling=s.tiling,
        ) if cond else ""
        s.image_key = image_key(
            clip_sha256=s.clip_sha256, frame_index=s.frame_indices[0], size=s.bucket[1:], resize=resize,
            processor=processor or {}, image_encoder_fingerprint=image_fp, dtype=cfg.dtype, compute_dtype=text_comp,
        ) if image_fp else ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def first_frame_condition(first: torch.Tensor, frames: int) -> torch.Tensor:
    """Pixels [3, 1, H, W] in [-1, 1] -> [3, frames, H, W]: the first frame followed by zeros
    (``WanImageToVideoPipeline.prepare_latents``' ``video_condition``)."""
    return torch.cat([first, first.new_zeros(first.shape[0], frames - 1, *first.shape[2:])], dim=1)


def _encode_stack(vae, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Normalised latents of same-shape pixel tensors, encoded as one batch ([] for none)."""
    from pipeline.models import vae as vae_mod  # looked up at call time (tests patch encode_mean)

    return list(vae_mod.encode_mean(vae, torch.stack(pixels))) if pixels else []


def _first_by(samples: list[Sample], attr: str) -> dict[str, Sample]:
    """key -> the first sample with that key (one computation per distinct key)."""
    out: dict[str, Sample] = {}
    for s in samples:
        k = getattr(s, attr)
        if k:
            out.setdefault(k, s)
    return out


class Encoder:
    """Runs the stage against one cache store with one profile."""

    def __init__(self, store: CacheStore, profile: Profile, cfg: EncodeConfig, memo: FileHashMemo | None = None):
        from pipeline.models.text_encoder import text_fingerprint
        from pipeline.models.vae import vae_fingerprint

        self.store, self.profile, self.cfg = store, profile, cfg
        self.device = resolve_device(cfg.device)
        self.store_dtype = parse_dtype(cfg.dtype)
        self.compute_dtype = compute_dtype(self.store_dtype, self.device)  # text and image encoders
        self.vae_compute_dtype = compute_dtype(parse_dtype(cfg.vae_dtype), self.device)
        self.max_len = int(cfg.max_text_tokens or profile.max_text_tokens)
        self.damaged: set[str] = set()  # keys found damaged in this run (encoded again)
        self.needs_cond = profile.task == "i2v"
        self.needs_image = bool(profile.image_encoder)
        memo = memo if memo is not None else FileHashMemo(store.root / "fingerprints.json")
        self.vae_fp = vae_fingerprint(profile, memo)
        self.text_fp = text_fingerprint(profile, memo)
        self.image_fp, self.processor_cfg = "", {}
        if self.needs_image:
            from pipeline.models.image_encoder import image_encoder_fingerprint, load_image_processor, processor_config

            self.image_fp = image_encoder_fingerprint(profile, memo)
            self.processor_cfg = processor_config(load_image_processor(profile))

    @property
    def vae_id(self) -> str:
        from pipeline.models.vae import vae_id

        return vae_id(self.profile, self.vae_fp)

    @property
    def text_id(self) -> str:
        from pipeline.models.text_encoder import text_encoder_id

        return text_encoder_id(self.profile, self.text_fp)

    @property
    def image_id(self) -> str:
        from pipeline.models.image_encoder import image_encoder_id

        return image_encoder_id(self.profile, self.image_fp) if self.needs_image else ""

    def assign_keys(self, samples: list[Sample]) -> None:
        assign_keys(
            samples, self.cfg, self.vae_fp, self.text_fp, self.max_len, self.device,
            cond=self.needs_cond, image_fp=self.image_fp, processor=self.processor_cfg,
        )

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

    def latent_batches(self, todo: list) -> list[list]:
        """Same-bucket batches of ``batch_size`` (samples or VAE jobs)."""
        by_bucket: dict[tuple, list] = defaultdict(list)
        for s in todo:
            by_bucket[s.bucket].append(s)
        bs = max(1, int(self.cfg.batch_size))
        return [group[i : i + bs] for b in sorted(by_bucket) for group in [by_bucket[b]] for i in range(0, len(group), bs)]

    def _frames(self, batch: list[VaeJob]) -> tuple[list[VaeJob], list, list[dict]]:
        """Decoded, resized frames of a batch: the whole window where the latents are wanted, else
        only its first frame (runs in the reader thread: no torch ops here, they would start a
        second OpenMP pool competing with the model's)."""
        ok, frames, bad = [], [], []
        for job in batch:
            s = job.sample
            idx = s.frame_indices if job.latent else s.frame_indices[:1]
            try:
                frames.append(load_frames(s.path, s.kind, idx, s.resize, s.size, self.cfg.interpolation))
                ok.append(job)
            except Exception as e:  # unreadable/truncated clip: reject this sample, go on
                bad.append({"sample_id": s.sample_id, "reason": f"{s.path}: {e}".splitlines()[0]})
        return ok, frames, bad

    def encode_vae(self, todo: list[VaeJob]) -> tuple[int, int, list[dict]]:
        """Encode and store the latents and/or I2V conditions of ``todo``.
        Returns (latents computed, conds computed, rejected)."""
        rejected: list[dict] = []
        n_lat = n_cond = 0
        batches = self.latent_batches(todo)
        vae = self.load_vae()
        try:
            reader = self._read_ahead(batches, threaded=self.device.type == "cuda")
            for ok, frames, bad in tqdm(reader, total=len(batches), desc="encode latents", unit="batch", disable=None):
                rejected += bad
                if not ok:
                    continue
                pixels = [to_pixels(f) for f in frames]
                lat_idx = [i for i, j in enumerate(ok) if j.latent]
                lat = dict(zip(lat_idx, _encode_stack(vae, [pixels[i] for i in lat_idx])))
                # a 1-frame bucket's condition is its own pixels: reuse the latents just computed
                cond = {i: lat[i] for i, j in enumerate(ok) if j.cond and i in lat and j.bucket[0] == 1}
                cond_idx = [i for i, j in enumerate(ok) if j.cond and i not in cond]
                cond_pixels = [first_frame_condition(pixels[i][:, :1], ok[i].bucket[0]) for i in cond_idx]
                cond.update(zip(cond_idx, _encode_stack(vae, cond_pixels)))
                for i, j in enumerate(ok):
                    s = j.sample
                    out = {}
                    if j.latent:
                        out["latents"] = lat[i].to(self.store_dtype).cpu()
                    if j.cond:
                        out["cond_latents"] = cond[i].to(self.store_dtype).cpu()
                    bad_names = [n for n, t in out.items() if not _finite(t)]
                    if bad_names:  # the sample is rejected; a sound entry beside the bad one is still kept
                        which = " and ".join("latent" if n == "latents" else "condition latent" for n in bad_names)
                        rejected.append({"sample_id": s.sample_id, "reason": f"{which} has NaN or Inf values"})
                    if "latents" in out and "latents" not in bad_names:
                        self.store.put(s.latent_key, {"latents": out["latents"]}, self._latent_meta(s, out["latents"]))
                        n_lat += 1
                    if "cond_latents" in out and "cond_latents" not in bad_names:
                        self.store.put(s.cond_key, {"cond_latents": out["cond_latents"]}, self._cond_meta(s, out["cond_latents"]))
                        n_cond += 1
        finally:
            del vae
            free_memory(self.device)
        return n_lat, n_cond, rejected

    def _read_ahead(self, batches: list[list[VaeJob]], threaded: bool):
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

    def _base_meta(self, kind: str, tensor: str, s: Sample, t: torch.Tensor, model: str, fingerprint: str) -> dict[str, str]:
        return {
            "kind": kind, "tensor": tensor, "shape": json.dumps(list(t.shape)), "dtype": dtype_name(t.dtype),
            "format": FORMAT_VERSION, "family": self.profile.family, "model": model, "fingerprint": fingerprint,
            "clip_id": s.clip_id, "sample_kind": s.kind, "created": _now(),
        }

    def _latent_meta(self, s: Sample, z: torch.Tensor) -> dict[str, str]:
        return {
            **self._base_meta("latent", "latents", s, z, self.vae_id, self.vae_fp), "vae": self.profile.vae,
            "frame_indices": json.dumps(s.frame_indices), "bucket": json.dumps(list(s.bucket)), "posterior": POSTERIOR,
            "normalization": "(mean - latents_mean) / latents_std",
        }

    def _cond_meta(self, s: Sample, z: torch.Tensor) -> dict[str, str]:
        return {
            **self._base_meta("cond", "cond_latents", s, z, self.vae_id, self.vae_fp), "vae": self.profile.vae,
            "condition": COND_I2V, "frame_index": str(s.frame_indices[0]), "bucket": json.dumps(list(s.bucket)),
            "posterior": POSTERIOR, "normalization": "(mean - latents_mean) / latents_std",
            "pixels": f"frame {s.frame_indices[0]} then {s.bucket[0] - 1} zero frames",
        }

    # -- image pass (Wan 2.1 I2V) -----------------------------------------------------------
    def encode_images(self, todo: list[Sample]) -> tuple[int, list[dict]]:
        """CLIP embeddings of the first frame of ``todo`` (one sample per missing key), stored as
        ``image_embeds`` [N, D]. Returns (computed, rejected)."""
        from pipeline.models.image_encoder import HIDDEN_STATE, encode_images, load_image_encoder

        rejected: list[dict] = []
        computed = 0
        bs = max(1, int(self.cfg.image_batch_size))
        processor, encoder = load_image_encoder(self.profile, self.compute_dtype, self.device)
        try:
            for i in tqdm(range(0, len(todo), bs), desc="encode first frames", unit="batch", disable=None):
                ok: list[Sample] = []
                images: list[np.ndarray] = []
                for s in todo[i : i + bs]:
                    try:
                        images.append(load_frames(s.path, s.kind, s.frame_indices[:1], s.resize, s.size, self.cfg.interpolation)[0])
                        ok.append(s)
                    except Exception as e:
                        rejected.append({"sample_id": s.sample_id, "reason": f"{s.path}: {e}".splitlines()[0]})
                if not ok:
                    continue
                for s, e in zip(ok, encode_images(processor, encoder, images)):
                    e = e.to(self.store_dtype).cpu()
                    if not _finite(e):
                        rejected.append({"sample_id": s.sample_id, "reason": "image embedding has NaN or Inf values"})
                        continue
                    self.store.put(s.image_key, {"image_embeds": e}, {
                        **self._base_meta("image", "image_embeds", s, e, self.image_id, self.image_fp),
                        "frame_index": str(s.frame_indices[0]), "size": json.dumps(list(s.bucket[1:])),
                        "hidden_state": str(HIDDEN_STATE), "processor": json.dumps(self.processor_cfg, default=str),
                    })
                    computed += 1
        finally:
            del processor, encoder
            free_memory(self.device)
        return computed, rejected

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
    def _reusable(self, key: str) -> bool:
        """Whether ``key``'s entry is stored and sound (``CacheStore.check_header``). A damaged entry
        is logged once, remembered in ``self.damaged`` and treated as missing (it is encoded again)."""
        if not self.store.has(key):
            return False
        problem = self.store.check_header(key)
        if problem is None:
            return True
        if problem != "missing" and key not in self.damaged:  # "missing": deleted since has()
            log.warning("%s: damaged cache entry (%s); encoding it again", self.store.path(key), problem)
            self.damaged.add(key)
        return False

    def _stored(self, key: str) -> bool:
        """Whether ``key``'s entry is in the store now; one found damaged counts only once rewritten."""
        if key in self.damaged:
            return self.store.check_header(key) is None
        return self.store.has(key)

    def _drop_missing(self, samples: list[Sample], attrs: tuple[str, ...], reasons: dict[str, str], rejected: list[dict]) -> list[Sample]:
        """Samples whose entries named by ``attrs`` are all in the store; the others are rejected with
        the reason their entry was not made."""
        alive = []
        for s in samples:
            gone = [getattr(s, a) for a in attrs if getattr(s, a) and not self._stored(getattr(s, a))]
            if gone:
                rejected.append({"sample_id": s.sample_id, "reason": next((reasons[k] for k in gone if k in reasons), "entry not stored")})
            else:
                alive.append(s)
        return alive

    def run(self, samples: list[Sample], skipped: list[dict] | None = None) -> EncodeResult:
        self.assign_keys(samples)
        self.damaged = set()
        rejected: list[dict] = []

        # VAE pass: latents (every family) and first-frame conditions (I2V)
        first_lat, first_cond = _first_by(samples, "latent_key"), _first_by(samples, "cond_key")
        lat_todo = {id(s) for k, s in first_lat.items() if not self._reusable(k)}
        cond_todo = {id(s) for k, s in first_cond.items() if not self._reusable(k)}
        jobs = [VaeJob(s, id(s) in lat_todo, id(s) in cond_todo) for s in samples if id(s) in lat_todo or id(s) in cond_todo]
        lat_computed = cond_computed = 0
        reasons: dict[str, str] = {}
        if jobs:
            what = f"{len(lat_todo)} latents" + (f" and {len(cond_todo)} first-frame conditions" if self.needs_cond else "")
            log.info("encoding %s (%d + %d already cached)", what, len(first_lat) - len(lat_todo), len(first_cond) - len(cond_todo))
            lat_computed, cond_computed, rej = self.encode_vae(jobs)
            by_id = {j.sample.sample_id: j.sample for j in jobs}
            for r in rej:
                s = by_id[r["sample_id"]]
                reasons[s.latent_key] = reasons[s.cond_key or s.latent_key] = r["reason"]
        alive = self._drop_missing(samples, ("latent_key", "cond_key"), reasons, rejected)

        # image pass: CLIP embeddings of the first frame (Wan 2.1 I2V)
        first_img = _first_by(alive, "image_key")
        missing_i = [s for k, s in first_img.items() if not self._reusable(k)]
        img_computed = 0
        if missing_i:
            log.info("embedding %d first frames (%d already cached)", len(missing_i), len(first_img) - len(missing_i))
            img_computed, rej = self.encode_images(missing_i)
            by_id = {s.sample_id: s for s in missing_i}
            reasons = {by_id[r["sample_id"]].image_key: r["reason"] for r in rej}
            alive = self._drop_missing(alive, ("image_key",), reasons, rejected)

        # text pass
        first_text = _first_by(alive, "text_key")
        missing_t = [s for k, s in first_text.items() if not self._reusable(k)]
        txt_computed = 0
        if missing_t:
            log.info("encoding %d captions (%d already cached)", len(missing_t), len(first_text) - len(missing_t))
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
        if self.damaged:  # only when some were found, so a clean run's metrics keep their keys
            metrics["damaged_recomputed"] = len(self.damaged)
        return EncodeResult(table, metrics, rejected, list(skipped or []))

    def table(self, samples: list[Sample]) -> pl.DataFrame:
        rows = []
        for s in samples:
            lm, tm = self.store.metadata(s.latent_key), self.store.metadata(s.text_key)
            rows.append({
                "sample_id": s.sample_id, "clip_id": s.clip_id, "kind": s.kind, "window": s.window,
                "frame_indices": s.frame_indices, "bucket_frames": s.bucket[0], "bucket_height": s.bucket[1],
                "bucket_width": s.bucket[2], "latent_key": s.latent_key, "text_key": s.text_key,
                "cond_key": s.cond_key, "image_key": s.image_key,
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
