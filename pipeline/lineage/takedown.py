"""Takedowns: withdraw a source's consent, and find every LoRA that still holds a withdrawn source.

``vlp withdraw SOURCE`` records ``consent: withdrawn`` (with the date and a reason) for the source in
``<raw>/sources.yaml`` (:func:`withdraw`), so that the next ``dvc repro`` drops its clips everywhere;
``vlp audit --withdrawn`` and ``vlp audit --source`` read a source's *current* record (:func:`current_records`):
the records files as they are now (what ``vlp withdraw`` just wrote, before any repro), and the
sources table of the last probe. A source is withdrawn when either says so.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.core import schemas
from pipeline.core.consent import UNKNOWN, WITHDRAWN
from pipeline.core.fs import sha256_file, write_text_atomic
from pipeline.curate.probe import records as rec
from pipeline.lineage.audit import HEX, Run

DEFAULT_RAW = "data/raw"


def default_raw_dir(params_path: str | os.PathLike = "params.yaml") -> str:
    """``probe.raw_dir`` of ``params.yaml`` when there is one, else ``data/raw``."""
    from pipeline.core.params import load_params

    try:
        return str((load_params("probe", params_path) or {}).get("raw_dir") or DEFAULT_RAW)
    except (OSError, KeyError, ValueError):
        return DEFAULT_RAW


def read_sources(data_dir: str | os.PathLike) -> pl.DataFrame | None:
    """The sources table of the last probe in ``data_dir`` (None when there is none or it is unreadable)."""
    path = Path(data_dir) / "sources.parquet"
    try:
        return schemas.read_table(path, "sources") if path.exists() else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Source:
    """A source a takedown names: its path relative to the raw folder and its sha256 ("" when unknown)."""

    path: str
    source_id: str


class TakedownError(ValueError):
    """A source cannot be found or recorded; one line."""


def _from_table(sources: pl.DataFrame | None, column: str, value: str, prefix: bool = False) -> list[Source]:
    if sources is None or sources.height == 0:
        return []
    col = pl.col(column)
    hits = sources.filter((col.str.starts_with(value) if prefix else col == value) & (pl.col("source_id") != ""))
    ok = hits.filter(pl.col("status") == "ok")  # a duplicate's row has the same id: name the source it duplicates
    return [Source(p, s) for p, s in (ok if ok.height else hits).select("path", "source_id").unique("source_id").iter_rows()]


def _from_runs(runs: list[Run], column: str, value: str, prefix: bool = False) -> list[Source]:
    found: dict[str, Source] = {}
    for run in runs:
        col = pl.col(column)
        hits = run.manifest.filter(col.str.starts_with(value) if prefix else col == value)
        for p, s in hits.select("source_path", "source_id").unique().iter_rows():
            found.setdefault(s, Source(p, s))
    return list(found.values())


def resolve_source(query: str, raw_dir: str | os.PathLike, sources: pl.DataFrame | None, runs: list[Run]) -> Source:
    """What ``vlp withdraw SOURCE`` names: a file (hashed; under the raw folder its path is its own, elsewhere
    the path of the source with the same bytes), a ``source_id`` or a prefix of one, or a path relative to
    the raw folder (also once the file is gone: its id then comes from the sources table or a LoRA's manifest)."""
    raw = Path(raw_dir)
    q = Path(query)
    if q.is_file():
        sid = sha256_file(q)
        try:
            return Source(q.resolve().relative_to(raw.resolve()).as_posix(), sid)
        except ValueError:
            hits = _from_table(sources, "source_id", sid) or _from_runs(runs, "source_id", sid)
            if not hits:
                raise TakedownError(f"{query}: not under the raw folder {raw} and no source has its bytes "
                                    f"(sha256 {sid[:12]}); give its path under {raw}") from None
            return hits[0]
    text = query.strip()
    if len(text) >= 4 and set(text.lower()) <= HEX and not q.suffix:
        hits = _from_table(sources, "source_id", text.lower(), prefix=True) or _from_runs(runs, "source_id", text.lower(), prefix=True)
        if len(hits) > 1:
            raise TakedownError(f"{query}: matches {len(hits)} sources ({', '.join(h.path for h in hits[:5])}); give more of the id")
        if hits:
            return hits[0]
    rel = text.replace(os.sep, "/")
    for prefix in (raw.as_posix().rstrip("/") + "/", "./"):
        rel = rel.removeprefix(prefix)
    if not rel or rel.startswith("../") or Path(rel).is_absolute():
        raise TakedownError(f"{query}: not a file, a source id or a path under {raw}")
    hits = _from_table(sources, "path", rel) or _from_runs(runs, "source_path", rel)
    return Source(rel, hits[0].source_id if hits else "")


def current_records(raw_dir: str | os.PathLike, sources: pl.DataFrame | None,
                    wanted: list[Source]) -> tuple[dict[Source, dict], list[rec.RecordError]]:
    """The current record (``records.COLUMNS``) of each source: its records files as they are now, else the
    sources table of the last probe; withdrawn when either says so. Also the malformed records met (a
    record left out may hide a withdrawal: say so)."""
    recs, errors = rec.load_records(raw_dir, sorted({s.path for s in wanted}))
    by_id: dict[str, dict] = {}
    by_path: dict[str, dict] = {}
    if sources is not None:
        for row in sources.select("path", "source_id", *rec.COLUMNS).to_dicts():
            by_path[row["path"]] = row
            if row["source_id"]:
                by_id.setdefault(row["source_id"], row)
    out = {}
    for s in wanted:
        now = rec.resolve(recs, s.path, s.source_id)
        probed = by_id.get(s.source_id) or by_path.get(s.path)
        if not now["record"] and probed is not None:
            now = {k: probed[k] or "" for k in rec.COLUMNS}
            now["consent"] = now["consent"] or UNKNOWN
        if probed is not None and probed["consent"] == WITHDRAWN and now["consent"] != WITHDRAWN:
            now.update(consent=WITHDRAWN, withdrawn_on=probed["withdrawn_on"] or "",
                       withdrawn_reason=probed["withdrawn_reason"] or "", record=now["record"] or probed["record"] or "")
        out[s] = now
    return out, errors


def run_sources(run: Run) -> list[Source]:
    """The sources a run's manifest names (once each)."""
    return [Source(p, s) for p, s in run.manifest.select("source_path", "source_id").unique(maintain_order=True).iter_rows()]


def withdrawn_in_runs(runs: list[Run], current: dict[Source, dict]) -> list[dict]:
    """One dict per run that holds a withdrawn source: run, LoRA, verified, and per source its path, id,
    date, reason and clips."""
    out = []
    for run in runs:
        held = []
        for s in run_sources(run):
            r = current.get(s)
            if r is None or r["consent"] != WITHDRAWN:
                continue
            clips = run.manifest.filter((pl.col("source_id") == s.source_id) & (pl.col("source_path") == s.path))
            held.append({"path": s.path, "source_id": s.source_id, "withdrawn_on": r["withdrawn_on"],
                         "withdrawn_reason": r["withdrawn_reason"], "record": r["record"],
                         "clips": clips["clip_id"].unique(maintain_order=True).to_list(),
                         "trained": bool((~clips["held_out"]).any())})
        if held:
            out.append({"run": run.name, "lora": str(run.lora_path), "family": run.family, "expert": run.expert,
                        "verified": run.verified, "problem": run.problem, "sources": held})
    return out


def withdraw(raw_dir: str | os.PathLike, source: Source, reason: str = "", today: dt.date | None = None) -> tuple[dict, Path, bool]:
    """Record ``consent: withdrawn`` for ``source`` in ``<raw>/sources.yaml`` (written atomically; the other
    records and the file's comments are kept, the source's own entry is rewritten). Returns the fields
    written, the file, and whether the source was already withdrawn there (then nothing is written)."""
    path = Path(raw_dir) / rec.RECORDS_FILE
    text, err = rec.read_small_text(path, str(path))
    if err:
        raise TakedownError(f"{err}; nothing recorded")
    text = text or ""
    found, errors = rec.parse_records(text, str(path)) if text.strip() else ([], [])
    if any("invalid YAML" in e.message or "expected a mapping of path" in e.message for e in errors):
        raise TakedownError(f"{errors[0]}; fix it first, nothing recorded")
    own = next((r for r in found if r.pattern == source.path), None)
    fields = dict(own.fields) if own else {}
    if fields.get("consent") == WITHDRAWN:
        return fields, path, True
    fields["consent"] = WITHDRAWN
    fields["withdrawn_on"] = (today or dt.datetime.now(dt.UTC).date()).isoformat()
    if reason:
        fields["withdrawn_reason"] = " ".join(reason.split())
    if source.source_id:
        fields["source_id"] = source.source_id
    if not text:
        text = ("# Source records (see README, \"Consent and likeness\"): path or glob -> owner, licence, consent,\n"
                "# subject, notes. `vlp withdraw` adds and edits entries here.\n")
    write_text_atomic(path, rec.set_record(text, source.path, fields, str(path)))
    return fields, path, False
