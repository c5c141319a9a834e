"""DVC stage: probe every file of the raw folder's listing (stage list) into data/sources.parquet."""

import logging
import sys

from pipeline import schemas
from pipeline.logs import setup_logging
from pipeline.listing import read_listing
from pipeline.probe_table import probe_cache, probe_entries, read_probe_cache, write_probe_cache

LISTING = "data/raw.listing.json"  # stage list
OUT = "data/sources.parquet"
CACHE = "data/.probe-cache.json"  # rows of unchanged files, by size and mtime (not a DVC output)


def main() -> int:
    setup_logging()
    root, entries = read_listing(LISTING)
    table = probe_entries(entries, root, cache=read_probe_cache(CACHE))
    write_probe_cache(CACHE, probe_cache(entries, table))
    schemas.write_table(table, OUT, "sources")
    ok = table.filter(table["status"] == "ok").height
    logging.getLogger("probe").info("%d sources ok, %d rejected -> %s", ok, table.height - ok, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
