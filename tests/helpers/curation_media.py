"""Media for the score and filter tests: real sample footage and edited copies of it (blurred,
darkened, letterboxed, resized, held still, panned), each measured as its own source the way the
split stage measures a source (one decode, ``data/clips/.measure``), plus a clips table whose
rows span the whole of each file."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import polars as pl

from pipeline.core import media as core_media
from pipeline.core import schemas
from pipeline.curate.measure.config import MeasureConfig, measure_file
from pipeline.curate.measure.scan import measure_image, scan_video
from pipeline.curate.score.config import ScoreConfig
from tests.helpers.synthetic_media import decode_all, map_frames, panning, write_video

LETTERBOX = 0.125  # bar height on each of top and bottom, as a fraction of the frame height
PILLARBOX = 0.15  # bar width on each of left and right
PAN_PX = 1  # pan speed of the panning clip in pixels per frame at 256x144, 25 fps
CLIPS = "clips"  # the clips folder under a test root: the media files and the measurements (.measure)


def clips_dir(root: Path) -> Path:
    """The folder ``score_clips`` reads the measurements from."""
    return Path(root) / CLIPS


def letterbox(f: np.ndarray) -> np.ndarray:
    g = f.copy()
    b = int(round(f.shape[0] * LETTERBOX))
    g[:b] = 0
    g[f.shape[0] - b :] = 0
    return g


def pillarbox(f: np.ndarray) -> np.ndarray:
    g = f.copy()
    b = int(round(f.shape[1] * PILLARBOX))
    g[:, :b] = 0
    g[:, f.shape[1] - b :] = 0
    return g


def make_media(root: Path, carphone: Path, bunny: Path) -> dict[str, tuple[str, str]]:
    """Write the test media under ``root/clips``; return {name: (path relative to root, kind)}."""
    clips = clips_dir(root)
    clips.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[str, str]] = {}

    def add(name: str, path: Path, kind: str = "video") -> None:
        out[name] = (path.relative_to(root).as_posix(), kind)

    shutil.copyfile(carphone, clips / "carphone.mp4")
    add("carphone", clips / "carphone.mp4")
    shutil.copyfile(carphone, clips / "carphone_copy.mp4")
    add("carphone_copy", clips / "carphone_copy.mp4")
    add("blurred", map_frames(carphone, clips / "blurred.mp4", lambda f: cv2.GaussianBlur(f, (0, 0), 2.0)))
    add("darkened", map_frames(carphone, clips / "darkened.mp4", lambda f: (f * 0.2).astype(np.uint8)))
    add("letterboxed", map_frames(carphone, clips / "letterboxed.mp4", letterbox))
    add("pillarboxed", map_frames(carphone, clips / "pillarboxed.mp4", pillarbox))
    seen = [0]

    def black_first_half(f: np.ndarray) -> np.ndarray:
        seen[0] += 1
        return np.zeros_like(f) if seen[0] <= 60 else f

    add("half_black", map_frames(carphone, clips / "half_black.mp4", black_first_half))
    add("carphone_2x", map_frames(
        carphone, clips / "carphone_2x.mp4",
        lambda f: cv2.resize(f, (f.shape[1] * 2, f.shape[0] * 2), interpolation=cv2.INTER_CUBIC)))

    # A frame of real footage: held still for 3 s, and panned across at PAN_PX pixels a frame.
    frame = decode_all(bunny)[60]
    scene = cv2.resize(frame, (400, 225), interpolation=cv2.INTER_AREA)
    add("still", write_video(clips / "still.mp4", [scene[:144, :256]] * 75, fps=25))
    add("panning", write_video(clips / "panning.mp4", panning(scene, 75, 144, 256, dx=PAN_PX), fps=25))

    image = decode_all(carphone)[10]
    cv2.imwrite(str(clips / "frame.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    add("image", clips / "frame.png", "image")

    (clips / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    add("broken", clips / "broken.mp4")
    return out


def source_id(name: str) -> str:
    return f"src-{name}"


def measure_source(path: Path, kind: str, clips_folder: Path, sid: str, cfg: MeasureConfig) -> Path | None:
    """Measure one media file as a source, as the split stage does (``scan_video`` of a video,
    ``measure_image`` of a photo), into its measurements file; return that file, or None when the
    file does not decode (it gets no measurements: its clips become score error rows). A file
    already measured at ``cfg`` is not measured again."""
    out = measure_file(clips_folder, sid, cfg)
    if out.exists():
        return out
    try:
        if kind == "image":
            rows = measure_image(core_media.read_image(path), cfg)
        else:
            rows = scan_video(path, core_media.video_info(path).rotation, None, cfg).measures or []
    except Exception:  # noqa: BLE001 - the broken test file: no measurements
        return None
    schemas.write_table(schemas.frame("measures", rows), out, "measures")
    return out


def measure_media(media: dict[str, tuple[str, str]], root: Path, cfg: MeasureConfig | None = None,
                  names: list[str] | None = None) -> None:
    """Measure each of ``names`` (default: all) as its own source into ``clips_dir(root)``."""
    cfg = cfg or ScoreConfig().measure()
    for name in names or list(media):
        path, kind = media[name]
        measure_source(Path(root) / path, kind, clips_dir(root), source_id(name), cfg)


def clip_row(name: str, path: str, kind: str, root: Path, span: tuple[int, int] | None = None,
             clip_id: str | None = None) -> dict:
    """A clips-table row for a test file (ids derived from the name): the span ``[start, end)`` of
    its frames, by default the whole file."""
    w = h = n = 0
    fps = 0.0
    if kind == "image":
        img = cv2.imread(str(Path(root) / path))
        h, w, n = img.shape[0], img.shape[1], 1
    else:
        try:
            with av.open(str(Path(root) / path)) as c:
                s = c.streams.video[0]
                w, h, n, fps = s.codec_context.width, s.codec_context.height, s.frames, float(s.average_rate)
        except av.FFmpegError:  # the broken file: its row still names it
            pass
    start, end = span if span is not None else (0, n)
    return {
        "clip_id": clip_id or f"clip-{name}", "source_id": source_id(name), "source_path": Path(path).name,
        "kind": kind, "scene_index": 0, "start_frame": start, "end_frame": end,
        "start_s": start / fps if fps else 0.0, "end_s": end / fps if fps else 0.0,
        "n_frames": end - start, "fps": fps, "resampled": False, "rotation_applied": 0, "width": w, "height": h,
        "path": path, "source_frames": 0 if kind == "image" else n, "sha256": "", "clip_file": "",
        "status": "ok", "reason": "", "note": "",
    }


def clips_table(media: dict[str, tuple[str, str]], root: Path, names: list[str] | None = None,
                cfg: MeasureConfig | None = None) -> pl.DataFrame:
    """The clips table of ``names`` (default: all), one whole-file clip each, with every file
    measured at ``cfg`` (default: ``ScoreConfig().measure()``) under ``clips_dir(root)``: what
    ``score_clips(table, clips_dir(root), ...)`` reads."""
    names = names or list(media)
    measure_media(media, root, cfg, names)
    return schemas.frame("clips", [clip_row(n, *media[n], root) for n in names])
