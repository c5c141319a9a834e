"""The filter stage's runner: kept clips (dataset), the others with every reason (rejected), the
counts (a DVC metric) and the per-clip scores (the DVC plots' data)."""

from __future__ import annotations

import logging

from pipeline.core import schemas
from pipeline.core.fs import atomic_path, write_json
from pipeline.core.layout import Layout
from pipeline.curate.filter.config import FilterConfig
from pipeline.curate.filter.filtering import FilterResult, filter_clips

log = logging.getLogger("filter")


def run(params: dict, layout: Layout) -> FilterResult:
    cfg = FilterConfig.from_params(params.get("filter"))
    sources = schemas.read_table(layout.sources, "sources") if layout.sources.exists() else None
    if sources is None:
        log.warning("%s not found: every clip's consent is unknown", layout.sources)
    result = filter_clips(schemas.read_table(layout.clips, "clips"), schemas.read_table(layout.scores, "scores"), cfg,
                          sources)
    schemas.write_table(result.dataset, layout.dataset, "dataset")
    schemas.write_table(result.rejected, layout.rejected, "rejected")
    write_json(layout.metrics("filter"), result.metrics)
    with atomic_path(layout.score_plots) as tmp:
        result.plot_rows.write_csv(tmp)
    for row in result.rejected.select("path", "source_path", "reasons").to_dicts():
        log.info("rejected %s: %s", row["path"] or f"{row['source_path']} (no clip)", "; ".join(row["reasons"]))
    log.info("%d clips kept -> %s, %d rejected -> %s", result.dataset.height, layout.dataset, result.rejected.height,
             layout.rejected)
    return result
