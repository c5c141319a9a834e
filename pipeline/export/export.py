"""Export the kept, captioned clips in the folder layout musubi-tuner or diffusion-pipe read
(the logic behind ``vlp export``, whose command line is :mod:`pipeline.export.cli`).

Both trainers take a folder of media files with a caption ``.txt`` of the same stem beside
each, plus a dataset TOML. The export writes:

    DIR/video/<stem>.mp4 + <stem>.txt      kept video clips (one folder per frame rate when
                                           clips differ in rate: video_25fps/, video_16fps/ ...)
    DIR/image/<stem>.png + <stem>.txt      kept photos (one-frame clips)
    DIR/dataset.toml                       musubi-tuner dataset config or diffusion-pipe dataset.toml
    DIR/export.json                        what was written, so a re-export removes files it no longer lists

Only clips with an ``ok`` caption are exported; the others are logged with the reason.
A clip is a span of its source: its file is written from the span's frames
(:func:`pipeline.core.clip_writer.write_clip`, with ``ExportConfig.encoding``: the split params'
codec, crf, preset and pix_fmt when given, else libx264 crf 18 veryfast yuv420p), a photo as an
RGB PNG of the upright photo. A clip the split stage already wrote (``clip_file``,
``split.write_clips``) is copied, or symlinked with ``link=True``; a span has no file to link,
so ``link=True`` writes it. A re-export writes only what changed: ``export.json`` keeps the key of
each media file (clip id, content address, encoding), and a file whose key is unchanged stays.
Stems are ``<source stem>_<clip id prefix>``, so a file name still says where the clip came from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import av
import polars as pl
import tomli_w
from tqdm import tqdm

from pipeline.core import media as core_media
from pipeline.core.clip import ClipSpan
from pipeline.core.clip_writer import ClipWriteError, Encoding, write_clip
from pipeline.core.errors import one_line
from pipeline.core.fs import atomic_path, confined, sha256_json, write_json, write_text_atomic

log = logging.getLogger(__name__)

FORMATS = ("musubi", "diffusion-pipe")
CONFIG_NAME = "dataset.toml"
RECORD_NAME = "export.json"


@dataclass(frozen=True)
class ExportConfig:
    format: str  # "musubi" or "diffusion-pipe"
    link: bool = False  # symlink the split stage's clip files (clip_file) instead of copying them
    encoding: Encoding = field(default_factory=Encoding)  # how clip files are written from their spans
    resolution: tuple[int, int] = (832, 480)  # (width, height) training area (Wan 2.1 1.3B native: 832x480)
    frame_buckets: tuple[int, ...] = (17, 33, 49, 81)  # frame counts (4n+1 for Wan)
    frame_extraction: str = "full"  # musubi: head | chunk | slide | uniform | full
    batch_size: int = 1
    num_repeats: int = 1  # video datasets
    image_repeats: int = 1  # image datasets
    enable_bucket: bool = True
    min_ar: float = 0.5  # diffusion-pipe aspect-ratio buckets
    max_ar: float = 2.0
    num_ar_buckets: int = 7

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown export format {self.format!r}; one of {', '.join(FORMATS)}")
        bad = [f for f in self.frame_buckets if f < 1 or (f - 1) % 4]
        if bad:
            raise ValueError(f"frame buckets must be 4n+1 (Wan's VAE): {bad}")


# the columns of a dataset row that say where a clip's frames are (pipeline.core.clip.ClipSpan.from_row)
SPAN_COLUMNS = ("path", "kind", "start_frame", "end_frame", "fps", "resampled", "source_frames")


def _safe_stem(text: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePosixPath(text).stem).strip("._") or "clip"
    return stem[:60]


def _fps_label(fps: float) -> str:
    return f"{fps:g}".replace(".", "_") + "fps"


def plan_export(dataset: pl.DataFrame, captions: pl.DataFrame | None) -> tuple[list[dict], list[str]]:
    """Which files go where: one dict per exported clip, and one line per kept clip left out.

    Each dict: clip_id, kind, src (the source, as in the table), span (the row's span columns, for
    :meth:`ClipSpan.from_row`), sha256 (the clip's content address), clip_file (a clip file the split
    stage wrote, "" when none), subdir, name (file name: ``.mp4`` or ``.png``), caption, fps. Videos of
    one frame rate share ``video/``; several rates get one folder each.
    """
    skipped: list[str] = []
    if captions is None or captions.height == 0:
        return [], [f"{r['clip_id']}: no caption (run the caption stage)" for r in dataset.select("clip_id").to_dicts()]
    cap = {r["clip_id"]: r for r in captions.to_dicts()}
    video_rates = sorted({round(float(f), 3) for f, k in zip(dataset["fps"], dataset["kind"]) if k != "image"})
    plan = []
    for row in dataset.sort("source_path", "start_frame", "clip_id").to_dicts():
        c = cap.get(row["clip_id"])
        if c is None:
            skipped.append(f"{row['clip_id']}: no caption row")
            continue
        if c["status"] != "ok" or not (c["caption"] or "").strip():
            skipped.append(f"{row['clip_id']}: caption {c['status']}" + (f" ({c['reason']})" if c["reason"] else ""))
            continue
        kind = "image" if row["kind"] == "image" else "video"
        fps = round(float(row["fps"]), 3)
        subdir = "image" if kind == "image" else ("video" if len(video_rates) <= 1 else f"video_{_fps_label(fps)}")
        suffix = ".png" if kind == "image" else ".mp4"
        name = f"{_safe_stem(row['source_path'])}_{row['clip_id'][:12]}{suffix}"
        span = {k: row.get(k) for k in SPAN_COLUMNS}
        plan.append({"clip_id": row["clip_id"], "kind": kind, "src": row["path"], "span": span,
                     "sha256": row.get("sha256") or "", "clip_file": row.get("clip_file") or "", "subdir": subdir,
                     "name": name, "caption": c["caption"].strip(), "fps": fps, "caption_source": c["source"]})
    return plan, skipped


def _groups(plan: list[dict]) -> list[tuple[str, str, float]]:
    """(subdir, kind, fps) of every folder the plan fills, videos first."""
    seen = {(p["subdir"], p["kind"], p["fps"] if p["kind"] == "video" else 0.0) for p in plan}
    return sorted(seen, key=lambda g: (g[1] != "video", g[0]))


def musubi_config(plan: list[dict], out_dir: Path, cfg: ExportConfig) -> dict:
    """musubi-tuner dataset config (``--dataset_config``): ``[general]`` and one ``[[datasets]]`` per folder."""
    w, h = cfg.resolution
    datasets = []
    for subdir, kind, fps in _groups(plan):
        d: dict = {}
        if kind == "image":
            d["image_directory"] = str(out_dir / subdir)
            d["num_repeats"] = cfg.image_repeats
        else:
            d["video_directory"] = str(out_dir / subdir)
            d["num_repeats"] = cfg.num_repeats
            d["frame_extraction"] = cfg.frame_extraction
            if cfg.frame_extraction == "full":
                d["max_frames"] = max(cfg.frame_buckets)
            else:
                d["target_frames"] = list(cfg.frame_buckets)
            # musubi drops frames to the model's rate (16 for Wan) when it knows the clips' rate.
            d["source_fps"] = float(fps)
        d["cache_directory"] = str(out_dir / "cache" / subdir)  # musubi needs one cache folder per dataset
        datasets.append(d)
    return {
        "general": {"resolution": [w, h], "caption_extension": ".txt", "batch_size": cfg.batch_size,
                    "enable_bucket": cfg.enable_bucket, "bucket_no_upscale": False},
        "datasets": datasets,
    }


def diffusion_pipe_config(plan: list[dict], out_dir: Path, cfg: ExportConfig) -> dict:
    """diffusion-pipe ``dataset.toml``: area, aspect-ratio and frame buckets, one ``[[directory]]`` per folder."""
    w, h = cfg.resolution
    return {
        "resolutions": [[w, h]],
        "enable_ar_bucket": cfg.enable_bucket,
        "min_ar": cfg.min_ar,
        "max_ar": cfg.max_ar,
        "num_ar_buckets": cfg.num_ar_buckets,
        "frame_buckets": sorted({1, *cfg.frame_buckets}),  # 1 = the image bucket
        "directory": [
            {"path": str(out_dir / subdir), "num_repeats": cfg.image_repeats if kind == "image" else cfg.num_repeats}
            for subdir, kind, _ in _groups(plan)
        ],
    }


def _drop_none(v):
    """``v`` without the ``None`` values of its tables (TOML has no null)."""
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_drop_none(x) for x in v]
    return v


def dumps_toml(doc: dict, header: str = "") -> str:
    """``doc`` as TOML (``tomli_w``), ``header`` lines on top as ``#`` comments; ``None`` values are left out.

    Floats keep their decimal point (``30.0``): musubi-tuner reads ``source_fps = 30`` as an int.
    """
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comments + tomli_w.dumps(_drop_none(doc))


def media_key(p: dict, cfg: ExportConfig, clip_file: Path | None) -> str:
    """What an exported media file is made of: the clip (id, content address) and how it is made
    (the encoding, or the split stage's clip file copied or linked). The same key: the same file."""
    how: dict = {"link" if cfg.link else "copy": str(clip_file)} if clip_file is not None else (
        {"png": True} if p["kind"] == "image" else {"encoding": cfg.encoding.as_key(), "fps": p["span"]["fps"]})
    return sha256_json({"clip_id": p["clip_id"], "sha256": p["sha256"], **how})[:32]


def _up_to_date(dst: Path, key: str, previous_keys: dict[str, str], rel: str, link_to: Path | None) -> bool:
    if previous_keys.get(rel) != key:
        return False
    if link_to is not None:
        return dst.is_symlink() and dst.resolve() == link_to.resolve()
    return dst.is_file() and not dst.is_symlink()


def _place(p: dict, dst: Path, cfg: ExportConfig, root: Path, clip_file: Path | None) -> None:
    """Write (or link) the media file of one planned clip at ``dst``."""
    if clip_file is not None:
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if cfg.link:
            dst.symlink_to(clip_file.resolve())
        else:
            with atomic_path(dst) as tmp:
                shutil.copyfile(clip_file, tmp)
        return
    span = ClipSpan.from_row(p["span"], root)
    if not Path(span.path).exists():
        raise FileNotFoundError(f"{span.path}: source file missing")
    if dst.is_symlink():  # a link of an earlier --link export: written over, never through
        dst.unlink()
    write_clip(span, dst, cfg.encoding, fps=float(p["span"]["fps"] or 0.0))


def write_export(plan: list[dict], out_dir: str | os.PathLike, cfg: ExportConfig,
                 root: str | os.PathLike = ".") -> dict:
    """Write the media files (from their spans, or the split stage's clip files), captions, dataset
    TOML and ``export.json``; returns the record. A media file whose key (``media_key``) is the one
    the previous export recorded is left as it is."""
    out_dir = Path(out_dir).resolve()
    root = Path(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous: set[str] = set()
    previous_keys: dict[str, str] = {}
    record_path = out_dir / RECORD_NAME
    if record_path.exists():
        old = json.loads(record_path.read_text(encoding="utf-8"))
        previous = set(old.get("files", []))
        previous_keys = dict(old.get("keys", {}))
    written, missing, kept = [], [], []
    keys: dict[str, str] = {}
    made = 0
    for p in tqdm(plan, desc=f"export {cfg.format}", unit="clip", disable=len(plan) < 20):
        try:
            media = confined(out_dir, p["subdir"], p["name"])
        except ValueError as e:
            missing.append(f"{e} ({p['clip_id']} not exported)")
            continue
        clip_file = root / p["clip_file"] if p["clip_file"] else None
        if clip_file is not None and not clip_file.is_file():
            clip_file = None  # a clip file that is gone: written from its span instead
        key = media_key(p, cfg, clip_file)
        rel = str(media.relative_to(out_dir))
        media.parent.mkdir(parents=True, exist_ok=True)
        if not _up_to_date(media, key, previous_keys, rel, clip_file if cfg.link else None):
            try:
                _place(p, media, cfg, root, clip_file)
            except (OSError, ClipWriteError, core_media.MediaReadError, av.FFmpegError) as e:
                missing.append(f"{one_line(e, with_type=False)} ({p['clip_id']} not exported)")
                continue
            made += 1
        caption = media.with_suffix(".txt")
        write_text_atomic(caption, p["caption"] + "\n")
        written += [rel, str(caption.relative_to(out_dir))]
        keys[rel] = key
        kept.append(p)
    log.info("export: %d media files written, %d unchanged", made, len(kept) - made)
    for line in missing:
        log.warning(line)
    doc = musubi_config(kept, out_dir, cfg) if cfg.format == "musubi" else diffusion_pipe_config(kept, out_dir, cfg)
    tool = "musubi-tuner (--dataset_config)" if cfg.format == "musubi" else "diffusion-pipe (dataset = ... in the run config)"
    header = (f"Dataset config for {tool}, written by `vlp export --format {cfg.format}`.\n"
              f"{len(kept)} kept clips with ok captions; captions are the .txt files beside each clip.")
    write_text_atomic(out_dir / CONFIG_NAME, dumps_toml(doc, header=header))
    for rel in sorted(previous - set(written)):
        stale = out_dir / rel
        if stale.is_symlink() or stale.exists():
            stale.unlink()
            log.info("removed %s (no longer exported)", stale)
    record = {"format": cfg.format, "link": cfg.link, "config": CONFIG_NAME, "clips": [p["clip_id"] for p in kept],
              "files": written, "missing": missing, "keys": keys, "encoding": cfg.encoding.as_key()}
    write_json(record_path, record)
    return record
