"""The one frame reader every stage uses: video frames by index, photos upright, RGB uint8.

Video frames are decoded with decord (``VideoReader.get_batch``); index ``i`` is the ``i``-th
frame in presentation order (the ``i``-th smallest timestamp of the video stream), which is also
the ``i``-th frame PyAV's decoder puts out, for variable frame rates and for a video stream that
starts after the container too. PyAV does what decord does not do well:

- metadata (:func:`video_info`): frame count and timestamps from the demuxer, frame rate, size,
  and the display rotation (from the first decoded frame);
- rotated files: decord turns the frames by the display rotation it finds (the same turn as
  ffmpeg's autorotate), but it sees only the rotations its bundled FFmpeg 4.1 reads, so a file
  with a rotation is read with PyAV and turned here when ``upright`` asks for it;
- streams with leading pictures (open GOPs: x265's default, x264's ``open-gop``; AVI with
  B-frames): after a seek decord counts the frames a keyframe's leading pictures put out as the
  frames after it and returns frames a few places off, so these are read with PyAV;
- files decord cannot open or decode (AV1, for one: its FFmpeg has no AV1 decoder), or whose
  frame count or frame size it gets differently from PyAV: read with PyAV, with the same result.

The PyAV path decodes forward and seeks only when a keyframe lies between the last decoded frame
and the next wanted one, never in a stream with leading pictures (a seek there can lose the
frames just before a keyframe); frames are matched by timestamp.

Frames come out as stored, like PyAV's ``to_ndarray``: the display rotation is applied only
with ``upright=True`` (our clips are upright files with no rotation, so it changes nothing for
them). At full size decord's frames are bitwise PyAV's ``to_ndarray(format="rgb24")``;
``size`` scales inside the decoder (swscale), where the two differ by a fraction of a level on
average (tests/test_media.py measures both).
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np

from pipeline.core.images import open_image_rgb

log = logging.getLogger(__name__)


class MediaReadError(ValueError):
    """A video has no video stream or lacks frames that were asked for; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What the demuxer (PyAV) says about a file's first video stream."""

    n_frames: int  # frames with a timestamp, counted from the demuxer
    width: int  # of the frames as stored (before the display rotation)
    height: int
    fps: float  # average frame rate (the guessed one when the container gives none); 0.0 if unknown
    rotation: int  # display rotation, degrees counter-clockwise: 0, 90, 180 or 270
    times: tuple[float, ...]  # presentation time of each frame, seconds after the first frame


@dataclass(frozen=True)
class _Probe:
    info: VideoInfo
    pts: tuple[int, ...]  # timestamp of each frame (stream time base), ascending
    key_pts: tuple[int, ...]  # timestamps of the keyframes, ascending
    seekable: bool  # no leading pictures: decoding from a keyframe puts out that frame first, then the next ones


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count, size, frame rate, display rotation and frame times of the file's video stream."""
    return _probe(path).info


def frame_count(path: str | os.PathLike) -> int:
    """Frames in the file's video stream (the demuxer's count; no decoding)."""
    return _probe(path).info.n_frames


def read_frames(path: str | os.PathLike, indices: Sequence[int], *, size: tuple[int, int] | None = None,
                upright: bool = False) -> np.ndarray:
    """The frames at ``indices`` (presentation order, 0-based, any order, repeats allowed) as one
    RGB uint8 array [N, H, W, 3].

    ``size``: (width, height) of the returned frames, scaled by swscale while decoding; the full
    size when None. ``upright``: turn the frames by the file's display rotation. Raises
    :class:`MediaReadError` naming the file for an index outside the video or a frame that does
    not decode.
    """
    idx = [int(i) for i in indices]
    wanted = sorted(set(idx))
    got: dict[int, np.ndarray] = {}
    for chunk, frames in _batches(path, wanted, size, upright, batch=max(1, len(wanted))):
        if chunk == idx:  # one batch holding exactly what was asked for: no copy
            return frames
        got.update(zip(chunk, frames))
    if not idx:
        w, h = _out_size(_probe(path).info, size, upright)
        return np.empty((0, h, w, 3), np.uint8)
    return np.stack([got[i] for i in idx])


def iter_frames(path: str | os.PathLike, indices: Sequence[int], *, size: tuple[int, int] | None = None,
                upright: bool = False, batch: int = 8) -> Iterator[np.ndarray]:
    """The frames at ``indices`` (strictly increasing) one by one, [H, W, 3] RGB uint8, decoded
    ``batch`` at a time: a whole clip's sampled frames never sit in memory at full size at once.
    Same frames and errors as :func:`read_frames`."""
    idx = [int(i) for i in indices]
    if any(b <= a for a, b in zip(idx, idx[1:])):
        raise ValueError("iter_frames: indices must be strictly increasing")
    for _, frames in _batches(path, idx, size, upright, batch=max(1, batch)):
        yield from frames


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A photo as upright (EXIF orientation applied) 8-bit RGB, [H, W, 3] uint8."""
    return np.array(open_image_rgb(path))


# --- metadata (PyAV) -------------------------------------------------------------------------


def _probe(path: str | os.PathLike) -> _Probe:
    st = os.stat(path)  # the cache key: a rewritten file is probed again
    return _probe_cached(os.fspath(path), st.st_mtime_ns, st.st_size, st.st_ino)


@functools.lru_cache(maxsize=32)
def _probe_cached(path: str, _mtime_ns: int, _size: int, _ino: int) -> _Probe:
    """One pass over the demuxer: every frame's timestamp (as ``probe.video_timeline`` counts
    them: packets with a timestamp and data), the keyframes, and the first decoded frame for the
    display rotation."""
    with av.open(path) as c:
        if not c.streams.video:
            raise MediaReadError(f"{path}: no video stream")
        s = c.streams.video[0]
        ctx = s.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        fps = float(s.average_rate or 0) or float(s.guessed_rate or 0)
        tb = float(s.time_base) if s.time_base else 0.0
        pts: list[int] = []
        keys: list[int] = []
        rotation = None
        seekable = True
        last_key = None
        for pkt in c.demux(s):
            if pkt.size > 0:
                if pkt.pts is None:
                    seekable = False
                else:
                    pts.append(pkt.pts)
                    if pkt.is_keyframe:
                        keys.append(pkt.pts)
                        last_key = pkt.pts
                    elif last_key is not None and pkt.pts < last_key:  # shown before the keyframe it follows
                        seekable = False
            if rotation is None:
                try:
                    for frame in s.decode(pkt):
                        rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
                        break
                except av.FFmpegError:  # a first packet that does not decode: reading will tell
                    rotation = 0
    pts.sort()
    keys.sort()
    times = tuple((p - pts[0]) * tb for p in pts) if pts else ()
    info = VideoInfo(n_frames=len(pts), width=width, height=height, fps=fps, rotation=rotation or 0, times=times)
    return _Probe(info=info, pts=tuple(pts), key_pts=tuple(keys), seekable=seekable)


def _out_size(info: VideoInfo, size: tuple[int, int] | None, upright: bool) -> tuple[int, int]:
    if size is not None:
        return int(size[0]), int(size[1])
    turned = upright and info.rotation in (90, 270)
    return (info.height, info.width) if turned else (info.width, info.height)


# --- decoding --------------------------------------------------------------------------------


def _batches(path: str | os.PathLike, wanted: list[int], size: tuple[int, int] | None, upright: bool,
             batch: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """(indices, frames [n, H, W, 3]) for ``wanted`` (ascending, unique), ``batch`` at a time:
    decord when it can read the file, else (or from where it failed) PyAV."""
    probe = _probe(path)
    n = probe.info.n_frames
    outside = [i for i in wanted if not 0 <= i < n]
    if outside:
        raise MediaReadError(f"{path}: frame(s) {outside[:5]} not in the file (it has {n} frames)")
    if not wanted:
        return
    done = 0
    decord = _decord()
    if decord is not None and probe.info.rotation == 0 and probe.seekable:
        it = _decord_batches(decord, path, probe.info, wanted, size, batch)
        while True:
            try:
                chunk, frames = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - decord raises DECORDError, RuntimeError, ...
                log.debug("%s: decord cannot read it (%s); reading with PyAV", path, str(exc).splitlines()[0][:200])
                break
            yield chunk, frames
            done += len(chunk)
    yield from _pyav_batches(path, probe, wanted[done:], size, upright, batch)


@functools.cache
def _decord():
    """The decord module, or None where it is not installed (PyAV then reads everything)."""
    try:
        import decord
    except ImportError:  # pragma: no cover - decord is a dependency; no wheel on some platforms
        log.warning("decord is not installed: every video is read with PyAV")
        return None
    return decord


class _DecordDisagrees(RuntimeError):
    pass


def _decord_batches(decord, path: str | os.PathLike, info: VideoInfo, wanted: list[int],
                    size: tuple[int, int] | None, batch: int) -> Iterator[tuple[list[int], np.ndarray]]:
    kwargs: dict[str, int] = {}
    if size is not None and tuple(size) != (info.width, info.height):  # scaled while decoding
        kwargs = {"width": int(size[0]), "height": int(size[1])}
    vr = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), **kwargs)
    try:
        if len(vr) != info.n_frames:  # its index would not mean the same frames
            raise _DecordDisagrees(f"decord counts {len(vr)} frames, the demuxer {info.n_frames}")
        w, h = _out_size(info, size, False)
        for start in range(0, len(wanted), batch):
            chunk = wanted[start : start + batch]
            frames = vr.get_batch(chunk).asnumpy()
            if frames.shape[1:] != (h, w, 3) or frames.dtype != np.uint8:
                raise _DecordDisagrees(f"decord gives frames of shape {frames.shape[1:]}, expected {(h, w, 3)}")
            yield chunk, frames
    finally:
        del vr  # its decoder threads end here, not whenever the generator is collected


def _pyav_batches(path: str | os.PathLike, probe: _Probe, wanted: list[int], size: tuple[int, int] | None,
                  upright: bool, batch: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """The PyAV path: decode forward, seeking only when a keyframe lies between the last decoded
    frame and the next wanted one (so a clip decodes once from its start, as a plain decode loop
    does, and a frame deep in a long source does not decode everything before it)."""
    if not wanted:
        return
    info = probe.info
    k = (info.rotation // 90) % 4 if upright else 0
    if size is None:
        convert = {}
    else:  # the stored frame is scaled so that after the turn it is ``size``
        w, h = int(size[0]), int(size[1])
        convert = {"width": h, "height": w} if k % 2 else {"width": w, "height": h}
    pts = probe.pts
    index_of = {p: i for i, p in enumerate(pts)}
    pending = list(wanted)  # ascending
    chunk: list[int] = []
    frames: list[np.ndarray] = []
    missing: list[int] = []
    with av.open(os.fspath(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        decoded = c.decode(s)
        pos = None  # timestamp of the last decoded frame; None: at the start of the file
        while pending:
            target = pts[pending[0]]
            ki = bisect.bisect_right(probe.key_pts, target) - 1
            key = probe.key_pts[ki] if ki >= 0 else None
            if probe.seekable and key is not None and key > (pos if pos is not None else pts[0]):
                c.seek(key, stream=s, backward=True, any_frame=False)
                decoded = c.decode(s)
                pos = None
            for frame in decoded:
                if frame.pts is None:
                    continue
                pos = frame.pts
                i = index_of.get(frame.pts)
                if i is not None and pending and i == pending[0]:
                    pending.pop(0)
                    rgb = frame.to_ndarray(format="rgb24", **convert)
                    chunk.append(i)
                    frames.append(np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb)
                    if len(chunk) == batch:
                        yield chunk, np.stack(frames)
                        chunk, frames = [], []
                if frame.pts >= target:
                    break
            else:  # the stream ended before the target
                missing += pending
                break
            if pending and pts[pending[0]] <= target:  # the target never came out (a seek past it)
                missing.append(pending.pop(0))
    if chunk:
        yield chunk, np.stack(frames)
    if missing:
        raise MediaReadError(f"{path}: frame(s) {missing[:5]} do not decode ({len(missing)} of {len(wanted)} missing)")


def decode_all(path: str | os.PathLike, threads: bool = True) -> Iterator[tuple[int, av.VideoFrame]]:
    """Every frame of the video stream once, in presentation order, as ``(index, frame)``: the
    streaming mode of this reader, for a pass over a whole source (scene detection and the per-frame
    measurements). ``index`` is the frame's place on the source's timeline (as :func:`read_frames`
    counts), found from its timestamp, so a frame that fails to decode leaves a gap instead of
    shifting the frames after it. The caller converts each ``av.VideoFrame`` at the size and format
    it needs (``frame.to_ndarray(format=..., width=..., height=...)``: scaled inside swscale, no
    full-size RGB copy). Constant memory whatever the video's length. ``threads``: FFmpeg's own
    decoding threads; without them (one decode per core already running) a frame costs about 40%
    less CPU time (0.32 s against 0.55 s for Big Buck Bunny's 132 frames of 720p)."""
    probe = _probe(path)
    index_of = {p: i for i, p in enumerate(probe.pts)}
    with av.open(os.fspath(path)) as c:
        s = c.streams.video[0]
        if threads:
            s.thread_type = "AUTO"
        for frame in c.decode(s):
            i = index_of.get(frame.pts) if frame.pts is not None else None
            if i is not None:
                yield i, frame
