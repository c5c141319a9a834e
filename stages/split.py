"""DVC stage: split the ok sources into clips under data/clips and data/clips.parquet."""

import logging
import sys

from pipeline import schemas
from pipeline.logs import setup_logging
from pipeline.params import load_params, resolve_jobs
from pipeline.split import SplitConfig, split_sources

SOURCES = "data/sources.parquet"
OUT = "data/clips.parquet"
CLIPS_DIR = "data/clips"


def main() -> int:
    setup_logging()
    raw_dir = load_params("probe")["raw_dir"]
    p = load_params("split")
    sources = schemas.read_table(SOURCES, "sources")
    # the last run's table lives in the clips folder (split.INDEX): DVC deletes clips.parquet before this runs
    table = split_sources(sources, raw_dir, CLIPS_DIR, SplitConfig.from_params(p), jobs=resolve_jobs(p.get("jobs")))
    schemas.write_table(table, OUT, "clips")
    ok = table.filter(table["status"] == "ok").height
    logging.getLogger("split").info("%d clips ok, %d errors -> %s", ok, table.height - ok, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
