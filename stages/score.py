"""DVC stage: score every ok clip of data/clips.parquet into data/scores.parquet."""

import logging
import sys

from pipeline import schemas
from pipeline.logs import setup_logging
from pipeline.params import load_params, resolve_jobs
from pipeline.scoring import ScoreConfig, score_clips

CLIPS = "data/clips.parquet"
OUT = "data/scores.parquet"


def main() -> int:
    setup_logging()
    p = load_params("score")
    clips = schemas.read_table(CLIPS, "clips")
    jobs = p.pop("jobs", 0)
    table = score_clips(clips, ".", ScoreConfig.from_params(p), jobs=resolve_jobs(jobs))
    schemas.write_table(table, OUT, "scores")
    ok = table.filter(table["status"] == "ok").height
    logging.getLogger("score").info("%d clips scored, %d errors -> %s", ok, table.height - ok, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
