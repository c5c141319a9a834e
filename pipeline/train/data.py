"""Training samples from the encode stage's table, the held-out split, bucket batches and collation.

A batch holds samples of one kind (video or image) and one bucket shape only, so latents stack
without padding or cropping. The order of batches is a pure function of the seed and the batch
index: each kind has an endless stream of epochs (samples repeated per kind and per dataset,
shuffled within each bucket, cut into batches, batches shuffled), and each draw picks the kind
with a seeded coin. Resuming at batch ``n`` therefore needs only ``n``.

Wrong data is never trained on: before training, samples whose cache entries are missing or
damaged (``CachedBatches.missing`` / ``CachedBatches.damaged``: the stored sha256 is checked with
``train.verify_cache``) are dropped with a reason; a loaded batch whose tensors are not finite or
absurdly large (``batch_problem``) is skipped by the training loop.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl
import torch

from pipeline.cache.store import CacheStore
from pipeline.core.consent import UNKNOWN
from pipeline.models.compat import check_encoded_for_profile
from pipeline.models.profiles import Profile
from pipeline.train.conditioning import TrainInputs

log = logging.getLogger("train")

KINDS = ("video", "image")
BUCKET_COLUMNS = ("kind", "bucket_frames", "bucket_height", "bucket_width")
# Largest |value| a batch may hold. Normalised Wan latents (and I2V condition latents) are O(1),
# a few units at most; 1e3 leaves wide room and still stops what a bad encoder or a flipped
# exponent bit gives (1e26 and more) before it reaches the optimizer.
MAX_ABS_LATENT = 1e3
# Text (UMT5) and image (CLIP penultimate layer) embeddings are not normalised and carry outlier
# channels of some hundreds; the bound is looser but still far below a damaged value.
MAX_ABS_EMBEDDING = 1e5


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) from ``text`` (the same on every machine and run)."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def check_profile(encoded: pl.DataFrame, profile: Profile, where: str = "encoded.parquet") -> None:
    """Refuse samples the profile's transformer cannot train on: latents of another VAE, other
    latent channels or text width, missing I2V conditioning (``compat.check_encoded_for_profile``;
    latents of another family with the same VAE, e.g. Wan 2.1 T2V for Wan 2.2 T2V-A14B, are fine)."""
    try:
        check_encoded_for_profile(encoded, profile)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def build_samples(encoded: pl.DataFrame, clips: pl.DataFrame, captions: pl.DataFrame,
                  dataset: pl.DataFrame | None = None) -> pl.DataFrame:
    """The encoded rows with their provenance: source, span (from clips), caption source (from captions)
    and the clip's licence, consent and faces (from the kept clips, ``dataset``; without it: no licence,
    consent ``unknown``, faces not measured)."""
    prov = clips.select("clip_id", "source_id", "source_path", "start_frame", "end_frame", "start_s", "end_s").unique("clip_id")
    cap = captions.select("clip_id", pl.col("source").alias("caption_source")).unique("clip_id")
    if dataset is None:
        dataset = pl.DataFrame(schema={"clip_id": pl.String, "licence": pl.String, "consent": pl.String,
                                       "face_share": pl.Float64, "face": pl.Boolean})
    likeness = dataset.select("clip_id", "licence", "consent", "face_share", "face").unique("clip_id")
    out = (encoded.join(prov, on="clip_id", how="left").join(cap, on="clip_id", how="left")
           .join(likeness, on="clip_id", how="left"))
    missing = out.filter(pl.col("source_id").is_null())["clip_id"].unique().to_list()
    if missing:
        log.warning("%d clip(s) of encoded.parquet are not in clips.parquet; their provenance is empty: %s",
                    len(missing), ", ".join(missing[:5]))
    return out.with_columns(
        pl.col("source_id").fill_null(""), pl.col("source_path").fill_null(""),
        pl.col("start_frame").fill_null(-1), pl.col("end_frame").fill_null(-1),
        pl.col("start_s").fill_null(float("nan")), pl.col("end_s").fill_null(float("nan")),
        pl.col("caption_source").fill_null(""),
        pl.col("licence").fill_null(""), pl.col("consent").fill_null(UNKNOWN),
    ).sort("sample_id")


def held_out_flags(samples: pl.DataFrame, fraction: float, clip_ids: list[str] | None = None, by: str = "clip") -> list[bool]:
    """Which samples are held out: every sample of a listed clip, plus a deterministic ``fraction``
    of clips (``by: clip``) or of sources (``by: source``, so no held-out clip shares a source with
    a training clip), chosen by a hash of the id. All samples of a clip fall on the same side. When
    the fraction would hold out everything, nothing is held out by fraction (a warning says so)."""
    if by not in ("clip", "source"):
        raise ValueError(f"held_out_by must be 'clip' or 'source', got '{by}'")
    listed = set(clip_ids or [])
    keys = samples["clip_id" if by == "clip" else "source_id"].to_list()
    by_hash = [_unit_hash(f"vlp-holdout:{k}") < fraction for k in keys]
    flags = [c in listed or h for c, h in zip(samples["clip_id"].to_list(), by_hash)]
    if flags and all(flags) and not all(c in listed for c in samples["clip_id"].to_list()):
        log.warning("held-out fraction %.3g would hold out every sample; training on all, no eval loss", fraction)
        flags = [c in listed for c in samples["clip_id"].to_list()]
    return flags


def sample_repeats(samples: pl.DataFrame, kind_repeats: dict[str, int], dataset_repeats: dict[str, int]) -> list[int]:
    """How often each sample appears in one epoch: its kind's repeats times the repeats of the first
    ``dataset_repeats`` glob its source path matches (1 when none)."""
    out = []
    for kind, path in zip(samples["kind"].to_list(), samples["source_path"].to_list()):
        r = int(kind_repeats.get(kind, 1))
        for pattern, n in dataset_repeats.items():
            if fnmatch.fnmatch(path, pattern):
                r *= int(n)
                break
        out.append(r)
    return out


@dataclass(frozen=True)
class Batch:
    index: int  # position in the plan (0, 1, 2, ...)
    kind: str
    bucket: tuple[str, int, int, int]  # (kind, frames, height, width)
    rows: tuple[int, ...]  # row indices into the samples frame


class BatchPlan:
    """The seeded, endless sequence of batches for a set of training samples."""

    def __init__(self, samples: pl.DataFrame, repeats: list[int], batch_size: int, seed: int,
                 image_fraction: float | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        buckets = list(zip(*(samples[c].to_list() for c in BUCKET_COLUMNS)))
        self.buckets = buckets
        # per kind: bucket -> row indices (each repeated)
        self.pools: dict[str, dict[tuple, list[int]]] = {}
        for i, (bucket, r) in enumerate(zip(buckets, repeats)):
            if r > 0:
                self.pools.setdefault(bucket[0], {}).setdefault(bucket, []).extend([i] * r)
        self.kinds = [k for k in KINDS if k in self.pools] + sorted(k for k in self.pools if k not in KINDS)
        if not self.kinds:
            raise ValueError("no training samples (every sample is held out or has 0 repeats)")
        per_epoch = {k: sum(-(-len(rows) // batch_size) for rows in self.pools[k].values()) for k in self.kinds}
        self.batches_per_epoch = per_epoch
        if image_fraction is None or len(self.kinds) == 1:
            total = sum(per_epoch.values())
            self.weights = {k: per_epoch[k] / total for k in self.kinds}
        else:
            if not 0.0 <= image_fraction <= 1.0:
                raise ValueError(f"image_batch_fraction must be in [0, 1], got {image_fraction}")
            self.weights = {k: (image_fraction if k == "image" else 1.0 - image_fraction) for k in self.kinds}

    def _epoch(self, kind: str, epoch: int) -> list[tuple[tuple, list[int]]]:
        rng = random.Random(f"vlp-batches:{self.seed}:{kind}:{epoch}")
        batches = []
        for bucket in sorted(self.pools[kind]):
            rows = list(self.pools[kind][bucket])
            rng.shuffle(rows)
            batches += [(bucket, rows[i:i + self.batch_size]) for i in range(0, len(rows), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def _pick_kind(self, index: int) -> str:
        if len(self.kinds) == 1:
            return self.kinds[0]
        u = random.Random(f"vlp-kind:{self.seed}:{index}").random()
        acc = 0.0
        for k in self.kinds:
            acc += self.weights[k]
            if u < acc:
                return k
        return self.kinds[-1]

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        """Batches ``start``, ``start + 1``, ... (skipping to ``start`` costs no data loading)."""
        # epoch, position, batches
        state: dict[str, tuple[int, int, list[tuple[tuple, list[int]]]]] = {k: (0, 0, self._epoch(k, 0)) for k in self.kinds}
        index = 0
        while True:
            kind = self._pick_kind(index)
            epoch, pos, batches = state[kind]
            if pos >= len(batches):
                epoch, pos = epoch + 1, 0
                batches = self._epoch(kind, epoch)
            state[kind] = (epoch, pos + 1, batches)
            bucket, rows = batches[pos]
            if index >= start:
                yield Batch(index, kind, bucket, tuple(rows))
            index += 1

    def take(self, n: int, start: int = 0) -> list[Batch]:
        out: list[Batch] = []
        for b in self.iterate(start):
            if len(out) >= n:
                break
            out.append(b)
        return out


def _unit(seed: int, batch_index: int, position: int) -> float:
    """A number in [0, 1) fixed by (seed, batch index, position in the batch)."""
    digest = hashlib.sha256(f"caption_dropout:{seed}:{batch_index}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pad_text(embeds: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """[L, D] -> [max_tokens, D], zeros after the real tokens (as ``WanPipeline`` pads); longer is cut."""
    out = embeds.new_zeros(max_tokens, embeds.shape[1])
    n = min(max_tokens, embeds.shape[0])
    out[:n] = embeds[:n]
    return out


class CachedBatches:
    """Loads a batch from the cache and stacks it (float32): latents, prompt embeddings, and the
    family's conditioning (``cond``: the ``cond_latents`` entry of I2V families; ``image``: the
    ``image_embeds`` entry of Wan 2.1 I2V)."""

    def __init__(self, store: CacheStore, samples: pl.DataFrame, max_text_tokens: int, cond: bool = False,
                 image: bool = False, empty_text_key: str = "", caption_dropout: float = 0.0, seed: int = 0):
        self.store = store
        self.max_text_tokens = max_text_tokens
        # caption dropout: a training batch's sample trains on the empty prompt with this probability,
        # decided by (seed, batch index, position): the same on a resumed run
        self.empty_text_key, self.caption_dropout, self.seed = empty_text_key, caption_dropout, seed
        if caption_dropout > 0 and not empty_text_key:
            raise ValueError("train.caption_dropout needs the empty prompt's embedding (data/prompts.parquet): "
                             "re-run the encode stage")
        self.latent_keys = samples["latent_key"].to_list()
        self.text_keys = samples["text_key"].to_list()
        self.cond_keys = samples["cond_key"].to_list() if cond else None
        self.image_keys = samples["image_key"].to_list() if image else None
        self.latent_shapes = [tuple(s) for s in samples["latent_shape"].to_list()]
        self.sample_ids = samples["sample_id"].to_list()

    def keys(self, row: int) -> list[str]:
        """The cache keys a row needs."""
        out = [self.latent_keys[row], self.text_keys[row]]
        out += [self.cond_keys[row]] if self.cond_keys is not None else []
        out += [self.image_keys[row]] if self.image_keys is not None else []
        return out

    def missing(self) -> dict[int, str]:
        """Rows with a needed cache entry missing -> why (the entry's path, or an empty key)."""
        out = {}
        for i in range(len(self.latent_keys)):
            for key in self.keys(i):
                if not key:
                    out[i] = "no conditioning entry in encoded.parquet (encoded for another model family?)"
                    break
                if not self.store.has(key):
                    out[i] = f"{self.store.path(key)}: cache entry missing"
                    break
        return out

    def damaged(self, verify: bool = True) -> dict[int, str]:
        """Rows with a needed cache entry that is damaged -> why (the entry's path and the reason).
        ``verify``: read every entry and check its stored sha256, shape and values
        (``CacheStore.verify_entry``); else only the cheap header check (``CacheStore.check_header``).
        Each entry is checked once however many rows share it; rows from :meth:`missing` are skipped."""
        check = self.store.verify_entry if verify else self.store.check_header
        problems: dict[str, str | None] = {}
        out = {}
        for i in range(len(self.latent_keys)):
            for key in self.keys(i):
                if not key or not self.store.has(key):
                    break
                if key not in problems:
                    problems[key] = check(key)
                if problems[key]:
                    out[i] = f"{self.store.path(key)}: damaged cache entry ({problems[key]})"
                    break
        return out

    def describe(self, rows: tuple[int, ...] | list[int]) -> str:
        """The sample ids of ``rows``, for messages."""
        return ", ".join(self.sample_ids[r] for r in rows)

    def latents(self, row: int) -> torch.Tensor:
        lat = self.store.get(self.latent_keys[row])["latents"]
        if tuple(lat.shape) != self.latent_shapes[row]:
            raise ValueError(f"{self.store.path(self.latent_keys[row])}: latents are {list(lat.shape)}, "
                             f"encoded.parquet says {list(self.latent_shapes[row])} (sample {self.sample_ids[row]})")
        return lat.float()

    def text(self, row: int) -> torch.Tensor:
        return pad_text(self.store.get(self.text_keys[row])["prompt_embeds"].float(), self.max_text_tokens)

    def empty_text(self) -> torch.Tensor:
        return pad_text(self.store.get(self.empty_text_key)["prompt_embeds"].float(), self.max_text_tokens)

    def dropped(self, batch_index: int | None, n: int) -> list[bool]:
        """Which of a batch's ``n`` samples train on the empty prompt (none outside training: ``batch_index`` None)."""
        if batch_index is None or self.caption_dropout <= 0:
            return [False] * n
        return [_unit(self.seed, batch_index, j) < self.caption_dropout for j in range(n)]

    def cond(self, row: int) -> torch.Tensor:
        assert self.cond_keys is not None  # called only for a family with conditioning latents (load)
        c = self.store.get(self.cond_keys[row])["cond_latents"]
        if tuple(c.shape) != self.latent_shapes[row]:
            raise ValueError(f"{self.store.path(self.cond_keys[row])}: conditioning latents are {list(c.shape)}, "
                             f"the sample's latents {list(self.latent_shapes[row])} (sample {self.sample_ids[row]})")
        return c.float()

    def image(self, row: int) -> torch.Tensor:
        assert self.image_keys is not None  # called only for a family with image embeddings (load)
        return self.store.get(self.image_keys[row])["image_embeds"].float()

    def load(self, rows: tuple[int, ...] | list[int], batch_index: int | None = None) -> TrainInputs:
        """Stacked tensors of ``rows``: latents [B, C, F, H, W], prompt embeddings [B, max_text_tokens, D],
        conditioning latents [B, C, F, H, W] and image embeddings [B, N, D] when the family uses them.
        ``batch_index``: the training batch (caption dropout applies); None for evaluation."""
        drop = self.dropped(batch_index, len(rows))
        return TrainInputs(
            torch.stack([self.latents(r) for r in rows]),
            torch.stack([self.empty_text() if d else self.text(r) for r, d in zip(rows, drop)]),
            torch.stack([self.cond(r) for r in rows]) if self.cond_keys is not None else None,
            torch.stack([self.image(r) for r in rows]) if self.image_keys is not None else None,
        )


def tensor_problem(name: str, t: torch.Tensor | None, max_abs: float) -> str | None:
    """Why ``t`` must not be trained on (NaN/Inf, or a value beyond ``max_abs``), else None."""
    if t is None or not t.is_floating_point() or t.numel() == 0:
        return None
    if not bool(torch.isfinite(t).all()):
        return f"{name} have NaN or Inf values"
    peak = float(t.abs().max())
    if peak > max_abs:
        return f"{name} reach |x| = {peak:.3g} (more than {max_abs:g})"
    return None


def batch_problem(inputs: TrainInputs) -> str | None:
    """Why a loaded batch must not reach the optimizer, else None: every tensor finite, latents and
    condition latents within ``MAX_ABS_LATENT``, embeddings within ``MAX_ABS_EMBEDDING``."""
    checks = (("latents", inputs.latents, MAX_ABS_LATENT), ("condition latents", inputs.cond, MAX_ABS_LATENT),
              ("prompt embeddings", inputs.text, MAX_ABS_EMBEDDING), ("image embeddings", inputs.image, MAX_ABS_EMBEDDING))
    for name, t, bound in checks:
        problem = tensor_problem(name, t, bound)
        if problem:
            return problem
    return None
