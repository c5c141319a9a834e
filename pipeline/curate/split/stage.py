"""The split stage's runner: the ok sources of the listing's raw folder into clips (spans of them),
and the per-frame measurements the score stage aggregates."""

from __future__ import annotations

import logging

from pipeline.core import schemas
from pipeline.core.engine import stage_engine
from pipeline.core.layout import Layout
from pipeline.core.params import resolve_jobs
from pipeline.curate.probe.listing import read_listing
from pipeline.curate.score.config import ScoreConfig
from pipeline.curate.split.config import SplitConfig
from pipeline.curate.split.split import split_sources

log = logging.getLogger("split")


def run(params: dict, layout: Layout) -> dict:
    cfg = SplitConfig.from_params(params.get("split"))
    measure = ScoreConfig.from_params(params.get("score")).measure()
    root, _ = read_listing(layout.listing)
    sources = schemas.read_table(layout.sources, "sources")
    # the last run's table lives in the clips folder (split.INDEX): DVC deletes clips.parquet before this runs
    with stage_engine(params, "split") as ray:
        table = split_sources(sources, root, layout.clips_dir, cfg, measure, jobs=resolve_jobs(cfg.jobs), ray=ray)
    schemas.write_table(table, layout.clips, "clips")
    ok = table.filter(table["status"] == "ok").height
    log.info("%d clips ok, %d errors or skipped sources -> %s", ok, table.height - ok, layout.clips)
    return {"clips": ok, "not_ok": table.height - ok}
