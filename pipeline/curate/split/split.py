"""Split sources into clips: scene detection, span planning, frame-accurate cuts.

Incremental: scene detection results are kept per source and detector settings, and a
clip already on disk whose bytes still match its recorded sha256 is kept as it is, so a
re-run after adding one video only works on that video. The table of the last run is kept
inside the clips folder (``INDEX``), where DVC does not delete it before the stage runs.

Every ``ok`` source ends with at least one row: its clips, or one ``skipped`` row saying why
it gave none (too short, one frame, every scene shorter than ``min_s``). A source whose consent
was withdrawn (its record in ``sources.yaml``) is not cut: it gets one ``skipped`` row, ``consent
withdrawn``, and the files of clips cut from it before are removed with the other stale clips.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

import polars as pl
from tqdm import tqdm

from pipeline.core import schemas
from pipeline.core.consent import WITHDRAWN, WITHDRAWN_REASON
from pipeline.core.errors import one_line
from pipeline.core.fs import atomic_path, remove_leftovers, sha256_file, sha256_json, write_text_atomic
from pipeline.core.images import open_image_rgb
from pipeline.curate.probe.files import video_timeline
from pipeline.curate.split.config import SplitConfig
from pipeline.curate.split.cutting import CutError, cut_clip, finished_clip, needs_even_crop
from pipeline.curate.split.scenes import detect_scenes, make_detector
from pipeline.curate.split.spans import Span, plan_spans

if TYPE_CHECKING:
    from pipeline.core.ray_engine import RayEngine

log = logging.getLogger(__name__)

SCENE_CACHE = ".scenes"
INDEX = ".index.parquet"  # the clips table of the last run, for reuse


def make_clip_id(source_id: str, start: int, end: int, cfg: SplitConfig, rotation: int, kind: str = "video") -> str:
    """Deterministic id from the source, the span and every param that changes the clip's pixels."""
    return sha256_json(
        {
            "source_id": source_id,
            "kind": kind,
            "span": [start, end],
            "fps": cfg.fps if kind == "video" else None,
            "rotation": rotation,
            "encoding": cfg.encoding.as_key() if kind == "video" else "png-rgb",
        }
    )[:16]


def _row(source: dict, cid: str, span: Span, times: list[float], path: Path, cfg: SplitConfig) -> dict:
    step = 1.0 / source["fps"] if source["fps"] else 0.0
    end_s = times[span.end] if span.end < len(times) else (times[-1] + step if times else 0.0)
    return {
        "clip_id": cid,
        "source_id": source["source_id"],
        "source_path": source["path"],
        "kind": source["kind"],
        "scene_index": span.scene_index,
        "start_frame": span.start,
        "end_frame": span.end,
        "start_s": times[span.start] if times else 0.0,
        "end_s": end_s,
        "n_frames": 0,
        "fps": source["fps"],
        "resampled": bool(cfg.fps) and source["kind"] == "video",
        "rotation_applied": source["rotation"],
        "width": 0,
        "height": 0,
        "path": path.as_posix(),
        "sha256": "",
        "status": "ok",
        "reason": "",
        "note": "",
    }


def error_row(source: dict, reason: str, status: str = "error") -> dict:
    """A clips row recording that a whole source failed to split (``error``) or gave no clip (``skipped``)."""
    row = _row(source, sha256_json({"source_id": source["source_id"], status: True})[:16],
               Span(-1, 0, 0), [], Path(""), SplitConfig())
    row.update(status=status, reason=reason, resampled=False)
    return row


def no_clip_reason(n_frames: int, fps: float, cfg: SplitConfig, dropped: list[str]) -> str:
    """Why a source gave no clip, in one line."""
    seconds = n_frames / fps if fps else 0.0
    if n_frames < 2 or seconds < cfg.min_s:
        return f"no clip: {n_frames} frame(s), {seconds:.2f} s, shorter than split.min_s {cfg.min_s:g} s"
    return f"no clip: every scene shorter than split.min_s {cfg.min_s:g} s after trimming ({len(dropped)} scene(s))"


def _scenes_cached(src: Path, source: dict, clips_dir: Path, cfg: SplitConfig) -> list[tuple[int, int]]:
    cache = clips_dir / SCENE_CACHE / f"{source['source_id']}-{cfg.detector_key()}.json"
    if cache.exists():
        return [tuple(s) for s in json.loads(cache.read_text())]
    detector = make_detector(cfg.detector, cfg.min_scene_len, cfg.detector_options)
    scenes = detect_scenes(src, detector)
    write_text_atomic(cache, json.dumps(scenes))
    return scenes


def _reusable(prev: dict | None, path: Path) -> TypeGuard[dict]:
    """True when the last run's row ``prev`` is an ok clip whose file at ``path`` is still the one it cut."""
    if not prev:
        return False
    return prev["status"] == "ok" and path.exists() and sha256_file(path) == prev["sha256"]


def split_image(source: dict, raw_root: Path, clips_dir: Path, cfg: SplitConfig, previous: dict[str, dict]) -> list[dict]:
    """An image source becomes one one-frame clip: an upright RGB PNG."""
    cid = make_clip_id(source["source_id"], 0, 1, cfg, source["rotation"], kind="image")
    dst = clips_dir / f"{cid}.png"
    prev = previous.get(cid)
    if _reusable(prev, dst):
        return [prev]
    row = _row(source, cid, Span(0, 0, 1), [0.0], dst, cfg)
    upright = open_image_rgb(raw_root / source["path"])
    with atomic_path(dst) as tmp:
        upright.save(tmp, format="PNG")
    row.update(n_frames=1, fps=0.0, end_s=0.0, width=upright.width, height=upright.height, sha256=sha256_file(dst))
    return [row]


def split_source(
    source: dict, raw_root: str | os.PathLike, clips_dir: str | os.PathLike, cfg: SplitConfig,
    previous: dict[str, dict] | None = None,
) -> tuple[list[dict], list[str]]:
    """Clip rows for one ``ok`` source, and log lines (dropped scenes, failed clips).

    A clip that fails to cut becomes an ``error`` row naming the clip; the other clips go on.
    """
    raw_root, clips_dir = Path(raw_root), Path(clips_dir)
    previous = previous or {}
    notes: list[str] = []
    if source["kind"] == "image":
        return split_image(source, raw_root, clips_dir, cfg, previous), notes
    src = raw_root / source["path"]
    times, offset = video_timeline(src)
    n = len(times)
    if n < 2:  # nothing to detect scenes in
        return [error_row(source, no_clip_reason(n, source["fps"], cfg, []), "skipped")], notes
    scenes = _scenes_cached(src, source, clips_dir, cfg)
    spans, dropped = plan_spans(scenes, n, source["fps"], cfg.min_s, cfg.max_s, cfg.trim_frames)
    notes += [f"{source['path']}: skipped {d}" for d in dropped]
    if not spans:
        return [error_row(source, no_clip_reason(n, source["fps"], cfg, dropped), "skipped")], notes
    even = needs_even_crop(source["width"], source["height"], cfg.encoding)
    note = ""
    if even:
        w, h = source["width"], source["height"]
        note = f"cropped {w}x{h} -> {w - w % 2}x{h - h % 2} ({cfg.encoding.pix_fmt} needs even sizes)"
    rows = []
    for span in spans:
        cid = make_clip_id(source["source_id"], span.start, span.end, cfg, source["rotation"])
        dst = clips_dir / f"{cid}.mp4"
        prev = previous.get(cid)
        if _reusable(prev, dst):
            rows.append(prev)
            continue
        row = _row(source, cid, span, times, dst, cfg)
        if prev is None and (done := finished_clip(dst, times, span.start, span.end, cfg.fps)):
            got, w, h, fps = done  # cut by a run that was killed before it wrote the index
            row.update(n_frames=got, width=w, height=h, fps=fps, sha256=sha256_file(dst), note=note)
            rows.append(row)
            continue
        try:
            got, w, h, fps = cut_clip(src, dst, times, span.start, span.end, cfg.encoding, cfg.fps, clip_id=cid,
                                      offset_s=offset, even_crop=even, rotation=source["rotation"])
            row.update(n_frames=got, width=w, height=h, fps=fps, sha256=sha256_file(dst), note=note)
        except CutError as exc:
            row.update(status="error", reason=str(exc))
            notes.append(f"{source['path']}: {exc}")
        rows.append(row)
    return rows, notes


def read_index(clips_dir: Path) -> pl.DataFrame | None:
    """The clips table of the last run in ``clips_dir`` (None when missing or unreadable)."""
    try:
        return schemas.read_table(clips_dir / INDEX, "clips")
    except (OSError, ValueError) as e:
        if (clips_dir / INDEX).exists():
            log.warning("%s: unreadable (%s); every clip is cut again", clips_dir / INDEX, one_line(e, with_type=False))
        return None


def _split_one(args) -> tuple[str, list[dict], list[str]]:
    source, raw_root, clips_dir, cfg, previous = args
    try:
        rows, notes = split_source(source, raw_root, clips_dir, cfg, previous)
    except Exception as exc:  # noqa: BLE001 - one bad source must not stop the batch
        reason = f"split failed: {one_line(exc)}"
        return source["path"], [error_row(source, reason)], [f"{source['path']}: {reason}"]
    return source["path"], rows, notes


def split_sources(
    sources: pl.DataFrame,
    raw_root: str | os.PathLike,
    clips_dir: str | os.PathLike,
    cfg: SplitConfig,
    previous: pl.DataFrame | None = None,
    jobs: int = 1,
    prune: bool = True,
    ray: RayEngine | None = None,
) -> pl.DataFrame:
    """Split every ``ok`` source; return the clips table (sorted by source path and start frame).

    With ``prune``, clip files in ``clips_dir`` that the new table does not name are removed.
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
    tasks = [(s, str(raw_root), str(clips_dir), cfg, prev_by_source.get(s["source_id"], {})) for s in ok]
    rows: list[dict] = [error_row(s, WITHDRAWN_REASON, "skipped") for s in withdrawn]
    for s in withdrawn:
        log.info("split: %s not cut: %s%s", s["path"], WITHDRAWN_REASON,
                 f" on {s['withdrawn_on']}" if s.get("withdrawn_on") else "")
    parallel = jobs > 1 and len(tasks) > 1
    with contextlib.ExitStack() as stack:
        if ray is not None:
            results = ray.map_items(_split_one, tasks, name="split")
        elif parallel:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=min(jobs, len(tasks))))
            results = (f.result() for f in as_completed([pool.submit(_split_one, t) for t in tasks]))
        else:
            results = (_split_one(t) for t in tasks)
        for _, source_rows, notes in tqdm(results, total=len(tasks), desc="split", unit="video"):
            rows += source_rows
            for line in notes:
                log.warning(line)
    table = schemas.frame("clips", rows).sort(["source_path", "start_frame", "clip_id"])
    schemas.write_table(table, clips_dir / INDEX, "clips")
    if prune:
        keep = {Path(p).name for p in table["path"].to_list() if p}
        for f in clips_dir.iterdir():
            if f.is_file() and not f.name.startswith(".") and f.name not in keep:
                log.info("split: removing stale clip %s", f)
                f.unlink()
    return table
