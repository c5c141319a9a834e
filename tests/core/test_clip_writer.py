"""pipeline.core.clip_writer: a clip file holds exactly the span's frames (tiny synthetic media)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.core import media
from pipeline.core.clip import ClipSpan
from pipeline.core.clip_writer import ClipWriteError, Encoding, encoder_available, even_size, write_clip
from tests.helpers.synthetic_media import textured

FAST = Encoding(preset="ultrafast")
TOLERANCE = 6.0  # mean absolute difference (0..255) a re-encode at crf 18 stays under on these textures


def _odd_video(path: Path, n: int = 12, h: int = 33, w: int = 47) -> Path:
    """An odd-sized source (yuv444p: 4:2:0 cannot hold it) of a slow pan, every frame different."""
    big = textured(h, w + n * 2, seed=3)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        s.options = {"crf": "10", "preset": "ultrafast"}
        for i in range(n):
            frame = np.ascontiguousarray(big[:, i * 2 : i * 2 + w])
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())
    return path


def test_encoder_available():
    assert encoder_available("libx264")
    assert not encoder_available("no-such-encoder")
    assert not encoder_available("aac")  # an encoder, not a video one


def test_even_size():
    assert even_size(47, 33, "yuv420p") == (46, 32)
    assert even_size(47, 33, "yuv422p") == (46, 33)
    assert even_size(47, 33, "yuv444p") == (47, 33)


def test_video_clip_holds_the_span_frames_cropped_even(tmp_path):
    span = ClipSpan(str(_odd_video(tmp_path / "src.mp4")), "video", 2, 10)
    dst = tmp_path / "out" / "clip.mp4"
    n, w, h = write_clip(span, dst, FAST, fps=25.0)
    assert (n, w, h) == (8, 46, 32)
    info = media.video_info(dst)
    assert (info.n_frames, info.width, info.height) == (8, 46, 32)
    assert info.fps == pytest.approx(25.0)
    want = span.read()[:, :32, :46].astype(np.int16)
    got = media.read_frames(dst, range(8)).astype(np.int16)
    diff = np.abs(got - want).mean(axis=(1, 2, 3))
    assert diff.max() < TOLERANCE, diff
    # each written frame is its own span frame, not a neighbour's
    for k in range(8):
        others = [np.abs(got[k] - want[j]).mean() for j in range(8) if j != k]
        assert diff[k] < min(others)
    assert not list(dst.parent.glob(".tmp-*"))


def test_resampled_clip_has_the_resampled_count(tmp_path):
    span = ClipSpan(str(_odd_video(tmp_path / "src.mp4")), "video", 0, 12, fps=10.0)
    n, _, _ = write_clip(span, tmp_path / "r.mp4", FAST, fps=10.0)
    assert n == span.n_frames == media.frame_count(tmp_path / "r.mp4")
    assert media.video_info(tmp_path / "r.mp4").fps == pytest.approx(10.0)


def test_image_clip_is_the_upright_photo_bitwise(tmp_path):
    photo = textured(31, 45, seed=9)
    src = tmp_path / "p.png"
    cv2.imwrite(str(src), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    dst = tmp_path / "out.png"
    assert write_clip(ClipSpan(str(src), "image", 0, 1), dst, FAST, fps=0.0) == (1, 45, 31)
    assert np.array_equal(media.read_image(dst), photo)


def test_errors_name_the_file(tmp_path):
    span = ClipSpan(str(_odd_video(tmp_path / "src.mp4", n=4)), "video", 0, 4)
    dst = tmp_path / "bad.mp4"
    with pytest.raises(ClipWriteError, match="bad.mp4"):
        write_clip(span, dst, Encoding(codec="no-such-encoder"), fps=25.0)
    with pytest.raises(ClipWriteError, match="bad.mp4"):
        write_clip(span, dst, FAST, fps=0.0)
    assert not dst.exists()
