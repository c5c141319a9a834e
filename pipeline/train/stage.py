"""The train stage's runner: read the tables, train from the cache alone, write ``<lora_dir>/<run_name>/``."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.core.fs import write_json
from pipeline.core.layout import Layout
from pipeline.core.timings import split_timings
from pipeline.models.config import ModelConfig
from pipeline.train.config import TrainConfig
from pipeline.train.data import build_samples
from pipeline.train.distributed import Ranks
from pipeline.train.outputs import TIMINGS


def run_from_params(model: dict, train: dict, cache_dir: str | None = None, data_dir: str = "data",
                    lora_dir: str | None = None, on_step=None) -> dict:
    """``model`` / ``train``: the params groups. Reads ``data_dir``/encoded, captions, clips (and, when
    there, prompts and sample_images) parquet files and the cache (``train.cache_dir``, else ``cache_dir``, else data/cache); writes
    ``lora_dir`` (default ``data_dir/lora``) / ``train.run_name``."""
    from pipeline.train.loop import (
        train as train_loop,  # torch + diffusers: imported when training
    )

    cfg = TrainConfig.from_params(train)
    cache_dir = cfg.cache_dir or cache_dir or "data/cache"
    profile = ModelConfig.from_params(model).resolve()
    data = Path(data_dir)
    samples = build_samples(
        schemas.read_table(data / "encoded.parquet", "encoded"),
        schemas.read_table(data / "clips.parquet", "clips"),
        schemas.read_table(data / "captions.parquet", "captions"),
        # the clips' licence, consent and faces, for the manifest (a folder without it: consent unknown)
        schemas.read_table(data / "dataset.parquet", "dataset") if (data / "dataset.parquet").exists() else None,
    )
    out = Path(lora_dir or data / "lora") / cfg.run_name
    prompts = schemas.read_table(data / "prompts.parquet", "prompts") if (data / "prompts.parquet").exists() else None
    images = data / "sample_images.parquet"
    sample_images = schemas.read_table(images, "sample_images") if images.exists() else None
    return train_loop(cfg, profile, samples, CacheStore(cache_dir), out, on_step=on_step, prompts=prompts,
                      sample_images=sample_images)


def run(params: dict, layout: Layout, on_step=None) -> dict:
    """The ``model`` and ``train`` groups; the cache is ``train.cache_dir``, else ``encode.cache_dir``,
    else the layout's; the run folder ``layout.lora / train.run_name``."""
    train = dict(params.get("train") or {})
    cache = train.get("cache_dir") or (params.get("encode") or {}).get("cache_dir") or str(layout.cache)
    metrics = run_from_params(dict(params.get("model") or {}), train, cache_dir=cache, data_dir=str(layout.data),
                              lora_dir=str(layout.lora), on_step=on_step)
    if Ranks.from_env().main:  # data/metrics/train.json is committed: what `dvc exp show` compares on a fresh clone
        stable, timing = split_timings(metrics, TIMINGS)
        write_json(layout.metrics("train"), {"run_name": TrainConfig.from_params(train).run_name, **stable})
        write_json(layout.timings("train"), timing)
        logging.getLogger("train").info("done:\n%s", summary_table(metrics))
    return metrics


def summary_table(metrics: dict) -> str:
    """The run's metrics as an aligned two-column table (per expert for a two-expert run)."""
    rows: list[tuple[str, str]] = []

    def add(prefix: str, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                add(f"{prefix}{key}.", value)
            else:
                rows.append((f"{prefix}{key}", "-" if value is None else f"{value:.6g}" if isinstance(value, float)
                             else str(value)))

    add("", metrics)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
