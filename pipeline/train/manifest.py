"""The run's manifest: every sample the LoRA was trained or evaluated on, with its provenance."""

from __future__ import annotations

from collections import Counter

import polars as pl

from pipeline.core import schemas


def times_seen(plan, n_batches: int, train_rows: list[int], n_samples: int) -> list[int]:
    """How many times each sample (row of the samples frame) was in a training batch in the first
    ``n_batches`` batches of ``plan`` (whose row indices point into ``train_rows``)."""
    counts: Counter[int] = Counter()
    if n_batches > 0:
        for batch in plan.take(n_batches):
            counts.update(train_rows[r] for r in batch.rows)
    return [counts.get(i, 0) for i in range(n_samples)]


def build_manifest(samples: pl.DataFrame, seen: list[int], held_out: list[bool], family: str = "",
                   expert: str = "") -> pl.DataFrame:
    """Rows of the ``manifest`` schema from the samples frame (see ``data.build_samples``); ``family``
    and ``expert`` ("high", "low", "high+low" or "") name the model the LoRA(s) were trained for."""
    out = samples.with_columns(
        pl.Series("times_seen", seen, dtype=pl.Int64),
        pl.Series("held_out", held_out, dtype=pl.Boolean),
        pl.lit(family, dtype=pl.String).alias("family"),
        pl.lit(expert, dtype=pl.String).alias("expert"),
    )
    return schemas.conform(out, "manifest")
