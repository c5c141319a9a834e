"""What the split stage measures while it decodes a source: the decode-time keys of the ``score`` params.

These keys change the per-frame measurements, so they are listed as the split stage's params in
``dvc.yaml``; the score stage's other keys (thresholds, how frames are aggregated) are not, and
changing one of them re-runs only the score stage, which reads the cached measurements.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.fs import sha256_json

MEASURE_CACHE = ".measure"  # in the clips folder: one parquet file per source and measurement settings
VERSION = 2  # of the measurements: bump when what a measurer computes changes (2: luma straight from swscale, faces on onnxruntime)


@dataclass(frozen=True)
class MeasureConfig:
    short_side: int = 160  # short side of the frames measured (luma, sharpness, bars, pHash)
    sample_fps: float = 8.0  # sampled frames per second of source: every round(fps / sample_fps)-th frame
    flow_short_side: int = 64  # optical flow runs on the sampled frames shrunk to this short side
    black_level: int = 24  # luma at or below which a pixel is dark
    white_level: int = 232  # luma at or above which a pixel is bright
    faces: bool = True  # look for faces (MTCNN)
    face_short_side: int = 240  # short side of the colour frames faces are looked for in
    face_fps: float = 2.0  # sampled frames per second of source looked at for faces

    def step(self, fps: float) -> int:
        """Every ``step``-th source frame is sampled."""
        return max(1, int(round(fps / self.sample_fps))) if fps > 0 and self.sample_fps > 0 else 1

    def face_every(self, fps: float) -> int:
        """Every ``face_every``-th sampled frame is looked at for faces."""
        sampled = fps / self.step(fps) if fps > 0 else self.sample_fps
        return max(1, int(round(sampled / self.face_fps))) if self.face_fps > 0 else 1

    def key(self) -> str:
        """Names the cached measurements: a change to any field (or to ``VERSION``) measures again."""
        return sha256_json({"version": VERSION, **asdict(self)})[:12]


def measure_file(clips_dir: str | os.PathLike, source_id: str, cfg: MeasureConfig) -> Path:
    """Where the split stage keeps a source's measurements (``schemas.MEASURES``) for ``cfg``."""
    return Path(clips_dir) / MEASURE_CACHE / f"{source_id}-{cfg.key()}.parquet"
