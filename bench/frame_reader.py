"""Benchmark: the frame reader (``pipeline.core.media.read_frames``, decord's ``get_batch``)
against the plain PyAV decode loop the stages used before it, in the same run.

For each sample video and each N, N scattered frame indices (fixed seed) are read by:

- baseline: a PyAV loop that decodes the file from its start and converts the wanted frames
  (``to_ndarray(format="rgb24")``, ``thread_type="AUTO"``), as encode, caption, score and the
  thumbnails did;
- ours: ``read_frames`` as the stages call it now: PyAV's demux pass (frame count, timestamps,
  rotation; its cache is cleared before every call, as a stage reads each clip once), then decord;
- for reference, ``read_frames`` with decord switched off (the reader's PyAV path, the fallback).

Runs are ABAB-interleaved (baseline, ours, PyAV path, then again) over ``--rounds`` rounds after
one warm-up; the table shows the median of each and the ratio ours / baseline, and the last line
the median of those ratios. Timings only; correctness is tests/test_media.py. Usage::

    python bench/frame_reader.py [--rounds 5] [--n 8 32] [VIDEO ...]   # default: the sample videos
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import av
import numpy as np

from pipeline.core import media
from pipeline.core.samples import SAMPLE_VIDEOS, sample_video


def pyav_loop(path: Path, indices: list[int]) -> np.ndarray:
    wanted, got = set(indices), {}
    last = max(indices)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(s)):
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return np.stack([got[i] for i in indices])


def reader(path: Path, indices: list[int]) -> np.ndarray:
    media._probe_cached.cache_clear()
    return media.read_frames(path, indices)


def reader_pyav(path: Path, indices: list[int]) -> np.ndarray:
    media._probe_cached.cache_clear()
    real = media._decord
    media._decord = lambda: None
    try:
        return media.read_frames(path, indices)
    finally:
        media._decord = real


def timed(fn, path: Path, indices: list[int]) -> float:
    t = time.perf_counter()
    fn(path, indices)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("videos", nargs="*", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32])
    args = ap.parse_args()
    videos = args.videos or [sample_video(v) for v in SAMPLE_VIDEOS]
    sides = {"baseline": pyav_loop, "ours": reader, "pyav path": reader_pyav}
    cases = []
    for v in videos:
        n_frames = media.frame_count(v)
        for n in args.n:
            idx = sorted(np.random.default_rng(n).choice(n_frames, size=min(n, n_frames), replace=False).tolist())
            assert np.array_equal(reader(v, idx), pyav_loop(v, idx)), f"{v}: the reader's frames differ"
            cases.append((v, n, idx))
    runs = {(str(v), n, s): [] for v, n, _ in cases for s in sides}
    for r in range(args.rounds + 1):  # round 0 warms caches and is dropped
        for v, n, idx in cases:
            for side, fn in sides.items():
                t = timed(fn, v, idx)
                if r:
                    runs[(str(v), n, side)].append(t)
    print(f"{os.cpu_count()} cores; {args.rounds} rounds, ABAB-interleaved, median ms")
    print(f"{'video':24}{'N':>4}{'PyAV loop':>11}{'reader':>9}{'ratio':>7}{'PyAV path':>11}{'ratio':>7}")
    ratios = []
    for v, n, _ in cases:
        med = {s: statistics.median(runs[(str(v), n, s)]) * 1e3 for s in sides}
        ratio = med["ours"] / med["baseline"]
        ratios.append(ratio)
        print(f"{Path(v).name:24}{n:4d}{med['baseline']:11.1f}{med['ours']:9.1f}{ratio:7.2f}"
              f"{med['pyav path']:11.1f}{med['pyav path'] / med['baseline']:7.2f}")
    print(f"median ratio reader (decord) / PyAV loop: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
