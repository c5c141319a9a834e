"""DVC stage: caption the kept clips and photos -> data/captions.parquet, data/metrics/caption.json."""

import logging
import signal
import sys

from pipeline import schemas
from pipeline.caption.config import stage_paths
from pipeline.caption.stage import run_caption
from pipeline.logs import setup_logging
from pipeline.params import load_params

DATASET = "data/dataset.parquet"
EDITS = "data/captions_edits.csv"


def _interrupt(signum, frame):  # noqa: ARG001 - SIGTERM ends the run like Ctrl-C: finished captions are flushed
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    setup_logging()
    signal.signal(signal.SIGTERM, _interrupt)
    p = load_params("caption")
    dataset = schemas.read_table(DATASET, "dataset")
    paths = stage_paths("data")
    table, metrics = run_caption(dataset, p, paths["captions"], paths["parts"], paths["metrics"], EDITS)
    ok = table.filter(table["status"] == "ok").height
    logging.getLogger("caption").info("%d captions ok, %d failed -> %s", ok, table.height - ok, paths["captions"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
