"""``vlp audit``: which clips made a LoRA, which LoRAs used a source or a clip, what changed between two,
which LoRAs still hold a withdrawn source; ``vlp withdraw``: record a source's withdrawn consent."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

from pipeline.core import consent
from pipeline.core.cli import CommandError, UsageError
from pipeline.core.fs import sha256_file
from pipeline.lineage import audit, takedown

DESCRIPTION = """\
vlp audit LORA.safetensors            every clip that fed the LoRA (manifest checked against its sha256)
vlp audit --source VIDEO_OR_SOURCE_ID every LoRA under --lora-dir that used a clip of that source
vlp audit --clip CLIP_ID              every LoRA under --lora-dir that used that clip
vlp audit --diff LORA_A LORA_B        clips added, removed and re-captioned from A to B
vlp audit --withdrawn                 every LoRA under --lora-dir that still holds a source whose consent was withdrawn

A source's consent record is read from --raw-dir's sources.yaml and sidecars as they are now, and from
--data's sources.parquet (the last probe); a source is withdrawn when either says so.
"""

WITHDRAW_DESCRIPTION = """\
Record that the people in SOURCE withdrew their consent: `consent: withdrawn`, today's date and
--reason go into RAW_DIR/sources.yaml (its other records and comments are kept). Then it prints
every LoRA under --lora-dir that used the source: retrain or delete them. The next `dvc repro`
drops the source's clips everywhere (rejected: "consent withdrawn"; clip files written from it removed) and
retrains; `vlp cache gc --keep data/encoded.parquet --keep data/prompts.parquet --keep
data/sample_images.parquet --delete --grace 0` then removes their cache entries; `vlp audit --withdrawn` lists the LoRAs that still hold it.

SOURCE: the file (hashed), a path under the raw folder (also once the file is deleted), or a
source_id or a prefix of one.
"""


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _print_table(df: pl.DataFrame) -> None:
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=240, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        print(df)


def _lora_main(args) -> int:
    run = audit.open_run(args.lora, args.manifest)
    clips = audit.clip_rows(run.manifest)
    if args.json:
        print(json.dumps({
            "lora": str(run.lora_path), "manifest": str(run.manifest_path), "manifest_sha256": run.manifest_sha256,
            "verified": run.verified, "family": run.family, "expert": run.expert, "metadata": run.metadata,
            "consent": consent.summary(run.manifest), "consent_problem": audit.consent_problem(run),
            "clips": clips.to_dicts(),
            "samples": run.manifest.to_dicts(),
        }, indent=2, default=str))
        return 0
    md = run.metadata
    print(f"LoRA      {run.lora_path}")
    expert = f"  expert {run.expert} ({'high-noise: transformer' if run.expert == 'high' else 'low-noise: transformer_2'})" \
        if run.expert else ""
    print(f"run       {run.name}  profile {md.get('vlp.profile', '?')}  family {md.get('vlp.family', '?')}{expert}  "
          f"base {md.get('vlp.base_model', '?')}")
    print(f"          rank {md.get('vlp.rank', '?')}  alpha {md.get('vlp.alpha', '?')}  steps {md.get('vlp.steps', '?')}  "
          f"targets {md.get('vlp.targets', '?')}")
    print(f"manifest  {run.manifest_path}  sha256 {run.manifest_sha256}  OK (matches the LoRA)")
    n_held = int(clips["held_out"].sum()) if clips.height else 0
    print(f"clips     {clips.height} ({clips.height - n_held} trained, {n_held} held out), {run.manifest.height} samples")
    summary = consent.summary(run.manifest)
    print(f"consent   {consent.describe(summary)} (trained clips; "
          f"{'as its ' + audit.CONSENT_KEY + ' metadata says' if audit.CONSENT_KEY in md else 'from the manifest'})")
    if problem := audit.consent_problem(run):
        print(f"WARNING   {problem}")
    if summary["faces_without_consent"]:
        print(f"WARNING   {summary['faces_without_consent']} trained clip(s) show a face whose source's consent is not yes")
    if clips.height == 0:
        return 0
    shown = clips.select(
        pl.col("clip_id").str.slice(0, 12),
        pl.col("kind"),
        pl.col("source_path").map_elements(lambda s: _short(s, 40), return_dtype=pl.String).alias("source"),
        pl.format("{}-{}", "start_frame", "end_frame").alias("frames"),
        pl.format("{}-{} s", pl.col("start_s").round(2), pl.col("end_s").round(2)).alias("time"),
        pl.col("caption").map_elements(lambda s: _short(s, 60), return_dtype=pl.String),
        pl.col("edited"),
        pl.col("samples"),
        pl.col("latent_keys").list.eval(pl.element().str.slice(0, 10)).list.join(",").alias("latent_keys"),
        pl.col("text_keys").list.eval(pl.element().str.slice(0, 10)).list.join(",").alias("text_keys"),
        pl.col("times_seen"),
        pl.col("held_out"),
        pl.col("licence").map_elements(lambda s: _short(s, 20), return_dtype=pl.String),
        pl.col("consent"),
        pl.col("face_share").round(2).alias("face"),
    )
    _print_table(shown)
    print("(ids and keys shortened; --json prints them in full with every caption)")
    return 0


def _usage_main(args, what: str, query: str) -> int:
    runs, problems = audit.find_runs(args.lora_dir, snapshots=True)  # a takedown names the snapshots too
    kind, value = ("clip", query) if what == "clip" else audit.classify_query(query)
    label = query
    if kind == "file":
        value, kind = sha256_file(query), "id"
        label = f"{query} (source_id {value[:12]})"
    if what == "clip":
        hits = [audit.clip_matches(r.manifest, value) for r in runs]
    else:
        hits = [audit.source_matches(r.manifest, value, kind) for r in runs]
    used = audit.usage_rows(runs, hits)
    records = _source_records(args, runs, hits) if what == "source" else []
    if args.json:
        print(json.dumps({"query": query, "what": what, "lora_dir": str(args.lora_dir), "runs_scanned": len(runs),
                          "unreadable": problems, "used_by": used, "records": records}, indent=2))
        return 0
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    for r in records:
        print(f"source {r['path']} ({r['source_id'][:12] or 'id unknown'}): {_record_line(r)}")
    if not used:
        print(f"no LoRA under {args.lora_dir} used {what} {label} ({len(runs)} runs scanned)")
        return 0
    print(f"{len(used)} of {len(runs)} LoRAs under {args.lora_dir} used {what} {label}:")
    for u in used:
        flag = "" if u["verified"] else f"  WARNING: {u['problem']}"
        srcs = ", ".join(s[:12] for s in u["source_ids"])
        model = f" ({u['family']}{', expert ' + u['expert'] if u['expert'] else ''})" if u["family"] else ""
        print(f"  {u['lora']}  run {u['run']}{model}: {len(u['clips'])} clips, {u['samples']} samples "
              f"({u['trained_samples']} trained, seen {u['times_seen']} times), source {srcs}{flag}")
        for c in u["clips"]:
            print(f"      clip {c}")
    return 0


def _raw_dir(args) -> str:
    return args.raw_dir or takedown.default_raw_dir()


def _record_line(r: dict) -> str:
    """A source's consent record in one line."""
    parts = [f"consent {r['consent']}"]
    if r["consent"] == consent.WITHDRAWN:
        parts[0] += f" on {r['withdrawn_on']}" if r["withdrawn_on"] else ""
        parts[0] += f" ({r['withdrawn_reason']})" if r["withdrawn_reason"] else ""
    for key in ("owner", "licence", "subject", "notes"):
        if r.get(key):
            parts.append(f"{key} {r[key]}")
    parts.append(f"record {r['record']}" if r.get("record") else "no record")
    return "; ".join(parts)


def _source_records(args, runs: list, hits: list[pl.DataFrame]) -> list[dict]:
    """The current consent record of every source the query matched (in some LoRA, or in the sources table)."""
    wanted: dict = {}
    for rows in hits:
        for p, sid in rows.select("source_path", "source_id").unique(maintain_order=True).iter_rows():
            wanted.setdefault(takedown.Source(p, sid), None)
    sources = takedown.read_sources(args.data)
    if not wanted:
        try:
            wanted[takedown.resolve_source(args.source, _raw_dir(args), sources, runs)] = None
        except takedown.TakedownError:
            return []
    current, errors = takedown.current_records(_raw_dir(args), sources, list(wanted))
    for e in errors:
        print(f"warning: {e} (left out)", file=sys.stderr)
    return [{"path": s.path, "source_id": s.source_id, **r} for s, r in current.items()]


def _withdrawn_main(args) -> int:
    runs, problems = audit.find_runs(args.lora_dir, snapshots=True)
    wanted = list(dict.fromkeys(s for run in runs for s in takedown.run_sources(run)))
    current, errors = takedown.current_records(_raw_dir(args), takedown.read_sources(args.data), wanted)
    held = takedown.withdrawn_in_runs(runs, current)
    for e in errors:
        print(f"warning: {e} (left out: a withdrawal in it is not seen)", file=sys.stderr)
    if args.json:
        print(json.dumps({"lora_dir": str(args.lora_dir), "runs_scanned": len(runs), "unreadable": problems,
                          "holding_withdrawn": held}, indent=2))
        return 0
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if not held:
        print(f"no LoRA under {args.lora_dir} holds a withdrawn source ({len(runs)} LoRAs scanned)")
        return 0
    print(f"{len(held)} of {len(runs)} LoRAs under {args.lora_dir} still hold a withdrawn source (retrain or delete them):")
    for h in held:
        flag = "" if h["verified"] else f"  WARNING: {h['problem']}"
        print(f"  {h['lora']}  run {h['run']}{flag}")
        for s in h["sources"]:
            when = f" on {s['withdrawn_on']}" if s["withdrawn_on"] else ""
            why = f" ({s['withdrawn_reason']})" if s["withdrawn_reason"] else ""
            print(f"      {s['path']} ({s['source_id'][:12]}): withdrawn{when}{why}; {len(s['clips'])} clip(s)"
                  f"{'' if s['trained'] else ', held out only'}")
    return 0


def withdraw_main(args) -> int:
    raw = _raw_dir(args)
    runs, problems = audit.find_runs(args.lora_dir, snapshots=True)
    sources = takedown.read_sources(args.data)
    try:
        source = takedown.resolve_source(args.source, raw, sources, runs)
        fields, path, already = takedown.withdraw(raw, source, args.reason or "")
    except takedown.TakedownError as exc:
        raise CommandError(str(exc)) from None
    sid = source.source_id[:12] or "id unknown"
    if already:
        print(f"{source.path} ({sid}): already withdrawn in {path}"
              + (f" on {fields['withdrawn_on']}" if fields.get("withdrawn_on") else "") + "; nothing changed")
    else:
        print(f"{source.path} ({sid}): consent withdrawn on {fields['withdrawn_on']}"
              + (f" ({fields['withdrawn_reason']})" if fields.get("withdrawn_reason") else "") + f", recorded in {path}")
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    hits = [audit.source_matches(r.manifest, source.source_id, "id") if source.source_id
            else audit.source_matches(r.manifest, source.path, "path") for r in runs]
    used = audit.usage_rows(runs, hits)
    if used:
        print(f"{len(used)} LoRA(s) under {args.lora_dir} used it and must be retrained or deleted:")
        for u in used:
            print(f"  {u['lora']}  run {u['run']}: {len(u['clips'])} clip(s), {u['samples']} samples "
                  f"({u['trained_samples']} trained)" + ("" if u["verified"] else f"  WARNING: {u['problem']}"))
    else:
        print(f"no LoRA under {args.lora_dir} used it ({len(runs)} LoRAs scanned)")
    print("next: `dvc repro` drops its clips and retrains; then `vlp cache gc --keep data/encoded.parquet --keep "
          "data/prompts.parquet --keep data/sample_images.parquet --delete --grace 0` removes their cache entries; "
          "`vlp audit --withdrawn` checks what is left")
    return 0


def _diff_main(args) -> int:
    a = audit.open_run(args.diff[0])
    b = audit.open_run(args.diff[1])
    d = audit.diff_runs(a.manifest, b.manifest)
    settings = audit.metadata_diff(a.metadata, b.metadata)
    if args.json:
        print(json.dumps({"a": str(a.lora_path), "b": str(b.lora_path), "settings": settings, **d}, indent=2, default=str))
        return 0
    print(f"A  {a.lora_path}  ({audit.clip_rows(a.manifest).height} clips)")
    print(f"B  {b.lora_path}  ({audit.clip_rows(b.manifest).height} clips)")
    for k, (va, vb) in settings.items():
        print(f"   {k}: {va} -> {vb}")
    print(f"added {len(d['added'])}, removed {len(d['removed'])}, re-captioned {len(d['recaptioned'])}, "
          f"held-out changed {len(d['held_out_changed'])}, unchanged {d['unchanged']}")
    for r in d["added"]:
        print(f"  + {r['clip_id']}  {r['source_path']} {r['start_s']:.2f}-{r['end_s']:.2f} s  {_short(r['caption'], 60)}")
    for r in d["removed"]:
        print(f"  - {r['clip_id']}  {r['source_path']} {r['start_s']:.2f}-{r['end_s']:.2f} s  {_short(r['caption'], 60)}")
    for r in d["recaptioned"]:
        print(f"  ~ {r['clip_id']}  {r['source_path']}")
        print(f"      A ({r['caption_source_a']}): {_short(r['caption_a'], 100)}")
        print(f"      B ({r['caption_source_b']}): {_short(r['caption_b'], 100)}")
    for r in d["held_out_changed"]:
        print(f"  h {r['clip_id']}  held out {r['held_out_a']} -> {r['held_out_b']}")
    return 0


def run(args) -> int:
    modes = [bool(args.lora), bool(args.source), bool(args.clip), bool(args.diff), bool(args.withdrawn)]
    if sum(modes) != 1:
        raise UsageError("give exactly one of: LORA, --source, --clip, --diff, --withdrawn")
    try:
        if args.lora:
            return _lora_main(args)
        if args.withdrawn:
            return _withdrawn_main(args)
        if args.source:
            return _usage_main(args, "source", args.source)
        if args.clip:
            return _usage_main(args, "clip", args.clip)
        return _diff_main(args)
    except audit.AuditError as exc:
        raise CommandError(str(exc)) from None


def register(sub) -> None:
    ap = sub.add_parser("audit", help="which clips made a LoRA; which LoRAs used a source or clip; diff two LoRAs",
                        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lora", nargs="?", help="a LoRA file written by the train stage")
    ap.add_argument("--manifest", help="its manifest.parquet (default: the one beside the LoRA)")
    ap.add_argument("--source", help="a video/image file (hashed to its source_id), a source_id or prefix, or a source path")
    ap.add_argument("--clip", help="a clip_id or a prefix of one")
    ap.add_argument("--diff", nargs=2, metavar=("LORA_A", "LORA_B"), help="compare the clips of two LoRAs")
    ap.add_argument("--withdrawn", action="store_true", help="every LoRA that still holds a source whose consent was withdrawn")
    ap.add_argument("--lora-dir", type=Path, default=Path("data/lora"),
                    help="folder scanned by --source/--clip/--withdrawn (default data/lora)")
    ap.add_argument("--raw-dir", help="the raw folder whose sources.yaml holds the records (default probe.raw_dir, data/raw)")
    ap.add_argument("--data", default="data", metavar="DIR", help="folder holding sources.parquet (default data)")
    ap.add_argument("--json", action="store_true", help="print JSON for scripts")
    ap.set_defaults(run=run)

    wp = sub.add_parser("withdraw", help="record a source's withdrawn consent; list the LoRAs that used it",
                        description=WITHDRAW_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    wp.add_argument("source", help="the source: its file, its path under the raw folder, or a source_id (prefix)")
    wp.add_argument("--reason", help="why (kept in the record as withdrawn_reason)")
    wp.add_argument("--raw-dir", help="the raw folder whose sources.yaml gets the record (default probe.raw_dir, data/raw)")
    wp.add_argument("--data", default="data", metavar="DIR", help="folder holding sources.parquet (default data)")
    wp.add_argument("--lora-dir", type=Path, default=Path("data/lora"), help="folder scanned for LoRAs that used it (default data/lora)")
    wp.set_defaults(run=withdraw_main)
