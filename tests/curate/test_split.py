import shutil
import subprocess

import av
import numpy as np
import polars as pl
import pytest

import pipeline.curate.split.split as split_mod
from pipeline.core import schemas
from pipeline.core.clip import ClipSpan, SourceChanged
from pipeline.curate.measure.config import MeasureConfig, measure_file
from pipeline.curate.measure.scan import scan_video
from pipeline.curate.probe.table import probe_folder
from pipeline.curate.split.scenes import detect_scenes, make_detector
from pipeline.curate.split.spans import Span, plan_spans
from pipeline.curate.split.split import SplitConfig, make_clip_id, split_sources
from tests.curate.test_probe import make_bad_inputs
from tests.helpers.synthetic_media import decode_all, ffmpeg_binary, scenes_video, textured, write_video


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


def _split(raw, out, cfg=None, previous=None, jobs=1, measure=None):
    sources = probe_folder(raw)
    return sources, split_sources(sources, raw, out, cfg or SplitConfig(), measure or MeasureConfig(), previous,
                                  jobs=jobs)


def _detector():
    cfg = SplitConfig()
    return make_detector(cfg.detector, cfg.min_scene_len, cfg.detector_options)


@pytest.mark.parametrize("name", ["bikes", "bunny", "synthetic"])
def test_the_one_decode_finds_pyscenedetects_scenes(name, request, tmp_path):
    """Scene detection inside our decode (frames scaled by swscale to SceneManager's size) gives the
    scenes ``scenedetect.detect`` gives on the same file."""
    path = scenes_video(tmp_path / "syn.mp4", [40, 30, 50], fade_into=2)[0] if name == "synthetic" \
        else request.getfixturevalue(name)
    assert scan_video(path, 0, _detector(), None).scenes == detect_scenes(path, _detector())


@pytest.mark.parametrize("in_flight", [8, 1])
def test_a_scan_without_threads_gives_the_same_scenes_and_rows(carphone, monkeypatch, in_flight):
    """In parallel workers the decode and the faces run without threads of their own: nothing they
    produce may change (faces measured inline instead of in their thread; with one frame in flight,
    the decoding thread measures every frame the face thread is not free for, so the two mix)."""
    monkeypatch.setattr("pipeline.curate.measure.scan.FACES_IN_FLIGHT", in_flight)
    cfg = MeasureConfig()
    threaded = scan_video(carphone, 0, _detector(), cfg, threads=True)
    inline = scan_video(carphone, 0, _detector(), cfg, threads=False)
    assert inline.decoded == threaded.decoded == 120
    assert inline.scenes == threaded.scenes
    assert schemas.frame("measures", inline.measures or []).equals(schemas.frame("measures", threaded.measures or []))
    assert sum(r["face_confidence"] is not None for r in inline.measures or []) == 8


def test_split_bikes_spans_read_from_the_source_nothing_written(tmp_path, bikes):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(bikes, raw / "bikes.mp4")
    _, clips = _split(raw, tmp_path / "clips")
    schemas.validate(clips, "clips")
    ok = clips.filter(pl.col("status") == "ok")
    assert ok.select("start_frame", "end_frame").rows() == [(0, 29), (31, 75), (77, 136), (138, 186), (188, 241)]
    for row in ok.to_dicts():
        assert row["path"] == (raw / "bikes.mp4").as_posix() and row["clip_file"] == ""
        assert row["n_frames"] == row["end_frame"] - row["start_frame"] and row["source_frames"] == 250
        assert (row["width"], row["height"], row["fps"]) == (640, 272, 25.0)
        assert row["source_id"] in row["sha256"] or len(row["sha256"]) == 64
    assert not [f for f in (tmp_path / "clips").iterdir() if f.is_file() and not f.name.startswith(".")]
    measures = schemas.read_table(measure_file(tmp_path / "clips", ok["source_id"][0], MeasureConfig()), "measures")
    assert measures["frame"].to_list() == list(range(0, 250, 3))  # every 3rd frame: 25 fps / 8 per second


def _bad_timelines(tmp_path, carphone) -> dict:
    """A variable frame rate video and one whose video stream starts 0.6 s after its audio."""
    d = tmp_path / "made"
    d.mkdir()
    ff = [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y"]
    subprocess.run([*ff, "-i", str(carphone), "-vf", r"select='not(eq(mod(n\,3)\,2))'", "-fps_mode", "vfr",
                    "-c:v", "libx264", "-crf", "18", str(d / "vfr.mp4")], check=True)
    src = scenes_video(d / "scenes.mp4", [30, 30, 30])[0]
    subprocess.run([*ff, "-f", "lavfi", "-i", "sine=duration=5", "-itsoffset", "0.6", "-i", str(src), "-map", "1:v",
                    "-map", "0:a", "-c:v", "copy", "-c:a", "aac", str(d / "late.mp4")], check=True)
    return {"vfr": d / "vfr.mp4", "late": d / "late.mp4"}


@pytest.mark.parametrize("name", ["bikes", "carphone", "bunny", "vfr", "late", "vfr16"])
def test_every_stage_reads_the_source_frames_of_its_span(name, request, tmp_path, carphone):
    """Frame accuracy: the frames a clip row gives (ClipSpan: what score's thumbnails, caption, encode and
    export read) are the source's frames at the span's indices, bitwise, as a plain decode loop numbers them:
    on the samples, a variable frame rate video (by time when resampled) and a late-starting stream."""
    made = _bad_timelines(tmp_path, carphone) if name in ("vfr", "late", "vfr16") else {}
    src = made.get(name.removesuffix("16")) or request.getfixturevalue(name)
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(src, raw / "v.mp4")
    cfg = SplitConfig(min_s=0.5, fps=16.0 if name == "vfr16" else None)
    _, clips = _split(raw, tmp_path / "clips", cfg=cfg, measure=MeasureConfig(faces=False))
    ok = clips.filter(pl.col("status") == "ok").to_dicts()
    assert ok, clips["reason"].to_list()
    with av.open(str(src)) as c:
        decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    times = [t - decoded[0][0] for t, _ in decoded]
    for row in ok:
        span = ClipSpan.from_row(row)
        want = list(range(row["start_frame"], row["end_frame"]))
        if cfg.fps:  # resampled by time: frame k is the one on screen at start + k / fps (ffmpeg's rounding)
            want = [max(i for i in range(row["start_frame"], row["end_frame"])
                        if times[i] < times[row["start_frame"]] + (k + 0.5) / cfg.fps - 1e-9)
                    for k in range(row["n_frames"])]
            assert row["resampled"] and row["fps"] == 16.0
        assert span.source_indices() == want
        got = span.read()
        assert got.shape[0] == row["n_frames"] == len(want)
        picks = sorted({0, len(want) // 2, len(want) - 1})
        for k in picks:
            assert np.array_equal(got[k], decoded[want[k]][1]), (row["clip_id"], k)
        assert np.array_equal(np.stack(list(span.iter(picks))), got[picks])


def test_a_changed_source_fails_loudly_naming_it(tmp_path, carphone, bikes):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "v.mp4")
    _, clips = _split(raw, tmp_path / "clips")
    shutil.copy(bikes, raw / "v.mp4")  # replaced behind the pipeline's back
    with pytest.raises(SourceChanged, match=r"v\.mp4: has 250 frames, 120 when it was split"):
        ClipSpan.from_row(clips.row(0, named=True)).read([0])


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
    """A re-run decodes nothing; a new video is the only one decoded; a detector change decodes each source
    once more without measuring it again, a decode-time score param measures again."""
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "carphone.mp4")
    out = tmp_path / "clips"
    _, first = _split(raw, out)
    calls = []
    real_scan = split_mod.scan_video
    monkeypatch.setattr(split_mod, "scan_video", lambda p, r, d, m, **k: calls.append((p.name, d is not None, m is not None))
                        or real_scan(p, r, d, m, **k))
    _, again = _split(raw, out)  # no previous table: the index in the clips folder
    assert calls == [] and again.equals(first)
    shutil.copy(bikes, raw / "bikes.mp4")
    _, third = _split(raw, out)
    assert calls == [("bikes.mp4", True, True)]
    assert third.filter(pl.col("source_path") == "carphone.mp4").equals(first)
    calls.clear()
    _split(raw, out, cfg=SplitConfig(detector="content"))
    assert sorted(calls) == [("bikes.mp4", True, False), ("carphone.mp4", True, False)]
    calls.clear()
    _split(raw, out, measure=MeasureConfig(short_side=128))
    assert sorted(calls) == [("bikes.mp4", False, True), ("carphone.mp4", False, True)]


def test_write_clips_writes_files_from_the_spans_and_prunes_them(tmp_path, carphone, bikes):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "carphone.mp4")
    shutil.copy(bikes, raw / "bikes.mp4")
    out = tmp_path / "clips"
    (out / ".tmp-abc.mp4.x1y2.mp4").parent.mkdir(parents=True)
    (out / ".tmp-abc.mp4.x1y2.mp4").write_bytes(b"half a clip")  # left by a killed run
    _, clips = _split(raw, out, cfg=SplitConfig(write_clips=True, preset="ultrafast"))
    assert not list(out.glob(".tmp-*"))
    for row in clips.to_dicts():
        assert row["clip_file"] == (out / f"{row['clip_id']}.mp4").as_posix()
        frames = decode_all(row["clip_file"])
        assert len(frames) == row["n_frames"]
        src = ClipSpan.from_row(row).read([0, row["n_frames"] - 1])
        assert np.abs(frames[0].astype(int) - src[0]).mean() < 6 and np.abs(frames[-1].astype(int) - src[1]).mean() < 6
    (raw / "bikes.mp4").unlink()
    _, after = _split(raw, out)  # write_clips off, bikes gone: its files and caches go
    assert after["clip_file"].to_list() == [""]
    assert not [f for f in out.iterdir() if f.is_file() and not f.name.startswith(".")]
    cached = [f.name for d in (".scenes", ".measure") for f in (out / d).iterdir()]
    assert cached and all(n.startswith(after["source_id"][0]) for n in cached)


def test_clip_id_depends_on_pixel_params():
    cfg = SplitConfig()
    a = make_clip_id("s" * 64, 0, 10, cfg, 0)
    assert a == make_clip_id("s" * 64, 0, 10, SplitConfig(), 0)
    assert a != make_clip_id("s" * 64, 0, 10, SplitConfig(fps=16.0), 0)
    assert a != make_clip_id("s" * 64, 1, 10, cfg, 0)
    assert a != make_clip_id("s" * 64, 0, 10, cfg, 90)
    # clip files' encoding and the detector change neither the frames of a span nor its id
    assert a == make_clip_id("s" * 64, 0, 10, SplitConfig(crf=23, write_clips=True), 0)
    assert a == make_clip_id("s" * 64, 0, 10, SplitConfig(detector="content"), 0)


def test_photo_ids_are_the_ids_their_png_clip_files_had():
    """A photo's pixels did not change with spans (the upright photo either way): nor did its id."""
    from pipeline.core.fs import sha256_json

    old = sha256_json({"source_id": "s" * 64, "kind": "image", "span": [0, 1], "fps": None, "rotation": 0,
                       "encoding": "png-rgb"})[:16]
    assert make_clip_id("s" * 64, 0, 1, SplitConfig(fps=16.0), 0, kind="image") == old


def test_rotated_source_gives_upright_clip(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    src = write_video(tmp_path / "plain.mp4", [textured(64, 96, i % 3) for i in range(40)])
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-i", str(src), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(raw / "rot.mp4")], check=True)
    _, clips = _split(raw, tmp_path / "clips", measure=MeasureConfig(faces=False))
    row = clips.row(0, named=True)
    assert row["status"] == "ok" and row["rotation_applied"] in (90, 270)
    assert (row["width"], row["height"]) == (64, 96)
    assert ClipSpan.from_row(row).read([0]).shape == (1, 96, 64, 3)


def test_resample_to_target_fps(tmp_path, carphone):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "carphone.mp4")
    _, clips = _split(raw, tmp_path / "clips", cfg=SplitConfig(fps=16.0))
    row = clips.row(0, named=True)
    assert row["status"] == "ok" and row["resampled"] and row["fps"] == 16.0
    assert row["n_frames"] == int(120 / (30000 / 1001) * 16) == len(ClipSpan.from_row(row).source_indices())


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
