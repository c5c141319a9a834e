"""What a run trains on, prepared once for every expert: the samples whose cache entries are all there
and sound (the others dropped with a logged reason), the held-out split, the batch plan, the
loader (with caption dropout), and the prefetching of the next batch while one trains."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from pipeline.cache.store import CacheStore
from pipeline.models.profiles import Profile
from pipeline.train.conditioning import Conditioning, TrainInputs
from pipeline.train.config import TrainConfig
from pipeline.train.data import (
    Batch,
    BatchPlan,
    CachedBatches,
    batch_problem,
    held_out_flags,
    sample_repeats,
)

log = logging.getLogger("train")


def load_checked(loader: CachedBatches, batch: Batch) -> tuple[TrainInputs, str | None]:
    """A batch from the cache and why it must not be trained on (None when it may)."""
    inputs = loader.load(batch.rows, batch.index)
    return inputs, batch_problem(inputs)


def prefetch(batches: Iterator[Batch], loader: CachedBatches) -> Iterator[tuple[Batch, TrainInputs, str | None]]:
    """Load (and check) the next batch from the cache in a thread while the current one trains."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        batch = next(batches)
        future = pool.submit(load_checked, loader, batch)
        while True:
            nxt = next(batches)
            nxt_future = pool.submit(load_checked, loader, nxt)
            yield batch, *future.result()
            batch, future = nxt, nxt_future


@dataclass
class RunData:
    """What every expert of a run trains and evaluates on."""

    samples: pl.DataFrame
    loader: CachedBatches
    held: list[bool]
    train_rows: list[int]
    eval_rows: list[int]
    plan: BatchPlan
    sample_ids: list[str]
    store: CacheStore | None = None
    prompts: pl.DataFrame | None = None  # prompts.parquet: the empty prompt, train.samples' prompts
    sample_images: pl.DataFrame | None = None  # sample_images.parquet: train.samples' images' conditioning

    @property
    def train_samples(self) -> pl.DataFrame:
        return self.samples[self.train_rows]


def empty_prompt_key(prompts: pl.DataFrame | None, store: CacheStore, caption_dropout: float) -> str:
    """The cache key of the empty prompt's embedding (from ``prompts.parquet``) when caption dropout is
    on, else ""; a one-line error when the encode stage has not cached it."""
    if caption_dropout <= 0:
        return ""
    rows = prompts.filter(pl.col("role") == "empty") if prompts is not None else None
    if rows is None or rows.height == 0:
        raise ValueError("train.caption_dropout needs the empty prompt's embedding: no data/prompts.parquet "
                         "(or no empty prompt in it); re-run the encode stage")
    key = rows["text_key"][0]
    if not store.has(key):
        raise ValueError(f"{store.path(key)}: the empty prompt's embedding is not in the cache; re-run the encode stage")
    return key


def prepare_data(cfg: TrainConfig, profile: Profile, samples: pl.DataFrame, store: CacheStore,
                 conditioning: Conditioning, prompts: pl.DataFrame | None = None,
                 sample_images: pl.DataFrame | None = None) -> RunData:
    """Drop what cannot be trained (with a logged reason), split off the held-out samples, plan the batches."""
    if not conditioning.trains_images:
        n_images = int((samples["kind"] == "image").sum())
        if n_images:
            log.warning("%d image sample(s) skipped: the %s family is conditioned on the first frame, so a one-frame "
                        "sample would be its own condition", n_images, profile.family)
            samples = samples.filter(pl.col("kind") != "image")
    empty_key = empty_prompt_key(prompts, store, cfg.caption_dropout)

    def loader_of(rows: pl.DataFrame) -> CachedBatches:
        return CachedBatches(store, rows, profile.max_text_tokens, cond=conditioning.needs_cond,
                             image=conditioning.image_embeds, empty_text_key=empty_key,
                             caption_dropout=cfg.caption_dropout, seed=cfg.seed)

    loader = loader_of(samples)
    missing = loader.missing()
    for r, why in sorted(missing.items()):
        log.warning("%s: sample %s skipped (re-run the encode stage)", why, samples["sample_id"][r])
    if cfg.verify_cache:
        log.info("verifying the cache entries of %d samples (sha256; train.verify_cache)", samples.height - len(missing))
    damaged = {r: why for r, why in loader.damaged(cfg.verify_cache).items() if r not in missing}
    for r, why in sorted(damaged.items()):
        log.warning("%s: sample %s skipped (`vlp cache verify --delete-bad`, then the encode stage, rewrites it)",
                    why, samples["sample_id"][r])
    dropped = set(missing) | set(damaged)
    if dropped:
        samples = samples[[i for i in range(samples.height) if i not in dropped]]
        loader = loader_of(samples)
    if samples.height == 0:
        raise ValueError("no samples to train on (encoded.parquet is empty or every cache entry is missing or damaged)")

    held = held_out_flags(samples, cfg.held_out_fraction, cfg.held_out_clips, cfg.held_out_by)
    train_rows = [i for i, h in enumerate(held) if not h]
    eval_rows = [i for i, h in enumerate(held) if h][: cfg.eval_max_samples]
    train_samples = samples[train_rows]
    plan = BatchPlan(train_samples, sample_repeats(train_samples, cfg.repeats, cfg.dataset_repeats),
                     cfg.batch_size, cfg.seed, cfg.image_batch_fraction)
    log.info("%d training samples (%s), %d held out; buckets: %s", len(train_rows),
             ", ".join(f"{k}: {plan.batches_per_epoch[k]} batches/epoch" for k in plan.kinds), len(held) - len(train_rows),
             ", ".join(f"{b[0]} {b[1]}x{b[2]}x{b[3]}" for b in sorted(set(plan.buckets))))
    return RunData(samples, loader, held, train_rows, eval_rows, plan, samples["sample_id"].to_list(), store, prompts,
                   sample_images)
