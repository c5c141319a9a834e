"""Score stage: each clip's scores aggregated from the measurements the split stage made of its
source's sampled frames (one decode per source, at a fixed short side), over the clip's span."""

import math
from pathlib import Path

import av
import numpy as np
import polars as pl
import pytest
import yaml

from pipeline.core import media as core_media
from pipeline.core import schemas
from pipeline.curate.measure import scan as scan_mod
from pipeline.curate.measure.config import MeasureConfig, measure_file
from pipeline.curate.measure.measures import FaceMeasure
from pipeline.curate.measure.scan import scan_video
from pipeline.curate.score.scoring import ScoreConfig, score_clips
from tests.helpers.curation_media import (
    LETTERBOX,
    PAN_PX,
    PILLARBOX,
    clip_row,
    clips_dir,
    clips_table,
    make_media,
    measure_source,
)
from tests.helpers.synthetic_media import textured, write_video


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex perceptual hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


@pytest.fixture(scope="module")
def scored(tmp_path_factory, carphone, bunny):
    root = tmp_path_factory.mktemp("score")
    media = make_media(root, carphone, bunny)
    table = score_clips(clips_table(media, root), clips_dir(root), ScoreConfig())
    return {r["clip_id"].removeprefix("clip-"): r for r in table.to_dicts()}, table, media, root


def test_table_matches_schema_one_row_per_clip(scored):
    rows, table, media, _ = scored
    schemas.validate(table, "scores")
    assert sorted(rows) == sorted(media)
    assert all(r["status"] == "ok" for n, r in rows.items() if n != "broken")


def test_frames_measured_at_fixed_short_side(monkeypatch, carphone):
    """Every ``step``-th source frame is measured, as luma at ``short_side``; every ``face_every``-th
    of those also in colour at ``face_short_side``."""
    seen = []

    class Record:
        columns = ()

        def __call__(self, frame):
            seen.append((frame.index, frame.gray.shape, frame.gray.dtype, None if frame.rgb is None else frame.rgb.shape))
            return {}

    class Faces(FaceMeasure):  # the face measurer runs in its own thread, on the colour frames
        def __init__(self):
            pass

        def __call__(self, frame):
            colour.append((frame.index, frame.rgb.shape))
            return {}

    colour: list = []
    monkeypatch.setattr(scan_mod, "make_measures", lambda cfg, fps=0.0: [Record(), Faces()])
    cfg = MeasureConfig(short_side=96, sample_fps=5.0, face_short_side=120, face_fps=1.0)
    step, face_every = cfg.step(29.97), cfg.face_every(29.97)
    assert (step, face_every) == (6, 5)
    scan = scan_video(carphone, 0, None, cfg)
    assert scan.decoded == 120 and [i for i, *_ in seen] == list(range(0, 120, step))
    assert all(min(shape) == 96 and dtype == np.uint8 for _, shape, dtype, _ in seen)
    assert seen[0][1] == (96, 118)  # 176x144 at a 96 short side, even width
    assert [i for i, _ in colour] == [seen[k][0] for k in range(0, len(seen), face_every)]
    assert all(rgb[0] == 120 and rgb[2] == 3 for _, rgb in colour)


def test_measured_at_the_same_short_side_whatever_the_resolution(scored):
    _, _, _, root = scored
    cfg = ScoreConfig().measure()
    for name in ("carphone", "carphone_2x"):
        m = schemas.read_table(measure_file(clips_dir(root), f"src-{name}", cfg), "measures")
        assert m.height == 30 and m["frame"].to_list() == list(range(0, 120, 4))
        assert {len(r) for r in m["row_lit"].to_list()} == {160}


def test_motion_same_at_twice_the_resolution(scored):
    rows = scored[0]
    a, b = rows["carphone"]["motion"], rows["carphone_2x"]["motion"]
    assert a > 0.01
    assert abs(a - b) / a < 0.10
    # Sharpness is measured at the same short side too, so it barely moves either.
    a, b = rows["carphone"]["sharpness"], rows["carphone_2x"]["sharpness"]
    assert abs(a - b) / a < 0.15


def test_motion_measures_a_known_pan(scored):
    rows = scored[0]
    truth = PAN_PX * 25 / math.hypot(256, 144)  # frame diagonals per second
    assert rows["panning"]["motion"] == pytest.approx(truth, rel=0.10)
    assert rows["panning"]["static_fraction"] == 0.0
    assert rows["still"]["motion"] < 0.001 and rows["still"]["static_fraction"] == 1.0


def test_blur_lowers_sharpness_darkening_lowers_luma(scored):
    rows = scored[0]
    assert rows["blurred"]["sharpness"] < rows["carphone"]["sharpness"] / 10
    assert rows["darkened"]["luma_mean"] < 0.25 * rows["carphone"]["luma_mean"]
    assert rows["carphone"]["black_fraction"] == 0.0
    assert rows["half_black"]["black_fraction"] == pytest.approx(0.5, abs=0.1)
    assert rows["half_black"]["white_fraction"] == 0.0


def test_bars_measured_within_a_few_percent(scored):
    rows = scored[0]
    lb, pb, orig = rows["letterboxed"], rows["pillarboxed"], rows["carphone"]
    for side in ("border_top", "border_bottom"):
        assert lb[side] == pytest.approx(LETTERBOX, abs=0.02)
    for side in ("border_left", "border_right"):
        assert pb[side] == pytest.approx(PILLARBOX, abs=0.02)
    assert lb["border_left"] + lb["border_right"] < 0.03
    assert orig["border_top"] + orig["border_bottom"] < 0.03


def test_phash_same_for_copies_far_for_other_clips(scored):
    rows = scored[0]
    assert phash_distance(rows["carphone"]["phash"], rows["carphone_copy"]["phash"]) == 0
    assert phash_distance(rows["carphone"]["phash"], rows["carphone_2x"]["phash"]) <= 4
    assert phash_distance(rows["carphone"]["phash"], rows["panning"]["phash"]) > 12
    assert len(rows["carphone"]["phash"]) == 16


def test_image_has_no_motion_but_other_scores(scored):
    img = scored[0]["image"]
    assert img["motion"] is None and img["static_fraction"] is None
    assert img["sharpness"] > 60 and img["n_sampled"] == 1 and img["duration_s"] == 0.0
    assert img["luma_mean"] > 0 and len(img["phash"]) == 16


def test_unmeasured_source_is_an_error_row_others_go_on(scored):
    """The broken file could not be decoded, so it has no measurements: its clip is an error row
    naming it, on one line; every other clip was scored."""
    broken = scored[0]["broken"]
    assert broken["status"] == "error"
    assert "clips/broken.mp4" in broken["reason"] and "\n" not in broken["reason"]
    assert broken["motion"] is None and broken["phash"] is None and broken["sharpness"] is None


@pytest.mark.parametrize("name", ["broken.mp4", "missing.mp4"])
def test_decode_error_names_the_file(tmp_path, name):
    path = tmp_path / name
    if name == "broken.mp4":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(Exception, match=name):
        scan_video(path, 0, None, MeasureConfig(faces=False))


def test_split_error_rows_are_not_scored(scored):
    _, _, media, root = scored
    clips = clips_table(media, root, ["carphone"])
    bad = clips.with_columns(pl.lit("clip-x").alias("clip_id"), pl.lit("error").alias("status"))
    out = score_clips(pl.concat([clips, bad]), clips_dir(root), ScoreConfig())
    assert out["clip_id"].to_list() == ["clip-carphone"]


# --- several clips of one source, re-scoring from the cached measurements ----------------------


BOUNDARY = 24  # first frame of the bright half: a sampled frame (every 3rd at 25 fps)


@pytest.fixture(scope="module")
def two_halves(tmp_path_factory):
    """One measured source: a still textured frame, dark for 24 frames, then the same frame
    brighter and shifted 8 pixels for 24 more (a jump at the boundary), and clips of each half
    and of the whole."""
    root = tmp_path_factory.mktemp("halves")
    scene = textured(72, 144, seed=3)
    dark = (scene[:, :128] * 0.3).astype(np.uint8)
    bright = scene[:, 8:136]
    path = write_video(clips_dir(root) / "halves.mp4", [dark] * BOUNDARY + [bright] * BOUNDARY, fps=25)
    cfg = ScoreConfig(faces=False)
    assert measure_source(path, "video", clips_dir(root), "src-halves", cfg.measure()) is not None
    rel = path.relative_to(root).as_posix()
    clips = schemas.frame("clips", [
        clip_row("halves", rel, "video", root, span, f"clip-{k}")
        for k, span in {"dark": (0, BOUNDARY), "bright": (BOUNDARY, 2 * BOUNDARY), "whole": (0, 2 * BOUNDARY)}.items()
    ])
    return clips, root, cfg


def test_clips_of_one_source_get_the_scores_of_their_own_spans(two_halves):
    clips, root, cfg = two_halves
    rows = {r["clip_id"]: r for r in score_clips(clips, clips_dir(root), cfg).to_dicts()}
    dark, bright, whole = rows["clip-dark"], rows["clip-bright"], rows["clip-whole"]
    assert all(r["status"] == "ok" for r in rows.values())
    assert (dark["n_sampled"], bright["n_sampled"], whole["n_sampled"]) == (8, 8, 16)
    assert dark["luma_mean"] < 0.5 * bright["luma_mean"]
    assert whole["luma_mean"] == pytest.approx((dark["luma_mean"] + bright["luma_mean"]) / 2)
    assert dark["duration_s"] == pytest.approx(BOUNDARY / 25)
    # Each half is still: the jump between them is a pair across the boundary, which only the
    # clip spanning both counts (the bright clip's first sampled frame's flow comes from before it).
    assert dark["static_fraction"] == bright["static_fraction"] == 1.0
    assert dark["motion"] < 0.001 and bright["motion"] < 0.001
    assert whole["static_fraction"] == pytest.approx(14 / 15)
    assert whole["motion"] > 0.002 > max(dark["motion"], bright["motion"])


def test_aggregate_params_rescore_from_the_measurements_without_decoding(scored, monkeypatch):
    """``max_frames`` and ``pixel_share`` only change how the measurements are aggregated: the
    measurements of the split stage's decode are read again, and no frame is decoded."""
    _, _, media, root = scored
    cfg = ScoreConfig(max_frames=8, pixel_share=0.5)
    assert cfg.measure() == ScoreConfig().measure()

    def no_decode(*args, **kwargs):
        raise AssertionError("the score stage decoded a frame")

    clips = clips_table(media, root, ["carphone", "letterboxed", "image"])  # already measured at cfg.measure()
    for module, name in [(scan_mod, "scan_video"), (scan_mod, "measure_image"), (core_media, "decode_all"),
                         (core_media, "read_frames"), (core_media, "iter_frames"), (core_media, "read_image"),
                         (av, "open")]:
        monkeypatch.setattr(module, name, no_decode)
    rows = {r["clip_id"].removeprefix("clip-"): r for r in score_clips(clips, clips_dir(root), cfg).to_dicts()}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["carphone"]["n_sampled"] == 8 and rows["image"]["n_sampled"] == 1
    # a bar row may now have up to half its pixels lit: the letterbox grows a little, never shrinks
    assert rows["letterboxed"]["border_top"] >= scored[0]["letterboxed"]["border_top"]


def test_max_frames_caps_the_frames_read(scored):
    _, _, media, root = scored
    clips = clips_table(media, root, ["carphone", "still"])
    for max_frames, expect in [(48, {"carphone": 30, "still": 25}), (10, {"carphone": 10, "still": 10}),
                               (2, {"carphone": 2, "still": 2})]:
        out = score_clips(clips, clips_dir(root), ScoreConfig(max_frames=max_frames))
        assert {r["clip_id"].removeprefix("clip-"): r["n_sampled"] for r in out.to_dicts()} == expect
    assert scored[0]["carphone"]["n_sampled"] == 30  # fewer sampled frames than the cap: all of them


def test_params_file_defaults_match_config():
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    assert ScoreConfig.from_params(params["score"]) == ScoreConfig()
    with pytest.raises(ValueError, match="score.short_sid: unknown key"):
        ScoreConfig.from_params({"short_sid": 3})
