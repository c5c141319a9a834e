"""Computing the missing cache entries: the VAE pass (latents, I2V conditions), the CLIP image pass
and the UMT5 text pass, one model loaded at a time, each entry stored as soon as its batch is done."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from pipeline.cache.store import CacheStore
from pipeline.core.devices import (
    compute_dtype,
    dtype_name,
    free_memory,
    parse_dtype,
    resolve_device,
)
from pipeline.core.errors import one_line
from pipeline.core.fingerprint import FileHashMemo
from pipeline.encode.config import EncodeConfig
from pipeline.encode.jobs import (
    VaeJob,
    _encode_stack,
    all_finite,
    first_frame_condition,
    now_iso,
)
from pipeline.encode.keys import (
    COND_I2V,
    FORMAT_VERSION,
    POSTERIOR,
)
from pipeline.encode.pixels import load_frames, to_pixels
from pipeline.encode.plan import Sample, assign_keys
from pipeline.models.profiles import Profile

if TYPE_CHECKING:
    from pipeline.core.ray_engine import RayEngine

log = logging.getLogger("encode")

# the model passes: name -> (progress bar, Ray Data operator)
PASSES = {"vae": ("encode latents", "encode_latents"), "image": ("encode first frames", "encode_first_frames"),
          "text": ("encode captions", "encode_captions")}


class TextJob(Protocol):
    """What the text pass reads of a job: a clip's sample, or a prompt (``pipeline.encode.prompts``)."""

    @property
    def clip_id(self) -> str: ...

    @property
    def caption(self) -> str: ...

    @property
    def text_key(self) -> str: ...


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
        self.ray: RayEngine | None = None  # set by use_ray: the passes run on a Ray actor pool
        if self.needs_image:
            from pipeline.models.image_encoder import (
                image_encoder_fingerprint,
                load_image_processor,
                processor_config,
            )

            self.image_fp = image_encoder_fingerprint(profile, memo)
            self.processor_cfg = processor_config(load_image_processor(profile))

    def use_ray(self, ray: RayEngine) -> None:
        """Run the model passes on ``ray``'s actor pools: one actor per GPU when ``encode.device`` is a GPU, or
        is ``auto`` and the cluster has GPUs (the keys then name the GPU's compute dtypes, as on a local GPU)."""
        self.ray = ray
        self.set_device(torch.device("cuda" if ray.wants_gpu(self.cfg.device) else "cpu"))

    def set_device(self, device: torch.device) -> None:
        self.device = device
        self.compute_dtype = compute_dtype(self.store_dtype, device)
        self.vae_compute_dtype = compute_dtype(parse_dtype(self.cfg.vae_dtype), device)

    def __getstate__(self) -> dict:  # what a Ray actor gets: never the engine
        return {**self.__dict__, "ray": None}

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
                frames.append(load_frames(s.path, s.kind, s.source_indices(idx), s.resize, s.size, self.cfg.interpolation))
                ok.append(job)
            except Exception as e:  # unreadable/truncated clip: reject this sample, go on
                bad.append({"sample_id": s.sample_id, "reason": f"{s.path}: {one_line(e, with_type=False)}"})
        return ok, frames, bad

    # -- running a pass: here (one model) or on Ray (one model per actor) --------------------
    def load_pass(self, name: str) -> tuple:
        """The models of pass ``name``."""
        if name == "vae":
            return (self.load_vae(),)
        if name == "image":
            from pipeline.models.image_encoder import load_image_encoder

            return tuple(load_image_encoder(self.profile, self.compute_dtype, self.device))
        from pipeline.models.text_encoder import load_text_encoder

        return tuple(load_text_encoder(self.profile, self.compute_dtype, self.device))

    def run_batch(self, name: str, models: tuple, batch: list) -> tuple:
        """One batch of pass ``name``; its entries are stored, and the counts come back."""
        if name == "vae":
            return self._vae_batch(models[0], *self._frames(batch))
        if name == "image":
            return self._image_batch(models[0], models[1], batch)
        return self._text_batch(models[0], models[1], batch)

    def _run_pass(self, name: str, batches: list[list]) -> Iterator[Any]:
        """The result of each batch of pass ``name`` (any order on Ray)."""
        desc, op = PASSES[name]
        if self.ray is not None:
            results = self.ray.map_actors(PassWorker, (self, name), batches, name=op, gpu=self.device.type == "cuda")
            yield from tqdm(results, total=len(batches), desc=desc, unit="batch")
            return
        models = self.load_pass(name)
        try:
            if name == "vae":
                reader = self._read_ahead(batches, threaded=self.device.type == "cuda")
                for ok, frames, bad in tqdm(reader, total=len(batches), desc=desc, unit="batch"):
                    yield self._vae_batch(models[0], ok, frames, bad)
            else:
                for batch in tqdm(batches, desc=desc, unit="batch"):
                    yield self.run_batch(name, models, batch)
        finally:
            del models
            free_memory(self.device)

    def encode_vae(self, todo: list[VaeJob]) -> tuple[int, int, list[dict]]:
        """Encode and store the latents and/or I2V conditions of ``todo``.
        Returns (latents computed, conds computed, rejected)."""
        rejected: list[dict] = []
        n_lat = n_cond = 0
        for a, b, rej in self._run_pass("vae", self.latent_batches(todo)):
            n_lat, n_cond = n_lat + a, n_cond + b
            rejected += rej
        return n_lat, n_cond, rejected

    def _vae_batch(self, vae, ok: list[VaeJob], frames: list, bad: list[dict]) -> tuple[int, int, list[dict]]:
        """Encode and store one batch's latents and/or conditions (``frames``: of the jobs ``ok``; ``bad``: the
        jobs whose clip could not be read). Returns (latents computed, conds computed, rejected)."""
        rejected = list(bad)
        n_lat = n_cond = 0
        if not ok:
            return 0, 0, rejected
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
            bad_names = [n for n, t in out.items() if not all_finite(t)]
            if bad_names:  # the sample is rejected; a sound entry beside the bad one is still kept
                which = " and ".join("latent" if n == "latents" else "condition latent" for n in bad_names)
                rejected.append({"sample_id": s.sample_id, "reason": f"{which} has NaN or Inf values"})
            if "latents" in out and "latents" not in bad_names:
                self.store.put(s.latent_key, {"latents": out["latents"]}, self._latent_meta(s, out["latents"]))
                n_lat += 1
            if "cond_latents" in out and "cond_latents" not in bad_names:
                self.store.put(s.cond_key, {"cond_latents": out["cond_latents"]}, self._cond_meta(s, out["cond_latents"]))
                n_cond += 1
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
            "clip_id": s.clip_id, "sample_kind": s.kind, "created": now_iso(),
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
        bs = max(1, int(self.cfg.image_batch_size))
        rejected: list[dict] = []
        computed = 0
        for n, rej in self._run_pass("image", [todo[i : i + bs] for i in range(0, len(todo), bs)]):
            computed += n
            rejected += rej
        return computed, rejected

    def _image_batch(self, processor, encoder, batch: list[Sample]) -> tuple[int, list[dict]]:
        from pipeline.models.image_encoder import HIDDEN_STATE, encode_images

        rejected: list[dict] = []
        computed = 0
        ok: list[Sample] = []
        images: list[np.ndarray] = []
        for s in batch:
            try:
                first = s.source_indices(s.frame_indices[:1])
                images.append(load_frames(s.path, s.kind, first, s.resize, s.size, self.cfg.interpolation)[0])
                ok.append(s)
            except Exception as e:
                rejected.append({"sample_id": s.sample_id, "reason": f"{s.path}: {one_line(e, with_type=False)}"})
        if not ok:
            return 0, rejected
        for s, emb in zip(ok, encode_images(processor, encoder, images)):
            emb = emb.to(self.store_dtype).cpu()
            if not all_finite(emb):
                rejected.append({"sample_id": s.sample_id, "reason": "image embedding has NaN or Inf values"})
                continue
            self.store.put(s.image_key, {"image_embeds": emb}, {
                **self._base_meta("image", "image_embeds", s, emb, self.image_id, self.image_fp),
                "frame_index": str(s.frame_indices[0]), "size": json.dumps(list(s.bucket[1:])),
                "hidden_state": str(HIDDEN_STATE), "processor": json.dumps(self.processor_cfg, default=str),
            })
            computed += 1
        return computed, rejected

    # -- text pass ------------------------------------------------------------------------
    def encode_texts(self, todo: Sequence[TextJob]) -> tuple[int, list[str]]:
        """Encode and store the prompt embeddings of ``todo`` (one sample per missing key).
        Returns (computed, text keys rejected for NaN/Inf)."""
        bs = max(1, int(self.cfg.text_batch_size))
        bad_keys: list[str] = []
        computed = 0
        for n, bad in self._run_pass("text", [list(todo[i : i + bs]) for i in range(0, len(todo), bs)]):
            computed += n
            bad_keys += bad
        return computed, bad_keys

    def _text_batch(self, tokenizer, encoder, batch: Sequence[TextJob]) -> tuple[int, list[str]]:
        from pipeline.models.text_encoder import encode_prompts

        bad_keys: list[str] = []
        computed = 0
        embeds, truncated = encode_prompts(tokenizer, encoder, [s.caption for s in batch], self.max_len)
        for s, e, cut in zip(batch, embeds, truncated):
            if cut:
                log.warning("caption of %s is longer than %d tokens; truncated", s.clip_id, self.max_len)
            e = e.to(self.store_dtype)
            if not all_finite(e):
                bad_keys.append(s.text_key)
                continue
            self.store.put(s.text_key, {"prompt_embeds": e}, {
                "kind": "text", "tensor": "prompt_embeds", "shape": json.dumps(list(e.shape)),
                "dtype": dtype_name(e.dtype), "format": FORMAT_VERSION, "family": self.profile.family,
                "model": self.text_id, "fingerprint": self.text_fp, "clip_id": s.clip_id,
                "caption": s.caption, "max_length": str(self.max_len), "created": now_iso(),
            })
            computed += 1
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


class PassWorker:
    """A Ray actor of one encode pass: the pass's models loaded once (``Encoder.load_pass``), then
    batch after batch (``Encoder.run_batch``); entries go to the store from here, counts go back."""

    def __init__(self, enc: Encoder, name: str):
        self.enc, self.name = enc, name
        self.models = enc.load_pass(name)

    def __call__(self, batch: list) -> tuple:
        return self.enc.run_batch(self.name, self.models, batch)
