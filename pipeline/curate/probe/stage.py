"""The list and probe stages' runners: list the raw folder (nothing opened), then probe what is new."""

from __future__ import annotations

import logging

from pipeline.core import schemas
from pipeline.core.config import load_settings
from pipeline.core.layout import Layout
from pipeline.curate.probe.config import ProbeConfig
from pipeline.curate.probe.listing import list_raw, read_listing, write_listing
from pipeline.curate.probe.records import record_files
from pipeline.curate.probe.table import probe_cache, probe_entries, read_probe_cache, write_probe_cache

log = logging.getLogger("probe")


def run_list(params: dict, layout: Layout, raw_dir: str | None = None) -> dict:
    """Write ``layout.listing`` for ``probe.raw_dir`` (or ``raw_dir``)."""
    cfg = load_settings(ProbeConfig, params.get("probe"), "probe")
    root = raw_dir or cfg.raw_dir
    entries = list_raw(root, cfg.follow_symlinks_outside)
    write_listing(layout.listing, root, entries, record_files(root, [e.rel for e in entries]))
    ok = sum(e.status == "ok" for e in entries)
    log.info("%d media files, %d entries that cannot be sources -> %s", ok, len(entries) - ok, layout.listing)
    return {"files": ok, "not_sources": len(entries) - ok}


def run_probe(params: dict, layout: Layout) -> dict:
    """Probe the listing's files into ``layout.sources`` (files unchanged since the last run are not read)."""
    load_settings(ProbeConfig, params.get("probe"), "probe")  # refuse a bad group before any work
    root, entries = read_listing(layout.listing)
    table = probe_entries(entries, root, cache=read_probe_cache(layout.probe_cache))
    write_probe_cache(layout.probe_cache, probe_cache(entries, table))
    schemas.write_table(table, layout.sources, "sources")
    ok = table.filter(table["status"] == "ok").height
    log.info("%d sources ok, %d rejected -> %s", ok, table.height - ok, layout.sources)
    return {"ok": ok, "rejected": table.height - ok}
