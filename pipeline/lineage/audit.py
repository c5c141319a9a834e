"""Which clips made a LoRA: read a run's manifest, check it against the LoRA, compare runs.

A LoRA written by the train stage carries ``vlp.*`` safetensors metadata, among it
``vlp.manifest_sha256``: the sha256 of the ``manifest.parquet`` file beside it, which lists
every sample (a window of a clip) the LoRA was trained or evaluated on. :func:`open_run`
reads both and refuses a manifest whose bytes changed since training, so an audit never
reports a list that is not the one that trained the LoRA.

The manifest also says, per clip, the source's licence and consent and whether the clip shows a
face, as they stood when the LoRA was trained; the LoRA's ``vlp.consent`` metadata summarises them
(:func:`consent_problem` checks that it does). A manifest written before those columns existed is
read with them empty (consent ``unknown``, faces not measured).

Everything below :func:`open_run` / :func:`find_runs` is a pure function over polars frames.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import polars as pl

from pipeline.core import consent, schemas
from pipeline.core.errors import one_line
from pipeline.core.fs import sha256_file

# The train stage names its LoRA files after the run: <run>.safetensors (diffusers layout) and
# <run>_comfy.safetensors, per expert of a two-expert family <run>_high_noise / <run>_low_noise, and
# snapshots snapshots/<run>-step<NNNNN>[...].safetensors (runs of earlier versions: lora[...]). A run
# is found by its diffusers-layout files (the *_comfy files carry the same metadata; one file per
# trained model is enough to list a run) beside the run's manifest.
COMFY_SUFFIX = "_comfy.safetensors"
SNAPSHOTS = "snapshots"
MANIFEST_FILE = "manifest.parquet"
SHA_KEY = "vlp.manifest_sha256"
CONSENT_KEY = "vlp.consent"
# columns a manifest of an earlier version lacks, and what they read as
LATER_COLUMNS = {"licence": pl.lit(""), "consent": pl.lit(consent.UNKNOWN), "face_share": pl.lit(None, pl.Float64),
                 "face": pl.lit(None, pl.Boolean)}
HEX = set("0123456789abcdef")


class AuditError(Exception):
    """A LoRA cannot be audited: one line naming the file and the reason."""


@dataclass
class Run:
    """One trained LoRA and the manifest that trained it."""

    lora_path: Path
    manifest_path: Path
    metadata: dict[str, str]
    manifest: pl.DataFrame
    manifest_sha256: str
    verified: bool = True  # False: the manifest does not match the sha256 stored in the LoRA
    problem: str = ""  # why it is not verified

    @property
    def name(self) -> str:
        return self.metadata.get("vlp.run_name") or self.lora_path.parent.name

    @property
    def family(self) -> str:
        return self.metadata.get("vlp.family", "")

    @property
    def expert(self) -> str:
        """"high" / "low" for an expert of Wan 2.2 A14B, "" otherwise."""
        return self.metadata.get("vlp.expert", "")


def read_lora_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata of a LoRA file (no tensor is loaded)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise AuditError(f"{path}: LoRA file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise AuditError(f"{path}: not a readable safetensors file ({one_line(exc, with_type=False)})") from exc


def open_run(lora_path: str | os.PathLike, manifest_path: str | os.PathLike | None = None,
             strict: bool = True) -> Run:
    """Read a LoRA's metadata and its manifest, and check the manifest's sha256.

    ``manifest_path`` defaults to ``manifest.parquet`` beside the LoRA. With ``strict`` a
    missing manifest, a LoRA without ``vlp.manifest_sha256`` or a mismatch raises
    :class:`AuditError`; without it a mismatch is recorded on the returned run instead
    (``verified=False``), so a scan over many runs still reports the tampered one.
    """
    lora_path = Path(lora_path)
    metadata = read_lora_metadata(lora_path)
    manifest_path = Path(manifest_path) if manifest_path else manifest_beside(lora_path)
    expected = metadata.get(SHA_KEY)
    if not expected:
        raise AuditError(f"{lora_path}: no {SHA_KEY} in its metadata (not a LoRA written by vlp train)")
    if not manifest_path.exists():
        raise AuditError(f"{manifest_path}: manifest missing (the LoRA {lora_path.name} records sha256 {expected[:12]})")
    actual = sha256_file(manifest_path)
    problem = ""
    if actual != expected:
        problem = (f"{manifest_path}: sha256 {actual[:12]} does not match {expected[:12]} stored in {lora_path} "
                   "(the manifest changed after training)")
        if strict:
            raise AuditError(problem)
    try:
        manifest = read_manifest(manifest_path)
    except Exception as exc:
        raise AuditError(f"{manifest_path}: unreadable manifest ({one_line(exc, with_type=False)})") from exc
    return Run(lora_path, manifest_path, metadata, manifest, actual, verified=not problem, problem=problem)


def read_manifest(path: Path) -> pl.DataFrame:
    """A manifest, checked against its schema; one written before the licence / consent / face columns
    existed gets them empty (consent ``unknown``, faces not measured)."""
    df = pl.read_parquet(path)
    missing = [c for c in LATER_COLUMNS if c not in df.columns]
    if missing and all(c in df.columns for c in schemas.MANIFEST if c not in LATER_COLUMNS):
        df = df.with_columns([LATER_COLUMNS[c].alias(c) for c in missing]).select(list(schemas.MANIFEST))
    return schemas.validate(df, "manifest", where=str(path))


def consent_problem(run: Run) -> str:
    """"" when the LoRA's ``vlp.consent`` metadata is what its manifest says (or the LoRA has none, as
    LoRAs of earlier versions); else one line saying how they differ."""
    stored = run.metadata.get(CONSENT_KEY)
    if not stored:
        return ""
    try:
        recorded = json.loads(stored)
    except ValueError:
        return f"{run.lora_path}: {CONSENT_KEY} is not JSON"
    actual = consent.summary(run.manifest)
    if recorded != actual:
        return f"{run.lora_path}: {CONSENT_KEY} says {consent.describe(recorded)}, its manifest says {consent.describe(actual)}"
    return ""


def manifest_beside(lora_path: Path) -> Path:
    """The manifest of a LoRA file: in its folder, or for a snapshot in the run folder above."""
    folder = lora_path.parent.parent if lora_path.parent.name == SNAPSHOTS else lora_path.parent
    return folder / MANIFEST_FILE


def lora_files(lora_dir: Path) -> list[Path]:
    """The diffusers-layout LoRA files under ``lora_dir`` (any depth) that have a run manifest:
    final files and snapshots; not the ComfyUI copies, not the checkpoints' tensors."""
    return sorted(p for p in lora_dir.rglob("*.safetensors")
                  if not p.name.endswith(COMFY_SUFFIX) and "checkpoints" not in p.relative_to(lora_dir).parts
                  and manifest_beside(p).exists())


def find_runs(lora_dir: str | os.PathLike, snapshots: bool = False) -> tuple[list[Run], list[str]]:
    """Every LoRA under ``lora_dir`` (any depth): each diffusers-layout LoRA file beside a run's
    manifest (one per expert of a Wan 2.2 A14B run); with ``snapshots`` the step snapshots too.

    Returns the runs (a manifest that does not match is kept, with ``verified=False``) and
    one line per folder that could not be read (e.g. its manifest is missing).
    """
    lora_dir = Path(lora_dir)
    if not lora_dir.is_dir():
        return [], [f"{lora_dir}: no such folder"]
    runs, problems = [], []
    for lora in lora_files(lora_dir):
        if lora.parent.name == SNAPSHOTS and not snapshots:
            continue
        try:
            runs.append(open_run(lora, strict=False))
        except AuditError as exc:
            problems.append(str(exc))
    return runs, problems


# ---------------------------------------------------------------- pure functions over frames


def clip_rows(manifest: pl.DataFrame) -> pl.DataFrame:
    """One row per clip of a manifest, in first-appearance order.

    A clip can feed several samples (windows); their cache keys are listed together,
    ``times_seen`` is summed and the clip counts as held out when all its samples are.
    """
    if manifest.height == 0:
        return pl.DataFrame(schema={
            "clip_id": pl.String, "source_id": pl.String, "source_path": pl.String, "kind": pl.String,
            "start_frame": pl.Int64, "end_frame": pl.Int64, "start_s": pl.Float64, "end_s": pl.Float64,
            "caption": pl.String, "caption_source": pl.String, "edited": pl.Boolean, "samples": pl.UInt32,
            "sample_ids": pl.List(pl.String), "latent_keys": pl.List(pl.String), "text_keys": pl.List(pl.String),
            "times_seen": pl.Int64, "held_out": pl.Boolean, "licence": pl.String, "consent": pl.String,
            "face_share": pl.Float64, "face": pl.Boolean,
        })
    return (
        manifest.with_row_index("_order")
        .group_by("clip_id", maintain_order=True)
        .agg(
            pl.col("source_id").first(), pl.col("source_path").first(), pl.col("kind").first(),
            pl.col("start_frame").first(), pl.col("end_frame").first(),
            pl.col("start_s").first(), pl.col("end_s").first(),
            pl.col("caption").first(), pl.col("caption_source").first(),
            (pl.col("caption_source") == "edit").any().alias("edited"),
            pl.len().alias("samples"),
            pl.col("sample_id").alias("sample_ids"),
            pl.col("latent_key").alias("latent_keys"),
            pl.col("text_key").unique(maintain_order=True).alias("text_keys"),
            pl.col("times_seen").sum(),
            pl.col("held_out").all(),
            pl.col("licence").first(), pl.col("consent").first(),
            pl.col("face_share").first(), pl.col("face").first(),
            pl.col("_order").min(),
        )
        .sort("_order")
        .drop("_order")
    )


def classify_query(query: str) -> tuple[str, str]:
    """What a ``--source`` / ``--clip`` argument is: ("file", path), ("id", hex prefix) or ("path", text)."""
    if Path(query).is_file():
        return "file", query
    q = query.strip().lower()
    if len(q) >= 4 and set(q) <= HEX:
        return "id", q
    return "path", query


def source_matches(manifest: pl.DataFrame, query: str, kind: str) -> pl.DataFrame:
    """Manifest rows of the sources a query names.

    ``kind`` "id": a source_id or a prefix of one; "path": the source path as probe recorded
    it (relative to the raw folder), or a path ending with it.
    """
    if kind == "id":
        return manifest.filter(pl.col("source_id").str.starts_with(query))
    q = query.replace(os.sep, "/").lstrip("./")
    return manifest.filter((pl.col("source_path") == q) | pl.lit(q).str.ends_with("/" + pl.col("source_path"))
                           | pl.col("source_path").str.ends_with("/" + q))


def clip_matches(manifest: pl.DataFrame, query: str) -> pl.DataFrame:
    """Manifest rows of a clip id or a prefix of one."""
    return manifest.filter(pl.col("clip_id").str.starts_with(query.strip().lower()))


def usage_rows(runs: list[Run], hits: list[pl.DataFrame]) -> list[dict]:
    """One summary dict per run whose manifest had hits: run, LoRA, clips and samples used."""
    out = []
    for run, rows in zip(runs, hits):
        if rows.height == 0:
            continue
        clips = clip_rows(rows)
        out.append({
            "run": run.name,
            "lora": str(run.lora_path),
            "family": run.family,
            "expert": run.expert,
            "verified": run.verified,
            "problem": run.problem,
            "source_ids": sorted(set(rows["source_id"].to_list())),
            "clips": clips["clip_id"].to_list(),
            "samples": rows.height,
            "trained_samples": int((~rows["held_out"]).sum()),
            "times_seen": int(rows["times_seen"].sum()),
        })
    return out


class RunDiff(TypedDict):
    """What :func:`diff_runs` finds: clip rows per kind of change, and the count of clips whose caption is unchanged."""

    added: list[dict]
    removed: list[dict]
    recaptioned: list[dict]
    held_out_changed: list[dict]
    unchanged: int


def diff_runs(a: pl.DataFrame, b: pl.DataFrame) -> RunDiff:
    """Clips added (in B only), removed (in A only), re-captioned, and moved in or out of the held-out set."""
    ca, cb = clip_rows(a), clip_rows(b)
    ids_a, ids_b = set(ca["clip_id"].to_list()), set(cb["clip_id"].to_list())
    keep = ["clip_id", "source_path", "start_s", "end_s", "caption", "caption_source", "held_out"]
    added = cb.filter(pl.col("clip_id").is_in(sorted(ids_b - ids_a))).select(keep).to_dicts()
    removed = ca.filter(pl.col("clip_id").is_in(sorted(ids_a - ids_b))).select(keep).to_dicts()
    both = ca.select("clip_id", "source_path", "caption", "caption_source", "held_out").join(
        cb.select("clip_id", "caption", "caption_source", "held_out"), on="clip_id", suffix="_b", maintain_order="left"
    )
    recaptioned = [
        {"clip_id": r["clip_id"], "source_path": r["source_path"], "caption_a": r["caption"], "caption_b": r["caption_b"],
         "caption_source_a": r["caption_source"], "caption_source_b": r["caption_source_b"]}
        for r in both.filter(pl.col("caption") != pl.col("caption_b")).to_dicts()
    ]
    held_out_changed = [
        {"clip_id": r["clip_id"], "source_path": r["source_path"], "held_out_a": r["held_out"], "held_out_b": r["held_out_b"]}
        for r in both.filter(pl.col("held_out") != pl.col("held_out_b")).to_dicts()
    ]
    return {"added": added, "removed": removed, "recaptioned": recaptioned, "held_out_changed": held_out_changed,
            "unchanged": both.height - len(recaptioned)}


def metadata_diff(a: dict[str, str], b: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """The ``vlp.*`` metadata keys whose values differ between two LoRAs."""
    keys = sorted(k for k in set(a) | set(b) if k.startswith("vlp.") and k != SHA_KEY)
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}
