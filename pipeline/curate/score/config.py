"""The score stage's settings (``params.yaml`` group ``score``).

The decode-time keys (``short_side``, ``sample_fps``, ``flow_short_side``, ``black_level``,
``white_level``, ``faces``, ``face_short_side``, ``face_fps``) decide what the split stage measures
while it decodes each source (:meth:`ScoreConfig.measure`); the others decide how the score stage
aggregates those measurements per clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.core.config import ParamsError, load_settings, setting
from pipeline.curate.measure.config import MeasureConfig


@dataclass(frozen=True)
class ScoreConfig:
    short_side: int = setting(160, min=16)  # short side of the frames measured
    sample_fps: float = setting(8.0, above=0)  # frames measured per second of source
    max_frames: int = setting(48, min=2)  # at most this many sampled frames per clip, spread evenly
    flow_short_side: int = setting(64, min=8)  # optical flow runs on frames shrunk to this short side
    static_pair_motion: float = setting(0.005, min=0)  # a frame pair moving less (diagonals/s) counts as static
    black_level: int = setting(24, min=0, max=255)  # luma at or below which a pixel is dark (near-black frames, bars)
    white_level: int = setting(232, min=0, max=255)  # luma at or above which a pixel is bright (near-white frames)
    pixel_share: float = setting(0.02, min=0, max=1)  # share of pixels allowed to break the black/white/bar rule
    faces: bool = True  # look for faces (MTCNN): face_share, face_area, face; false: those columns are null
    face_short_side: int = setting(240, min=48)  # short side of the colour frames faces are looked for in
    face_fps: float = setting(2.0, above=0)  # sampled frames per second of source looked at for faces
    face_min_confidence: float = setting(0.95, min=0, max=1)  # a face counts from this detector confidence on
    face_min_share: float = setting(0.1, min=0, max=1)  # a clip shows a face when at least this share of its looked-at frames has one

    def check(self) -> None:
        if self.white_level <= self.black_level:
            raise ParamsError(f"params.yaml score.white_level: {self.white_level!r} is not allowed: must be above "
                              f"score.black_level ({self.black_level})")

    @classmethod
    def from_params(cls, p: dict[str, Any] | None) -> ScoreConfig:
        return load_settings(cls, p, "score")

    def measure(self) -> MeasureConfig:
        """What the split stage measures while it decodes each source."""
        return MeasureConfig(short_side=self.short_side, sample_fps=self.sample_fps,
                             flow_short_side=self.flow_short_side, black_level=self.black_level,
                             white_level=self.white_level, faces=self.faces, face_short_side=self.face_short_side,
                             face_fps=self.face_fps)
