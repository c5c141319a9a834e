"""Running the train stage from params: read the tables, train, write ``<lora_dir>/<run_name>/``."""

from __future__ import annotations

from pathlib import Path

from pipeline import schemas
from pipeline.cache import CacheStore
from pipeline.profiles import get_profile
from pipeline.train.config import TrainConfig
from pipeline.train.data import build_samples


def run_from_params(model: dict, train: dict, cache_dir: str | None = None, data_dir: str = "data",
                    lora_dir: str | None = None, on_step=None) -> dict:
    """``model`` / ``train``: the params groups. Reads ``data_dir``/encoded, captions and clips parquet
    files and the cache (``train.cache_dir``, else ``cache_dir``, else data/cache); writes
    ``lora_dir`` (default ``data_dir/lora``) / ``train.run_name``."""
    from pipeline.train.loop import train as train_loop  # torch + diffusers: imported when training

    train = dict(train)
    cache_dir = train.pop("cache_dir", None) or cache_dir or "data/cache"
    cfg = TrainConfig.from_params(train)
    profile = get_profile(model["profile"], model.get("path"))
    data = Path(data_dir)
    samples = build_samples(
        schemas.read_table(data / "encoded.parquet", "encoded"),
        schemas.read_table(data / "clips.parquet", "clips"),
        schemas.read_table(data / "captions.parquet", "captions"),
    )
    out = Path(lora_dir or data / "lora") / cfg.run_name
    return train_loop(cfg, profile, samples, CacheStore(cache_dir), out, on_step=on_step)
