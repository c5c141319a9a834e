"""DVC stage: encode kept clips + captions into the cache store and data/encoded.parquet."""

import logging
import sys

from pipeline import schemas
from pipeline.cache import CacheStore
from pipeline.encode import EncodeConfig, encode_dataset
from pipeline.fsutil import write_json
from pipeline.logs import setup_logging
from pipeline.params import load_params
from pipeline.profiles import get_profile

DATASET = "data/dataset.parquet"
CAPTIONS = "data/captions.parquet"
OUT = "data/encoded.parquet"
METRICS = "data/metrics/encode.json"


def main() -> int:
    setup_logging()
    m = load_params("model")
    p = load_params("encode")
    profile = get_profile(m["profile"], m.get("path"))
    store = CacheStore(p.get("cache_dir") or "data/cache")
    store.root.mkdir(parents=True, exist_ok=True)
    result = encode_dataset(
        schemas.read_table(DATASET, "dataset"), schemas.read_table(CAPTIONS, "captions"), store, profile,
        EncodeConfig.from_params(p),
    )
    schemas.write_table(result.table, OUT, "encoded")
    write_json(METRICS, result.metrics)
    mt = result.metrics
    logging.getLogger("encode").info(
        "%s: %d samples -> %s; latents %d computed / %d reused, first-frame conditions %d / %d, "
        "image embeddings %d / %d, texts %d / %d, %d rejected, %d clips skipped",
        profile.family, mt["samples"], OUT, mt["latents_computed"], mt["latents_reused"], mt["conds_computed"],
        mt["conds_reused"], mt["images_computed"], mt["images_reused"], mt["texts_computed"], mt["texts_reused"],
        mt["rejected"], mt["skipped"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
