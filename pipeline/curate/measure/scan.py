"""The one decode of a source: PySceneDetect's detector and the per-frame measurements, in one pass.

Every frame is decoded once (``pipeline.core.media.decode_all``: threaded, frames placed on the
source's timeline by timestamp) and converted only at the small sizes that are needed, inside
swscale: no full-size RGB copy of any frame.

- Scene detection: every frame goes to the PySceneDetect detector the params name, at the size
  PySceneDetect's own ``SceneManager`` would give it (its automatic downscale: the long side to
  256 pixels and up, 1.0 under), in BGR, with the frame's index as its timecode, as
  ``scenedetect.detect`` does; the cuts become scenes as ``SceneManager.get_scene_list`` makes them.
- Measurements: every ``round(fps / score.sample_fps)``-th frame, upright, as luma at
  ``score.short_side`` (and, on every ``face_every``-th of those, in colour at
  ``score.face_short_side``), through :mod:`pipeline.curate.measure.measures`.

Memory stays flat whatever the length: one frame in flight, the previous small frame for the
optical flow, the detector's few-frame window, at most ``FACES_IN_FLIGHT`` colour frames waiting for
the face thread, and the measurement rows (about 2 KB a sampled frame).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter
from scenedetect import FrameTimecode

from pipeline.core import media
from pipeline.curate.measure.config import MeasureConfig
from pipeline.curate.measure.measures import FaceMeasure, SampledFrame, make_measures, measure_frame

log = logging.getLogger(__name__)

DETECTION_WIDTH = 256  # PySceneDetect's DEFAULT_MIN_WIDTH: frames are downscaled to about this long side
FACES_IN_FLIGHT = 8  # colour frames waiting for the face thread at most (about 0.3 MB each); beyond, the
# decoding thread looks for the faces itself


class ScanError(RuntimeError):
    """A source could not be decoded; the message names the file."""


@dataclass
class Scan:
    scenes: list[tuple[int, int]] | None  # (start, end) frames, end exclusive; [] = no cut; None = not detected
    measures: list[dict] | None  # rows of schemas.MEASURES; None = not measured (plain rows: polars is not used in
    # forked workers, whose parent's polars thread pool would deadlock them)
    decoded: int  # frames decoded


def detection_size(width: int, height: int) -> tuple[int, int]:
    """The size PySceneDetect's SceneManager hands its detectors (``compute_downscale_factor`` of the long side)."""
    long_side = max(width, height)
    if long_side < DETECTION_WIDTH:
        return width, height
    f = long_side / float(DETECTION_WIDTH)
    return max(1, round(width / f)), max(1, round(height / f))


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side equal to ``short_side``, aspect kept, both even."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    s = short_side / min(width, height)
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def scenes_from_cuts(cuts: list[int], n_frames: int) -> list[tuple[int, int]]:
    """Scenes as SceneManager.get_scene_list makes them: [] when there is no cut."""
    cuts = sorted({c for c in cuts if 0 < c < n_frames})
    if not cuts:
        return []
    bounds = [0, *cuts, n_frames]
    return list(zip(bounds[:-1], bounds[1:]))


def _upright(a: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(a, k)) if k else a


class _Scaler:
    """Frames scaled (area averaging) and converted by swscale, with one context per output size and
    format kept for the whole source: a context made again for every frame (or shared by two sizes,
    which makes it again at every switch) costs about ten times the scaling of a 720p frame."""

    def __init__(self) -> None:
        self._reformatters: dict[tuple[int, int, str], VideoReformatter] = {}

    def __call__(self, frame: av.VideoFrame, size: tuple[int, int], fmt: str, rotation: int = 0) -> np.ndarray:
        r = self._reformatters.setdefault((size[0], size[1], fmt), VideoReformatter())
        a = r.reformat(frame, width=size[0], height=size[1], format=fmt, interpolation="AREA").to_ndarray()
        return _upright(a, rotation)


def scan_video(path: str | os.PathLike, rotation: int = 0, detector=None, cfg: MeasureConfig | None = None,
               progress: Callable[[int], None] | None = None, threads: bool = True) -> Scan:
    """Decode ``path`` once: scenes with ``detector`` (a PySceneDetect detector; None: not detected)
    and the measurements of ``cfg`` (None: not measured). ``progress(n)`` is called every 64 frames
    decoded, with the frames decoded since the last call. ``threads``: FFmpeg's decoding threads
    (off when every core already runs a scan) and a thread of its own for the faces."""
    info = media.video_info(path)
    if info.n_frames < 1:
        raise ScanError(f"{path}: no frame")
    fps = info.fps or 25.0
    det_size = detection_size(info.width, info.height)
    step = cfg.step(fps) if cfg else 0
    face_every = cfg.face_every(fps) if cfg else 0
    measures = make_measures(cfg, fps) if cfg else []
    gray_size = scaled_size(info.width, info.height, cfg.short_side) if cfg else (0, 0)
    face_size = scaled_size(info.width, info.height, cfg.face_short_side) if cfg and cfg.faces else (0, 0)
    scale = _Scaler()
    faces = next((m for m in measures if isinstance(m, FaceMeasure)), None)
    inline = [m for m in measures if m is not faces]
    # MTCNN runs in its own thread (onnxruntime releases the GIL), beside the decode and the other measurers
    face_thread = ThreadPoolExecutor(1, thread_name_prefix="faces") if faces is not None and threads else None
    waiting: deque[tuple[dict, Future]] = deque()
    cuts: list[int] = []
    rows: list[dict] = []
    last = -1
    decoded = 0
    try:
        for i, frame in media.decode_all(path, threads):
            decoded += 1
            last = i
            if detector is not None:
                bgr = scale(frame, det_size, "bgr24")
                cuts += [int(c.frame_num) for c in detector.process_frame(FrameTimecode(i, fps), bgr)]
            if cfg is not None and i % step == 0:
                gray = scale(frame, gray_size, "gray", rotation)  # the luma plane, full range
                row = measure_frame(inline, SampledFrame(i, info.times[i], gray))
                rows.append(row)
                if faces is not None and (i // step) % face_every == 0:
                    colour = SampledFrame(i, info.times[i], gray, scale(frame, face_size, "rgb24", rotation))
                    if face_thread is None or len(waiting) >= FACES_IN_FLIGHT:
                        # inline: without threads, or while the face thread is behind (rather than wait for
                        # it with a core idle: on a small video the faces cost more than all the rest)
                        row.update(faces(colour))
                    else:
                        waiting.append((row, face_thread.submit(faces, colour)))
                    while waiting and waiting[0][1].done():
                        done, result = waiting.popleft()
                        done.update(result.result())
            if progress is not None and decoded % 64 == 0:
                progress(64)
        while waiting:
            done, result = waiting.popleft()
            done.update(result.result())
    except av.FFmpegError as exc:
        raise ScanError(f"{path}: cannot decode frame {last + 1}: {exc}") from exc
    finally:
        if face_thread is not None:
            face_thread.shutdown(cancel_futures=True)
    if progress is not None:
        progress(decoded % 64)
    if decoded == 0:
        raise ScanError(f"{path}: no frame decodes")
    scenes = None
    if detector is not None:
        cuts += [int(c.frame_num) for c in detector.post_process(FrameTimecode(last, fps))]
        scenes = scenes_from_cuts(cuts, last + 1)
    return Scan(scenes=scenes, measures=rows if cfg is not None else None, decoded=decoded)


def measure_image(rgb: np.ndarray, cfg: MeasureConfig) -> list[dict]:
    """The measurements of an upright RGB photo: one row, frame 0."""
    h, w = rgb.shape[:2]
    gw, gh = scaled_size(w, h, cfg.short_side)
    gray = cv2.cvtColor(cv2.resize(rgb, (gw, gh), interpolation=cv2.INTER_AREA if gw < w else cv2.INTER_LINEAR),
                        cv2.COLOR_RGB2GRAY)
    colour = None
    if cfg.faces:
        fw, fh = scaled_size(w, h, cfg.face_short_side)
        colour = cv2.resize(rgb, (fw, fh), interpolation=cv2.INTER_AREA if fw < w else cv2.INTER_LINEAR)
    return [measure_frame(make_measures(cfg), SampledFrame(0, 0.0, gray, colour))]
