"""The encode stage's runner: kept clips + captions into the cache store and ``encoded.parquet``;
the empty prompt and ``train.samples``' prompts into the store and ``prompts.parquet``."""

from __future__ import annotations

import logging

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.core.fs import write_json
from pipeline.core.layout import Layout
from pipeline.encode.config import EncodeConfig
from pipeline.encode.encode import encode_samples
from pipeline.encode.encoder import Encoder
from pipeline.encode.plan import plan_samples
from pipeline.encode.prompts import encode_prompts_table
from pipeline.models.config import ModelConfig

log = logging.getLogger("encode")


def sample_prompts(train: dict | None) -> list[str]:
    """The prompts of ``train.samples`` (strings, or mappings with a ``prompt``): their embeddings
    are cached here so the train stage can make sample videos without the text encoder."""
    out = []
    for i, item in enumerate((train or {}).get("samples") or []):
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str):
            raise ValueError(f"train.samples[{i}]: a prompt (text), or a mapping with 'prompt', not {item!r}")
        out.append(prompt)
    return out


def run(params: dict, layout: Layout) -> dict:
    cfg = EncodeConfig.from_params(params.get("encode"))
    profile = ModelConfig.from_params(params.get("model")).resolve()
    store = CacheStore(cfg.cache_dir or layout.cache)
    store.root.mkdir(parents=True, exist_ok=True)
    extra = sample_prompts(params.get("train"))  # before any work: a bad train.samples fails at once
    enc = Encoder(store, profile, cfg)
    samples, skipped = plan_samples(schemas.read_table(layout.dataset, "dataset"), schemas.read_table(layout.captions, "captions"),
                                    cfg, profile, ".")
    result = encode_samples(enc, samples, skipped)
    schemas.write_table(result.table, layout.encoded, "encoded")
    prompts, computed = encode_prompts_table(enc, extra)
    schemas.write_table(prompts, layout.prompts, "prompts")
    result.metrics["prompts_computed"] = computed
    write_json(layout.metrics("encode"), result.metrics)
    mt = result.metrics
    log.info("%s: %d samples -> %s; latents %d computed / %d reused, first-frame conditions %d / %d, "
             "image embeddings %d / %d, texts %d / %d, %d rejected, %d clips skipped, %d damaged entries recomputed",
             profile.family, mt["samples"], layout.encoded, mt["latents_computed"], mt["latents_reused"],
             mt["conds_computed"], mt["conds_reused"], mt["images_computed"], mt["images_reused"], mt["texts_computed"],
             mt["texts_reused"], mt["rejected"], mt["skipped"], mt.get("damaged_recomputed", 0))
    return mt
