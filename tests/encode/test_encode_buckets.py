"""Frame windows and resolution buckets of the encode stage."""

import pytest

from pipeline.encode.buckets import (
    available_frames,
    check_frame_buckets,
    frame_windows,
    pick_frame_bucket,
    pick_resolution,
    resolution_buckets,
    window_starts,
)

BUCKETS = [17, 33, 49, 81]


def test_frame_buckets_must_be_4n_plus_1():
    assert check_frame_buckets([33, 17, 17]) == [17, 33]
    with pytest.raises(ValueError, match="4n\\+1"):
        check_frame_buckets([16, 33])


def test_available_frames_maps_target_fps_to_clip_frames():
    assert available_frames(40, 16.0, 16.0) == 40
    assert available_frames(40, 30.0, None) == 40
    # 50 frames at 25 fps = 2 s; at 16 fps: frames k with round(k * 25/16) <= 49 -> k <= 31
    assert available_frames(50, 25.0, 16.0) == 32
    bucket, wins = frame_windows(50, 25.0, 16.0, BUCKETS, "head")
    assert bucket == 17
    assert wins[0][:6] == [0, 2, 3, 5, 6, 8]  # round(k * 1.5625)
    assert all(0 <= i < 50 for i in wins[0])


def test_largest_bucket_that_fits_and_too_short():
    assert pick_frame_bucket(48, BUCKETS) == 33
    assert pick_frame_bucket(81, BUCKETS) == 81
    assert pick_frame_bucket(16, BUCKETS) is None
    assert frame_windows(10, 16.0, 16.0, BUCKETS, "head") == (None, [])


def test_modes_head_uniform_chunk():
    assert window_starts(40, 17, "head") == [0]
    assert window_starts(40, 17, "uniform", 1) == [11]
    assert window_starts(40, 17, "uniform", 3) == [0, 12, 23]
    assert window_starts(40, 17, "chunk", 0) == [0, 17]
    assert window_starts(100, 17, "chunk", 2) == [0, 17]
    b, wins = frame_windows(40, 16.0, 16.0, [17], "chunk", 0)
    assert b == 17 and wins == [list(range(17)), list(range(17, 34))]
    with pytest.raises(ValueError, match="mode"):
        window_starts(40, 17, "random")


def test_resolution_bucket_area_aspect_and_16px_steps():
    r = pick_resolution(1280, 720, area=480 * 832)
    assert (r.width, r.height) == (832, 480)
    assert (r.scaled_width, r.scaled_height) == (853, 480)  # cover: height fits, width cropped
    assert r.crop_left == (853 - 832) // 2 and r.crop_top == 0
    portrait = pick_resolution(720, 1280, area=480 * 832)
    assert (portrait.width, portrait.height) == (480, 832)
    for w, h in resolution_buckets(480 * 832):
        assert w % 16 == 0 and h % 16 == 0 and w * h <= 480 * 832


def test_no_upscaling_by_default():
    r = pick_resolution(176, 144, area=480 * 832)
    assert r.width <= 176 and r.height <= 144 and r.width % 16 == 0 and r.height % 16 == 0
    assert r.scaled_width <= 176 and r.scaled_height <= 144
    up = pick_resolution(176, 144, area=480 * 832, upscale=True)
    assert up.width * up.height > 176 * 144
