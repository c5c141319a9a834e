"""The score stage's runner: every ok clip of the clips table into the scores table (from the split stage's measurements)."""

from __future__ import annotations

import logging

from pipeline.core import schemas
from pipeline.core.engine import stage_engine
from pipeline.core.layout import Layout
from pipeline.curate.score.config import ScoreConfig
from pipeline.curate.score.scoring import score_clips

log = logging.getLogger("score")


def run(params: dict, layout: Layout) -> dict:
    cfg = ScoreConfig.from_params(params.get("score"))
    clips = schemas.read_table(layout.clips, "clips")
    with stage_engine(params, "score") as ray:
        table = score_clips(clips, layout.clips_dir, cfg, ray=ray)
    schemas.write_table(table, layout.scores, "scores")
    ok = table.filter(table["status"] == "ok").height
    log.info("%d clips scored, %d errors -> %s", ok, table.height - ok, layout.scores)
    return {"scored": ok, "errors": table.height - ok}
