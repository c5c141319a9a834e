"""Split sources into clips: spans of each source, from one decode of it.

Each video is decoded once (:mod:`pipeline.curate.measure.scan`): PySceneDetect's detector sees
every frame, and every sampled frame is measured for the score stage. The scenes become spans
(trimmed at cuts, cut to ``max_s``); a clip is such a span, read from the source by every later
stage (:class:`pipeline.core.clip.ClipSpan`), so nothing is re-encoded. With
``split.write_clips`` each clip is also written as a file (:mod:`pipeline.core.clip_writer`).

Incremental: the scenes (per source and detector settings) and the measurements (per source and
measurement settings) are kept in the clips folder, so a re-run after adding one video decodes only
that video, and a re-run after changing the detector decodes each source once more without
measuring it again. The table of the last run is kept there too (``INDEX``), where DVC does not
delete it before the stage runs.

Every ``ok`` source ends with at least one row: its clips, or one ``skipped`` row saying why it gave
none (too short, one frame, every scene shorter than ``min_s``). A source whose consent was
withdrawn (its record in ``sources.yaml``) is not decoded: it gets one ``skipped`` row, ``consent
withdrawn``, and its cached scenes, measurements and clip files are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from tqdm import tqdm

from pipeline.core import media, schemas
from pipeline.core.clip import ClipSpan, span_end_time, span_indices
from pipeline.core.clip_writer import write_clip
from pipeline.core.consent import WITHDRAWN, WITHDRAWN_REASON
from pipeline.core.errors import one_line
from pipeline.core.fs import remove_leftovers, sha256_json, write_text_atomic
from pipeline.core.images import open_image_rgb
from pipeline.curate.measure.config import MEASURE_CACHE, MeasureConfig, measure_file
from pipeline.curate.measure.scan import measure_image, scan_video
from pipeline.curate.split.config import SplitConfig
from pipeline.curate.split.scenes import make_detector
from pipeline.curate.split.spans import Span, plan_spans

if TYPE_CHECKING:
    from pipeline.core.ray_engine import RayEngine

log = logging.getLogger(__name__)

SCENE_CACHE = ".scenes"
INDEX = ".index.parquet"  # the clips table of the last run, for reuse


def clip_key(source_id: str, start: int, end: int, cfg: SplitConfig, rotation: int, kind: str = "video") -> dict:
    """Everything that decides a clip's pixels: its source's bytes (``source_id`` is their sha256),
    the span, the resampling rate and the rotation. A photo's key is the one its PNG clip file had,
    whose pixels (the upright photo) are the same, so its id did not change."""
    return {
        "source_id": source_id,
        "kind": kind,
        "span": [start, end],
        "fps": cfg.fps if kind == "video" else None,
        "rotation": rotation,
        "encoding": "source" if kind == "video" else "png-rgb",
    }


def make_clip_id(source_id: str, start: int, end: int, cfg: SplitConfig, rotation: int, kind: str = "video") -> str:
    """Deterministic id from the source, the span and every param that changes the clip's pixels."""
    return sha256_json(clip_key(source_id, start, end, cfg, rotation, kind))[:16]


def source_file(raw_root: str | os.PathLike, rel: str) -> str:
    """The path a clip's frames are read from: its source, relative to the working directory (the
    repository root) when it lies inside it."""
    p = Path(raw_root) / rel
    if p.is_absolute():
        with contextlib.suppress(ValueError):
            p = p.relative_to(Path.cwd())
    return p.as_posix()


def _row(source: dict, raw_root: str | os.PathLike, span: Span, times: tuple[float, ...] | list[float],
         cfg: SplitConfig, rotation: int = 0, kind: str = "video") -> dict:
    key = clip_key(source["source_id"], span.start, span.end, cfg, rotation, kind)
    sha = sha256_json(key)
    end_s = span_end_time(times, span.end) if times else 0.0
    return {
        "clip_id": sha[:16],
        "source_id": source["source_id"],
        "source_path": source["path"],
        "kind": source["kind"],
        "scene_index": span.scene_index,
        "start_frame": span.start,
        "end_frame": span.end,
        "start_s": float(times[span.start]) if times else 0.0,
        "end_s": end_s,
        "n_frames": 0,
        "fps": source["fps"],
        "resampled": bool(cfg.fps) and source["kind"] == "video",
        "rotation_applied": rotation,
        "width": 0,
        "height": 0,
        "path": source_file(raw_root, source["path"]) if raw_root is not None else "",
        "source_frames": len(times),
        "sha256": sha,
        "clip_file": "",
        "status": "ok",
        "reason": "",
        "note": "",
    }


def error_row(source: dict, reason: str, status: str = "error") -> dict:
    """A clips row recording that a whole source failed to split (``error``) or gave no clip (``skipped``)."""
    row = _row(source, None, Span(-1, 0, 0), [], SplitConfig())  # type: ignore[arg-type]
    row.update(clip_id=sha256_json({"source_id": source["source_id"], status: True})[:16], status=status,
               reason=reason, resampled=False, sha256="", source_frames=0)
    return row


def no_clip_reason(n_frames: int, fps: float, cfg: SplitConfig, dropped: list[str]) -> str:
    """Why a source gave no clip, in one line."""
    seconds = n_frames / fps if fps else 0.0
    if n_frames < 2 or seconds < cfg.min_s:
        return f"no clip: {n_frames} frame(s), {seconds:.2f} s, shorter than split.min_s {cfg.min_s:g} s"
    return f"no clip: every scene shorter than split.min_s {cfg.min_s:g} s after trimming ({len(dropped)} scene(s))"


def _write_clip_file(row: dict, clips_dir: Path, cfg: SplitConfig, previous: dict[str, dict]) -> None:
    """``split.write_clips``: the clip as a file too. A clip file that cannot be written is a note on
    the row (the clip itself, a span of the source, is fine)."""
    suffix = ".png" if row["kind"] == "image" else ".mp4"
    dst = clips_dir / f"{row['clip_id']}{suffix}"
    rel = source_file(clips_dir, dst.name)
    prev = previous.get(row["clip_id"])
    if prev and prev.get("clip_file") == rel and dst.is_file():
        row["clip_file"] = rel
        return
    try:
        write_clip(ClipSpan.from_row(row), dst, cfg.encoding, float(row["fps"] or 0.0))
        row["clip_file"] = rel
    except Exception as exc:  # noqa: BLE001 - the span stays usable without its file
        row["note"] = f"clip file not written: {one_line(exc, with_type=False)}"


def split_image(source: dict, raw_root: Path, clips_dir: Path, cfg: SplitConfig, measure: MeasureConfig,
                previous: dict[str, dict], out: dict[str, list[dict]]) -> list[dict]:
    """An image source is one one-frame clip: the upright photo; measured here for the score stage."""
    # the rotation is part of the id, as it was when photos became PNG clip files
    row = _row(source, raw_root, Span(0, 0, 1), [0.0], cfg, int(source.get("rotation") or 0), kind="image")
    upright = open_image_rgb(raw_root / source["path"])
    row.update(n_frames=1, fps=0.0, end_s=0.0, width=upright.width, height=upright.height, source_frames=0)
    cache = measure_file(clips_dir, source["source_id"], measure)
    if not cache.exists():
        import numpy as np

        out[str(cache)] = measure_image(np.asarray(upright), measure)
    if cfg.write_clips:
        _write_clip_file(row, clips_dir, cfg, previous)
    return [row]


class _ProgressLog:
    """Logs a long video's decode every ``every_s`` seconds (the stage's bar counts whole videos; this
    runs in the worker that decodes it)."""

    def __init__(self, name: str, total: int, every_s: float = 30.0):
        self.name, self.total, self.every_s = name, total, every_s
        self.done = 0
        self.start = self.logged = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.logged >= self.every_s:
            self.logged = now
            log.info("split: %s: %d of %d frames decoded (%.0f frames/s)", self.name, self.done, self.total,
                     self.done / max(now - self.start, 1e-9))


def _scan(src: Path, source: dict, rotation: int, clips_dir: Path, cfg: SplitConfig,
          measure: MeasureConfig, out: dict[str, list[dict]], threads: bool = True) -> tuple[list[tuple[int, int]], list[str]]:
    """The source's scenes, decoding it once for what is not cached yet (scenes, measurements: put
    in ``out`` under their cache file, for the parent process to write)."""
    scene_cache = clips_dir / SCENE_CACHE / f"{source['source_id']}-{cfg.detector_key()}.json"
    measure_cache = measure_file(clips_dir, source["source_id"], measure)
    scenes = [tuple(s) for s in json.loads(scene_cache.read_text())] if scene_cache.exists() else None
    notes: list[str] = []
    if scenes is not None and measure_cache.exists():
        return scenes, notes
    detector = make_detector(cfg.detector, cfg.min_scene_len, cfg.detector_options) if scenes is None else None
    t = time.perf_counter()
    scan = scan_video(src, rotation, detector, None if measure_cache.exists() else measure,
                      progress=_ProgressLog(source["path"], int(source.get("n_frames") or 0)), threads=threads)
    seconds = time.perf_counter() - t
    log.info("split: %s: decoded %d frames in %.1f s (%.0f frames/s)%s", source["path"], scan.decoded, seconds,
             scan.decoded / max(seconds, 1e-9), "" if detector else " (scenes cached)")
    if scan.measures is not None:
        out[str(measure_cache)] = scan.measures
    if scan.scenes is not None:
        write_text_atomic(scene_cache, json.dumps(scan.scenes))
        scenes = scan.scenes
    return scenes or [], notes


def split_source(
    source: dict, raw_root: str | os.PathLike, clips_dir: str | os.PathLike, cfg: SplitConfig,
    previous: dict[str, dict] | None = None, measure: MeasureConfig | None = None,
    out: dict[str, list[dict]] | None = None, threads: bool = True,
) -> tuple[list[dict], list[str]]:
    """Clip rows for one ``ok`` source, and log lines (dropped scenes, clip files not written).

    New measurements go to ``out`` (cache file -> rows) when given, else are written here. No
    polars in here: it runs in forked workers (see ``Scan.measures``). ``threads``: decode with
    threads of its own (off when one source a core is split at once)."""
    raw_root, clips_dir = Path(raw_root), Path(clips_dir)
    previous = previous or {}
    measure = measure or MeasureConfig()
    pending: dict[str, list[dict]] = {} if out is None else out
    try:
        if source["kind"] == "image":
            return split_image(source, raw_root, clips_dir, cfg, measure, previous, pending), []
        return _split_video(source, raw_root, clips_dir, cfg, previous, measure, pending, threads)
    finally:
        if out is None:
            write_measures(pending)


def write_measures(pending: dict[str, list[dict]]) -> None:
    """Write measurement rows to their cache files (in the parent process: polars)."""
    for path, rows in pending.items():
        schemas.write_table(schemas.frame("measures", rows), path, "measures")


def _split_video(source: dict, raw_root: Path, clips_dir: Path, cfg: SplitConfig, previous: dict[str, dict],
                 measure: MeasureConfig, out: dict[str, list[dict]], threads: bool = True) -> tuple[list[dict], list[str]]:
    src = raw_root / source["path"]
    info = media.video_info(src)
    times = info.times
    n = len(times)
    if n < 2:  # nothing to detect scenes in
        return [error_row(source, no_clip_reason(n, source["fps"], cfg, []), "skipped")], []
    scenes, notes = _scan(src, source, info.rotation, clips_dir, cfg, measure, out, threads)
    spans, dropped = plan_spans(scenes, n, source["fps"], cfg.min_s, cfg.max_s, cfg.trim_frames)
    notes += [f"{source['path']}: skipped {d}" for d in dropped]
    if not spans:
        return [error_row(source, no_clip_reason(n, source["fps"], cfg, dropped), "skipped")], notes
    turned = info.rotation in (90, 270)
    width, height = (info.height, info.width) if turned else (info.width, info.height)
    rows = []
    for span in spans:
        row = _row(source, raw_root, span, times, cfg, info.rotation)
        row.update(n_frames=len(span_indices(times, span.start, span.end, cfg.fps)), width=width, height=height,
                   fps=float(cfg.fps) if cfg.fps else source["fps"])
        if cfg.write_clips:
            _write_clip_file(row, clips_dir, cfg, previous)
            if row["note"]:
                notes.append(f"{source['path']}: clip {row['clip_id']}: {row['note']}")
        rows.append(row)
    return rows, notes


def read_index(clips_dir: Path) -> pl.DataFrame | None:
    """The clips table of the last run in ``clips_dir`` (None when missing or unreadable)."""
    try:
        return schemas.read_table(clips_dir / INDEX, "clips")
    except (OSError, ValueError) as e:
        if (clips_dir / INDEX).exists():
            log.warning("%s: unreadable (%s); clip files are written again", clips_dir / INDEX, one_line(e, with_type=False))
        return None


def _split_one(args) -> tuple[str, list[dict], list[str], dict[str, list[dict]]]:
    source, raw_root, clips_dir, cfg, previous, measure, threads = args
    out: dict[str, list[dict]] = {}
    try:
        rows, notes = split_source(source, raw_root, clips_dir, cfg, previous, measure, out, threads)
    except Exception as exc:  # noqa: BLE001 - one bad source must not stop the batch
        reason = f"split failed: {one_line(exc)}"
        return source["path"], [error_row(source, reason)], [f"{source['path']}: {reason}"], {}
    return source["path"], rows, notes, out


def split_sources(
    sources: pl.DataFrame,
    raw_root: str | os.PathLike,
    clips_dir: str | os.PathLike,
    cfg: SplitConfig,
    measure: MeasureConfig | None = None,
    previous: pl.DataFrame | None = None,
    jobs: int = 1,
    prune: bool = True,
    ray: RayEngine | None = None,
) -> pl.DataFrame:
    """Split every ``ok`` source; return the clips table (sorted by source path and start frame).

    ``measure``: what each video's one decode measures for the score stage (kept in ``clips_dir``).
    With ``prune``, clip files in ``clips_dir`` that the new table does not name are removed, and so
    are the cached scenes and measurements of sources no longer split (gone, or withdrawn).
    With ``ray``, the sources are split as Ray tasks (one a source, the same function) instead of
    ``jobs`` local processes.
    """
    clips_dir = Path(clips_dir)
    clips_dir.mkdir(parents=True, exist_ok=True)
    for leftover in remove_leftovers(clips_dir):
        log.info("split: removed %s (left by a killed run)", leftover)
    if previous is None:
        previous = read_index(clips_dir)
    ok = sources.filter(pl.col("status") == "ok").to_dicts()
    withdrawn = [s for s in ok if s.get("consent") == WITHDRAWN]
    ok = [s for s in ok if s.get("consent") != WITHDRAWN]
    prev_by_source: dict[str, dict[str, dict]] = {}
    if previous is not None and previous.height:
        for r in previous.to_dicts():
            prev_by_source.setdefault(r["source_id"], {})[r["clip_id"]] = r
    measure = measure or MeasureConfig()
    ok.sort(key=lambda s: -int(s.get("n_frames") or 0))  # the longest first: parallel workers end together
    parallel = jobs > 1 and len(ok) > 1
    # one source a core: each decodes without threads of its own (they would only compete for the cores)
    threads = ray is None and not parallel
    tasks = [(s, str(raw_root), str(clips_dir), cfg, prev_by_source.get(s["source_id"], {}), measure, threads)
             for s in ok]
    rows: list[dict] = [error_row(s, WITHDRAWN_REASON, "skipped") for s in withdrawn]
    for s in withdrawn:
        log.info("split: %s not split: %s%s", s["path"], WITHDRAWN_REASON,
                 f" on {s['withdrawn_on']}" if s.get("withdrawn_on") else "")
    with contextlib.ExitStack() as stack:
        if ray is not None:
            results = ray.map_items(_split_one, tasks, name="split")
        elif parallel:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=min(jobs, len(tasks))))
            results = (f.result() for f in as_completed([pool.submit(_split_one, t) for t in tasks]))
        else:
            results = (_split_one(t) for t in tasks)
        for _, source_rows, notes, measured in tqdm(results, total=len(tasks), desc="split", unit="video"):
            write_measures(measured)
            rows += source_rows
            for line in notes:
                log.warning(line)
    table = schemas.frame("clips", rows).sort(["source_path", "start_frame", "clip_id"])
    schemas.write_table(table, clips_dir / INDEX, "clips")
    if prune:
        _prune(clips_dir, table, {s["source_id"] for s in ok})
    return table


def _prune(clips_dir: Path, table: pl.DataFrame, split_ids: set[str]) -> None:
    """Remove clip files the table does not name, and the caches of sources not split this time."""
    keep = {Path(p).name for p in table["clip_file"].to_list() if p}
    for f in clips_dir.iterdir():
        if f.is_file() and not f.name.startswith(".") and f.name not in keep:
            log.info("split: removing stale clip file %s", f)
            f.unlink()
    for cache in (SCENE_CACHE, MEASURE_CACHE):
        folder = clips_dir / cache
        for f in folder.iterdir() if folder.is_dir() else ():
            if f.is_file() and f.name.split("-", 1)[0] not in split_ids:
                log.info("split: removing %s (its source is no longer split)", f)
                f.unlink()
