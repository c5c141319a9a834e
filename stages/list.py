"""DVC stage: list data/raw into data/raw.listing.json (names, sizes, mtimes; nothing opened).

Runs on every ``dvc repro`` (``always_changed``) and takes a second or less; probe depends on
its output instead of on the folder, so DVC never hashes data/raw itself (a FIFO or a symlink
loop there would hang it) and probe re-runs only when a file was added, removed or changed.
"""

import logging
import sys

from pipeline.listing import list_raw, write_listing
from pipeline.logs import setup_logging
from pipeline.params import load_params

OUT = "data/raw.listing.json"


def main() -> int:
    setup_logging()
    p = load_params("probe")
    entries = list_raw(p["raw_dir"], bool(p.get("follow_symlinks_outside", False)))
    write_listing(OUT, p["raw_dir"], entries)
    ok = sum(e.status == "ok" for e in entries)
    logging.getLogger("list").info("%d media files, %d entries that cannot be sources -> %s", ok, len(entries) - ok, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
