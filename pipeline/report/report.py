"""The dataset report: ``data/report/index.html``, a static page that opens from disk.

It reads whatever tables exist (sources, clips, scores, dataset/rejected, captions) and the
LoRA runs under ``data/lora``; a missing table only turns its part of the page into a note
saying which stage writes it. Images live beside the page: ``thumbs/`` (three frames per clip,
made once per clip id), ``plots/`` (score histograms) and ``runs/`` (loss curves); a clip's
``<video>`` plays the clip's span of its source file (the source's path relative to the page, with a
media fragment ``#t=start,end``: a clip is a span of its source, no clip file is needed). The report
stage (``stages/report.py``) and ``vlp report`` (:mod:`pipeline.report.cli`) both call :func:`build_report`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import polars as pl

from pipeline.core import schemas
from pipeline.core.config import load_settings, setting
from pipeline.core.fs import write_text_atomic
from pipeline.lineage import audit
from pipeline.report.html import ReportPage, RunView, reason_category, render
from pipeline.report.plots import (
    loss_overlay_png,
    loss_png,
    plot_frame,
    read_curve,
    score_histograms,
    verdict_colors,
)
from pipeline.report.thumbs import ensure_thumbs

log = logging.getLogger(__name__)

# table -> (file under the data folder, stage that writes it)
TABLES = {
    "sources": ("sources.parquet", "probe"),
    "clips": ("clips.parquet", "split"),
    "scores": ("scores.parquet", "score"),
    "dataset": ("dataset.parquet", "filter"),
    "rejected": ("rejected.parquet", "filter"),
    "captions": ("captions.parquet", "caption"),
}
SCORE_COLUMNS = ("motion", "static_fraction", "sharpness", "luma_mean", "luma_std", "black_fraction", "white_fraction",
                 "border_top", "border_bottom", "border_left", "border_right")
FACE_COLUMNS = ("face_share", "face_area", "face")  # the face flag of each clip (score stage)


@dataclass(frozen=True)
class ReportConfig:
    thumb_width: int = setting(160, min=16, max=1024)  # thumbnail width in pixels
    bins: int = setting(40, min=2, max=500)  # histogram bins

    @classmethod
    def from_params(cls, p: dict | None) -> ReportConfig:
        return load_settings(cls, p, "report")


def load_tables(data_dir: str | os.PathLike) -> tuple[dict[str, pl.DataFrame | None], dict[str, str]]:
    """Every table that exists (None for the others) and a note per missing one."""
    data_dir = Path(data_dir)
    tables: dict[str, pl.DataFrame | None] = {}
    missing: dict[str, str] = {}
    for name, (file, stage) in TABLES.items():
        path = data_dir / file
        if not path.exists():
            tables[name] = None
            key = "filter" if stage == "filter" else name
            missing[key] = f"{path} not found: run the {stage} stage; its part of the report is empty."
            continue
        try:
            tables[name] = schemas.read_table(path, name)
        except Exception as exc:  # a stale table must not stop the rest of the report
            tables[name] = None
            missing[name] = f"{str(exc).splitlines()[0]}"
            log.warning("%s", missing[name])
    if tables["dataset"] is None or tables["rejected"] is None:
        tables["dataset"] = tables["rejected"] = None
    return tables, missing


def clip_view(clips: pl.DataFrame, scores: pl.DataFrame | None, dataset: pl.DataFrame | None,
              rejected: pl.DataFrame | None, captions: pl.DataFrame | None) -> pl.DataFrame:
    """One row per clip: its clip columns, scores, verdict (kept / rejected / error / not filtered), reasons, caption."""
    df = clips.select("clip_id", "source_id", "source_path", "kind", "start_frame", "end_frame", "start_s", "end_s",
                      "n_frames", "fps", "resampled", "width", "height", "path", "source_frames",
                      pl.col("status").alias("clip_status"),
                      pl.col("reason").alias("clip_reason"))
    if scores is not None:
        df = df.join(scores.select("clip_id", *SCORE_COLUMNS, *FACE_COLUMNS, pl.col("status").alias("score_status"),
                                   pl.col("reason").alias("score_reason")), on="clip_id", how="left")
    else:
        df = df.with_columns([pl.lit(None, pl.Float64).alias(c) for c in SCORE_COLUMNS]
                             + [pl.lit(None, schemas.SCORES[c]).alias(c) for c in FACE_COLUMNS]
                             + [pl.lit(None, pl.String).alias("score_status"), pl.lit(None, pl.String).alias("score_reason")])
    kept = set(dataset["clip_id"].to_list()) if dataset is not None else set()
    why = dict(zip(rejected["clip_id"].to_list(), rejected["reasons"].to_list())) if rejected is not None else {}
    verdicts, reasons = [], []
    for cid, cst, cre, sst, sre in df.select("clip_id", "clip_status", "clip_reason", "score_status", "score_reason").iter_rows():
        if cst != "ok":
            verdict, reason = "error", [cre or "split error"]
        elif cid in kept:
            verdict, reason = "kept", []
        elif cid in why:
            verdict, reason = "rejected", list(why[cid] or [])
        elif sst == "error":
            verdict, reason = "error", [f"score: {sre}"]
        else:
            verdict, reason = "not filtered", []
        verdicts.append(verdict)
        reasons.append(reason)
    df = df.with_columns(pl.Series("verdict", verdicts, pl.String), pl.Series("reasons", reasons, pl.List(pl.String)))
    if captions is not None:
        df = df.join(captions.select("clip_id", "caption", pl.col("source").alias("caption_source"),
                                     pl.col("status").alias("caption_status"), pl.col("reason").alias("caption_reason")),
                     on="clip_id", how="left")
    else:
        df = df.with_columns([pl.lit(None, pl.String).alias(c) for c in ("caption", "caption_source", "caption_status", "caption_reason")])
    return df


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "run"


def sample_grid(run_folder: Path, videos: Path, out_dir: Path) -> list[dict]:
    """A run's rendered sample videos by step (rows) and prompt (columns): each {"step", "videos":
    [{"src" (relative to the report), "prompt", "index"}]}; the prompt from the latents' metadata."""
    from safetensors import safe_open

    grid = []
    for step in sorted(p for p in videos.glob("step-*") if p.is_dir()):
        row = []
        for mp4 in sorted(step.glob("*.mp4"), key=lambda p: (len(p.stem), p.stem)):
            latents = run_folder / "samples" / step.name / f"{mp4.stem}.safetensors"
            prompt = ""
            if latents.exists():
                with safe_open(str(latents), framework="pt") as f:
                    prompt = (f.metadata() or {}).get("prompt", "")
            row.append({"src": os.path.relpath(mp4, out_dir), "prompt": prompt, "index": mp4.stem})
        if row:
            grid.append({"step": step.name.removeprefix("step-").lstrip("0") or "0", "videos": row})
    return grid


OVERLAY_PNG = "all_runs_loss.png"  # every run's loss on one chart (runs/)


def _runs(lora_dir: Path, out_dir: Path, samples_dir: Path | None = None) -> tuple[list[RunView], list[str], str | None]:
    """The run views, the problems found, and the overlaid loss curves of every run (a path relative to the page)."""
    runs, problems = audit.find_runs(lora_dir) if lora_dir.is_dir() else ([], [])
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    views, made = [], set()
    curves: dict[Path, tuple[str, pl.DataFrame | None, pl.DataFrame | None]] = {}  # one per run folder (both experts')
    for run in runs:
        folder = run.lora_path.parent
        png = f"{_safe(folder.relative_to(lora_dir).as_posix())}_loss.png"  # unique even if run names repeat
        train, evals = read_curve(folder / "loss.csv", "train_loss"), read_curve(folder / "eval_loss.csv", "eval_loss")
        curves.setdefault(folder, (run.name, train, evals))
        has_png = loss_png(train, evals, f"{run.name}: loss", runs_dir / png)
        if has_png:
            made.add(png)
        metrics = {}
        if (folder / "metrics.json").exists():
            try:
                metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            except ValueError as exc:
                problems.append(f"{folder / 'metrics.json'}: unreadable ({exc})")
        # Wan 2.2 A14B: one view per expert LoRA file, labelled so the two are told apart
        label = f"{run.name} ({run.expert}-noise expert)" if run.expert else run.name
        views.append(RunView(label, str(run.lora_path), run.verified, run.problem, run.metadata,
                             audit.clip_rows(run.manifest), f"runs/{png}" if has_png else None,
                             metrics if isinstance(metrics, dict) else {},
                             sample_grid(folder, samples_dir / folder.name, out_dir) if samples_dir else []))
    overlay = loss_overlay_png(list(curves.values()), runs_dir / OVERLAY_PNG)
    if overlay:
        made.add(OVERLAY_PNG)
    for f in runs_dir.glob("*.png"):
        if f.name not in made:
            f.unlink()
    return views, problems, f"runs/{OVERLAY_PNG}" if overlay else None


def verdict_labels(view: pl.DataFrame) -> dict[str, str]:
    """clip_id -> what the histograms colour the clip by: "kept", or the rule of its first reason ("blurry",
    "static", "duplicate"...: :func:`~pipeline.report.html.reason_category`); clips not filtered are left out."""
    out = {}
    for cid, verdict, reasons in view.select("clip_id", "verdict", "reasons").iter_rows():
        if verdict == "kept":
            out[cid] = "kept"
        elif verdict == "rejected":
            out[cid] = reason_category(reasons[0]) if reasons else "rejected"
    return out


def media_url(root: str | os.PathLike, path: str, out_dir: Path, span: tuple[float, float] | None = None) -> str:
    """A file's URL relative to the page (percent-encoded: a file name may hold spaces, '#' or '?'); with
    ``span`` (start_s, end_s) a media fragment ``#t=start,end``, so an HTML5 player plays just the clip's span
    of its source."""
    rel = os.path.relpath(os.path.abspath(Path(root) / path), os.path.abspath(out_dir))
    url = quote(Path(rel).as_posix())
    if span is not None:
        url += f"#t={span[0]:.3f},{span[1]:.3f}"
    return url


def clip_media_url(root: str | os.PathLike, row: dict, out_dir: Path) -> str:
    """What the page shows of a clip: its photo, or its span of the source video (a media fragment)."""
    if row["kind"] == "image":
        return media_url(root, row["path"], out_dir)
    return media_url(root, row["path"], out_dir, (float(row["start_s"] or 0.0), float(row["end_s"] or 0.0)))


def build_report(data_dir: str | os.PathLike, out_dir: str | os.PathLike, lora_dir: str | os.PathLike,
                 thresholds: dict, cfg: ReportConfig = ReportConfig(), root: str | os.PathLike = ".") -> Path:
    """Write ``out_dir/index.html`` and its images; returns the page's path.

    ``thresholds``: the ``filter`` params (drawn on the histograms; missing keys draw no line).
    Clip paths in the tables are relative to ``root``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables, missing = load_tables(data_dir)
    view = None
    if tables["clips"] is not None:
        view = clip_view(tables["clips"], tables["scores"], tables["dataset"], tables["rejected"], tables["captions"])
    thumbs: dict[str, list[str]] = {}
    media: dict[str, str] = {}  # clip_id -> its span of the source, relative to the page (the clips that decode: they have thumbnails)
    if view is not None:
        rows = view.filter(pl.col("clip_status") == "ok").select(
            "clip_id", "kind", "path", "n_frames", "start_frame", "end_frame", "start_s", "end_s", "fps", "resampled",
            "source_frames").to_dicts()
        names = ensure_thumbs(rows, root, out_dir / "thumbs", cfg.thumb_width)
        thumbs = {cid: [f"thumbs/{n}" for n in ns] for cid, ns in names.items()}
        media = {r["clip_id"]: clip_media_url(root, r, out_dir) for r in rows if r["clip_id"] in names}
    hists, photo_hists, legend = [], [], []
    if tables["scores"] is not None:
        status = verdict_labels(view) if view is not None else {}
        made = score_histograms(tables["scores"], status, thresholds, out_dir / "plots", cfg.bins)
        hists = [(d.title, f"plots/{name}") for d, name in made if d.kind != "image"]
        photo_hists = [(d.title, f"plots/{name}") for d, name in made if d.kind == "image"]
        labels = plot_frame(tables["scores"], status)["verdict"].to_list()
        legend = [(label, color, labels.count(label)) for label, color in verdict_colors(labels).items() if label in labels]
    runs, problems, overlay = _runs(Path(lora_dir), out_dir, Path(data_dir) / "samples")
    page = ReportPage(
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        sources=tables["sources"], clips=view, histograms=hists, thumbs=thumbs, runs=runs, missing=missing,
        run_problems=problems, photo_histograms=photo_hists, histogram_legend=legend, media=media,
        loss_overlay=overlay,
    )
    index = out_dir / "index.html"
    write_text_atomic(index, render(page))
    log.info("report: %d sources, %d clips, %d histograms, %d runs -> %s",
             0 if tables["sources"] is None else tables["sources"].height, 0 if view is None else view.height,
             len(hists) + len(photo_hists), len(runs), index)
    return index
