"""Scene detection with PySceneDetect; the detector and its thresholds come from params."""

from __future__ import annotations

import os
from typing import Any

import scenedetect
from scenedetect import detect

DETECTORS = {
    "adaptive": scenedetect.AdaptiveDetector,
    "content": scenedetect.ContentDetector,
    "threshold": scenedetect.ThresholdDetector,
    "hash": scenedetect.HashDetector,
    "histogram": scenedetect.HistogramDetector,
}


def make_detector(name: str, min_scene_len: int, options: dict[str, Any] | None = None):
    """A PySceneDetect detector by short name with the given constructor options."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown scene detector '{name}'; choose one of {sorted(DETECTORS)}") from None
    return cls(min_scene_len=min_scene_len, **(options or {}))


def detect_scenes(path: str | os.PathLike, detector) -> list[tuple[int, int]]:
    """Scenes as ``(start_frame, end_frame)`` pairs (end exclusive); ``[]`` when there is no cut."""
    scenes = detect(str(path), detector, backend="opencv")
    return [(int(a.frame_num), int(b.frame_num)) for a, b in scenes]
