import shutil
import subprocess

import numpy as np
import polars as pl
import pytest

import pipeline.curate.split.split as split_mod
from pipeline.core import schemas
from pipeline.curate.probe.table import probe_folder
from pipeline.curate.split.cutting import Encoding, ffmpeg_binary
from pipeline.curate.split.scenes import detect_scenes, make_detector
from pipeline.curate.split.spans import Span, plan_spans
from pipeline.curate.split.split import SplitConfig, make_clip_id, split_sources
from tests.curate.test_probe import make_bad_inputs
from tests.helpers.synthetic_media import decode_all, scenes_video, textured, write_video


def test_plan_spans_trims_cuts_and_caps_length():
    scenes = [(0, 30), (30, 200), (200, 212)]
    spans, dropped = plan_spans(scenes, 212, fps=25, min_s=1.0, max_s=2.0, trim_frames=1)
    # scene 0: 0..29 (1.16 s); scene 1: 31..199 cut into 50-frame pieces, tail 19 frames dropped
    assert spans == [Span(0, 0, 29), Span(1, 31, 81), Span(1, 81, 131), Span(1, 131, 181)]
    assert len(dropped) == 2 and "tail" in dropped[0] and "scene 2" in dropped[1]


def test_plan_spans_whole_video_when_no_cut():
    spans, dropped = plan_spans([], 120, fps=30, min_s=1.0, max_s=10.0, trim_frames=2)
    assert spans == [Span(0, 0, 120)] and dropped == []


def test_bikes_cuts_with_default_params(bikes):
    cfg = SplitConfig()
    scenes = detect_scenes(bikes, make_detector(cfg.detector, cfg.min_scene_len, {}))
    cuts = [s for s, _ in scenes][1:]
    expected = [30, 76, 137, 187, 242]
    assert len(cuts) == len(expected)
    for got, want in zip(cuts, expected):
        assert abs(got - want) <= 1, (cuts, expected)


def test_synthetic_cuts_and_fade(tmp_path):
    path, cuts = scenes_video(tmp_path / "syn.mp4", [40, 30, 50], fade_into=2)
    scenes = detect_scenes(path, make_detector("adaptive", 15, {}))
    found = [s for s, _ in scenes][1:]
    assert found == cuts  # [40, 70]: a hard cut, then a cut into a fade from black


def _split(raw, out, cfg=None, previous=None, jobs=1):
    sources = probe_folder(raw)
    return sources, split_sources(sources, raw, out, cfg or SplitConfig(), previous, jobs=jobs)


def test_split_bikes_clips_match_source_frames(tmp_path, bikes):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(bikes, raw / "bikes.mp4")
    _, clips = _split(raw, tmp_path / "clips")
    schemas.validate(clips, "clips")
    ok = clips.filter(pl.col("status") == "ok")
    assert ok.select("start_frame", "end_frame").rows() == [(0, 29), (31, 75), (77, 136), (138, 186), (188, 241)]
    src = decode_all(bikes)
    for row in ok.to_dicts():
        frames = decode_all(row["path"])
        assert len(frames) == row["n_frames"] == row["end_frame"] - row["start_frame"]
        assert (row["width"], row["height"], row["fps"]) == (640, 272, 25.0)
        for i in (0, len(frames) // 2, len(frames) - 1):
            diff = np.abs(frames[i].astype(np.int16) - src[row["start_frame"] + i].astype(np.int16)).mean()
            # the matching source frame is far closer than its neighbours (frame-accurate cut)
            assert diff < 6.0, (row["clip_id"], i, diff)
        first, prev = frames[0].astype(np.int16), src[max(row["start_frame"] - 1, 0)].astype(np.int16)
        if row["start_frame"] > 0:
            assert np.abs(first - prev).mean() > 2 * np.abs(first - src[row["start_frame"]]).mean()


def test_bad_inputs_do_not_stop_the_batch(tmp_path, bikes, carphone):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_bad_inputs(raw, bikes)
    shutil.copy(carphone, raw / "carphone.mp4")
    sources, clips = _split(raw, tmp_path / "clips", jobs=2)
    assert sources.filter(pl.col("status") == "rejected").height == 5
    assert clips["source_path"].unique().to_list() == ["carphone.mp4"]
    assert clips["status"].to_list() == ["ok"]


def test_rerun_is_incremental(tmp_path, bikes, carphone, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "carphone.mp4")
    out = tmp_path / "clips"
    _, first = _split(raw, out)
    calls = []
    real_cut = split_mod.cut_clip
    monkeypatch.setattr(split_mod, "cut_clip", lambda *a, **k: calls.append(a[1]) or real_cut(*a, **k))
    monkeypatch.setattr(split_mod, "detect_scenes", lambda *a, **k: pytest.fail("scene detection re-ran"))
    _, again = _split(raw, out, previous=first)
    assert calls == [] and again.equals(first)
    # a new video: only it is detected and cut
    shutil.copy(bikes, raw / "bikes.mp4")
    monkeypatch.setattr(split_mod, "detect_scenes", detect_scenes)
    _, third = _split(raw, out, previous=again)
    assert len(calls) == 5 and all("carphone" not in str(c) for c in calls)
    assert third.filter(pl.col("source_path") == "carphone.mp4").equals(first)
    # a clip file damaged on disk is cut again
    damaged = third.filter(pl.col("source_path") == "bikes.mp4").row(0, named=True)
    with open(damaged["path"], "ab") as f:
        f.write(b"junk")
    calls.clear()
    _split(raw, out, previous=third)
    assert len(calls) == 1


def test_clip_id_depends_on_pixel_params():
    cfg = SplitConfig()
    a = make_clip_id("s" * 64, 0, 10, cfg, 0)
    assert a == make_clip_id("s" * 64, 0, 10, SplitConfig(), 0)
    assert a != make_clip_id("s" * 64, 0, 10, SplitConfig(crf=23), 0)
    assert a != make_clip_id("s" * 64, 0, 10, SplitConfig(fps=16.0), 0)
    assert a != make_clip_id("s" * 64, 1, 10, cfg, 0)
    # detector settings change spans, not the pixels of a given span
    assert a == make_clip_id("s" * 64, 0, 10, SplitConfig(detector="content"), 0)


def test_rotated_source_gives_upright_clip(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    src = write_video(tmp_path / "plain.mp4", [textured(64, 96, i % 3) for i in range(40)])
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-i", str(src), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(raw / "rot.mp4")], check=True)
    _, clips = _split(raw, tmp_path / "clips")
    row = clips.row(0, named=True)
    assert row["status"] == "ok" and row["rotation_applied"] in (90, 270)
    assert (row["width"], row["height"]) == (64, 96)


def test_resample_to_target_fps(tmp_path, carphone):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "carphone.mp4")
    _, clips = _split(raw, tmp_path / "clips", cfg=SplitConfig(fps=16.0))
    row = clips.row(0, named=True)
    assert row["status"] == "ok" and row["resampled"] and row["fps"] == 16.0
    assert row["n_frames"] == int(120 / (30000 / 1001) * 16) == len(decode_all(row["path"]))


def test_frame_count_mismatch_is_an_error_naming_the_clip(tmp_path, carphone, monkeypatch):
    import pipeline.curate.split.cutting as cutting

    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "carphone.mp4")
    real = cutting.cut_argv
    # ffmpeg writes one frame fewer than the span holds
    monkeypatch.setattr(cutting, "cut_argv", lambda src, dst, seek, n, *a, **k: real(src, dst, seek, n - 1, *a, **k))
    _, clips = _split(raw, tmp_path / "clips")
    row = clips.row(0, named=True)
    assert row["status"] == "error"
    assert row["clip_id"] in row["reason"] and "decoded 119 frames" in row["reason"]
    assert not (tmp_path / "clips" / f"{row['clip_id']}.mp4").exists()


def test_the_index_in_the_clips_folder_makes_a_rerun_incremental_and_leftovers_go(tmp_path, carphone, monkeypatch):
    """As under `dvc repro`, which deletes clips.parquet before the stage: the table kept in the clips folder is
    the reuse index; .tmp-* files of a killed run are removed."""
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "carphone.mp4")
    out = tmp_path / "clips"
    _, first = _split(raw, out)
    (out / ".tmp-abc.mp4.x1y2.mp4").write_bytes(b"half a clip")
    calls = []
    real_cut = split_mod.cut_clip
    monkeypatch.setattr(split_mod, "cut_clip", lambda *a, **k: calls.append(a[1]) or real_cut(*a, **k))
    _, again = _split(raw, out)  # no previous table given
    assert calls == [] and again.equals(first)
    assert not list(out.glob(".tmp-*"))


def test_a_stream_that_starts_late_is_cut_on_its_own_timeline(tmp_path):
    """Video 0.6 s after the audio: seeking from the first video frame's time cuts 15 frames early; the content
    check catches such a cut, and split seeks on the stream's own timeline."""
    from pipeline.curate.probe.files import video_timeline
    from pipeline.curate.split.cutting import CutError, cut_clip

    src, cuts = scenes_video(tmp_path / "v.mp4", [30, 30, 30])
    late = tmp_path / "late.mp4"
    subprocess.run([ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=duration=5",
                    "-itsoffset", "0.6", "-i", str(src), "-map", "1:v", "-map", "0:a", "-c:v", "copy", "-c:a", "aac",
                    str(late)], check=True)
    times, offset = video_timeline(late)
    assert offset == pytest.approx(0.6, abs=0.01)
    with pytest.raises(CutError, match="landed on other frames"):
        cut_clip(late, tmp_path / "wrong.mp4", times, 32, 58, Encoding())  # as before: no offset
    cut_clip(late, tmp_path / "right.mp4", times, 32, 58, Encoding(), offset_s=offset)
    src_frames, clip = decode_all(late), decode_all(tmp_path / "right.mp4")
    for i in (0, len(clip) - 1):
        diffs = [np.abs(clip[i].astype(float) - f.astype(float)).mean() for f in src_frames]
        assert int(np.argmin(diffs)) == 32 + i


def test_byte_identical_sources_give_one_set_of_clips(tmp_path, carphone):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "a.mp4")
    shutil.copy(carphone, raw / "b.mp4")
    sources, clips = _split(raw, tmp_path / "clips")
    b = sources.filter(pl.col("path") == "b.mp4").row(0, named=True)
    assert b["status"] == "rejected" and b["reason"] == "duplicate of a.mp4"
    assert clips["clip_id"].is_unique().all() and set(clips["source_path"]) == {"a.mp4"}


def test_key_columns_must_be_unique():
    from pipeline.core.schemas import SchemaError, check_unique

    df = pl.DataFrame({"clip_id": ["a", "b", "a"]})
    with pytest.raises(SchemaError, match="key column 'clip_id' is not unique: a repeated"):
        check_unique(df, "clips", "data/clips.parquet")
