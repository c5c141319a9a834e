"""DVC stage: probe every file in the raw folder into data/sources.parquet."""

import logging
import sys

from pipeline import schemas
from pipeline.logs import setup_logging
from pipeline.params import load_params
from pipeline.probe_table import probe_folder

OUT = "data/sources.parquet"


def main() -> int:
    setup_logging()
    p = load_params("probe")
    table = probe_folder(p["raw_dir"])
    schemas.write_table(table, OUT, "sources")
    ok = table.filter(table["status"] == "ok").height
    logging.getLogger("probe").info("%d sources ok, %d rejected -> %s", ok, table.height - ok, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
