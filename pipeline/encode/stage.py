"""The encode stage's runner: kept clips + captions into the cache store and ``encoded.parquet``."""

from __future__ import annotations

import logging

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.core.fs import write_json
from pipeline.core.layout import Layout
from pipeline.encode.config import EncodeConfig
from pipeline.encode.encode import encode_dataset
from pipeline.models.config import ModelConfig

log = logging.getLogger("encode")




def run(params: dict, layout: Layout) -> dict:
    cfg = EncodeConfig.from_params(params.get("encode"))
    profile = ModelConfig.from_params(params.get("model")).resolve()
    store = CacheStore(cfg.cache_dir or layout.cache)
    store.root.mkdir(parents=True, exist_ok=True)
    result = encode_dataset(schemas.read_table(layout.dataset, "dataset"), schemas.read_table(layout.captions, "captions"),
                            store, profile, cfg)
    schemas.write_table(result.table, layout.encoded, "encoded")
    write_json(layout.metrics("encode"), result.metrics)
    mt = result.metrics
    log.info("%s: %d samples -> %s; latents %d computed / %d reused, first-frame conditions %d / %d, "
             "image embeddings %d / %d, texts %d / %d, %d rejected, %d clips skipped, %d damaged entries recomputed",
             profile.family, mt["samples"], layout.encoded, mt["latents_computed"], mt["latents_reused"],
             mt["conds_computed"], mt["conds_reused"], mt["images_computed"], mt["images_reused"], mt["texts_computed"],
             mt["texts_reused"], mt["rejected"], mt["skipped"], mt.get("damaged_recomputed", 0))
    return mt
