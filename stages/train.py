"""DVC stage: train a Wan LoRA from the cache alone -> data/lora/<train.run_name>/."""

import logging
import sys

from pipeline.logs import setup_logging
from pipeline.params import load_params
from pipeline.train.run import run_from_params


def main() -> int:
    setup_logging()
    model = load_params("model")
    train = load_params("train")
    cache_dir = train.get("cache_dir") or load_params("encode").get("cache_dir") or "data/cache"
    metrics = run_from_params(model, train, cache_dir=cache_dir, data_dir="data")
    logging.getLogger("train").info("done: %s", metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
