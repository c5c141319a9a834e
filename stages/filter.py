"""DVC stage: keep the clips that pass every filter rule (data/dataset.parquet), list the others with
their reasons (data/rejected.parquet); write the counts (metrics) and per-clip scores (plots)."""

import logging
import sys

from pipeline import schemas
from pipeline.filtering import filter_clips
from pipeline.filters import FilterConfig
from pipeline.fsutil import atomic_path, write_json
from pipeline.logs import setup_logging
from pipeline.params import load_params

CLIPS = "data/clips.parquet"
SCORES = "data/scores.parquet"
DATASET = "data/dataset.parquet"
REJECTED = "data/rejected.parquet"
METRICS = "data/metrics/filter.json"
PLOTS = "data/plots/scores.csv"


def main() -> int:
    setup_logging()
    cfg = FilterConfig.from_params(load_params("filter"))
    result = filter_clips(schemas.read_table(CLIPS, "clips"), schemas.read_table(SCORES, "scores"), cfg)
    schemas.write_table(result.dataset, DATASET, "dataset")
    schemas.write_table(result.rejected, REJECTED, "rejected")
    write_json(METRICS, result.metrics)
    with atomic_path(PLOTS) as tmp:
        result.plot_rows.write_csv(tmp)
    log = logging.getLogger("filter")
    for row in result.rejected.select("path", "reasons").to_dicts():
        log.info("rejected %s: %s", row["path"] or "(no clip file)", "; ".join(row["reasons"]))
    log.info("%d clips kept -> %s, %d rejected -> %s", result.dataset.height, DATASET, result.rejected.height, REJECTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
