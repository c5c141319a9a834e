"""What the captioner sees of a clip: the sampled frames of its span, read from the source."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.caption.media import FrameSampling, MediaError, load_clip, sample_indices
from pipeline.core import media
from tests.helpers.caption_helpers import dataset_row
from tests.helpers.synthetic_media import scenes_video


def test_clip_frames_are_the_span_of_its_source(tmp_path):
    src, _ = scenes_video(tmp_path / "src.mp4", [8, 12], h=36, w=64)
    row = dataset_row("c1", "video", src.name, 25.0, 10, 64, 36, start=9, source_frames=20)
    sampling = FrameSampling(fps=10.0, max_frames=8, max_pixels=32 * 18)
    got = load_clip(row, sampling, root=tmp_path)
    idx = sample_indices(10, 25.0, 10.0, 8)
    assert got.indices == idx and got.frames is not None
    assert np.array_equal(got.frames, media.read_frames(src, [9 + i for i in idx], size=(32, 18)))


def test_changed_source_is_a_media_error_naming_it(tmp_path):
    src, _ = scenes_video(tmp_path / "src.mp4", [12], h=36, w=64)
    row = dataset_row("c1", "video", src, 25.0, 10, 64, 36, start=0, source_frames=30)  # split saw 30 frames
    with pytest.raises(MediaError, match=str(src)):
        load_clip(row, FrameSampling())
