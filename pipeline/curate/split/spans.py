"""Turn detected scenes into clip spans: trim at cuts, enforce min/max length."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    scene_index: int
    start: int  # inclusive, source frames
    end: int  # exclusive

    @property
    def n_frames(self) -> int:
        return self.end - self.start


def plan_spans(
    scenes: list[tuple[int, int]],
    n_frames: int,
    fps: float,
    min_s: float,
    max_s: float,
    trim_frames: int = 1,
) -> tuple[list[Span], list[str]]:
    """Spans to cut, and a line for every scene (or tail) that was dropped and why.

    ``scenes`` are ``(start, end)`` frame ranges (end exclusive) covering the video; an empty
    list means one scene spanning the whole video. ``trim_frames`` frames are removed on each
    side of every cut between scenes (not at the start or end of the video), so no clip holds a
    transition frame. A scene longer than ``max_s`` is cut into consecutive ``max_s`` pieces;
    a piece (or scene) shorter than ``min_s`` is dropped.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not scenes:
        scenes = [(0, n_frames)]
    min_frames = max(1, math.ceil(min_s * fps - 1e-9))
    max_frames = max(min_frames, math.floor(max_s * fps + 1e-9)) if max_s and max_s > 0 else None
    spans: list[Span] = []
    dropped: list[str] = []
    for i, (s, e) in enumerate(scenes):
        e = min(e, n_frames)
        if s > 0:
            s += trim_frames
        if e < n_frames:
            e -= trim_frames
        length = e - s
        if length < min_frames:
            dropped.append(
                f"scene {i} (frames {scenes[i][0]}-{scenes[i][1]}): {max(length, 0) / fps:.2f} s "
                f"after trimming < min {min_s} s"
            )
            continue
        if max_frames is None or length <= max_frames:
            spans.append(Span(i, s, e))
            continue
        start = s
        while start < e:
            end = min(start + max_frames, e)
            if end - start < min_frames:
                dropped.append(f"scene {i}: tail frames {start}-{end} ({(end - start) / fps:.2f} s) < min {min_s} s")
                break
            spans.append(Span(i, start, end))
            start = end
    return spans, dropped
