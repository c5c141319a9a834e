"""Score stage: one decode per clip at a fixed short side, scorers on the shared frames."""

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from pipeline.core import schemas
from pipeline.curate.score.frames import DecodeError, FrameSampling, decode_frames
from pipeline.curate.score.scoring import ScoreConfig, score_clips
from tests.helpers.curation_media import LETTERBOX, PAN_PX, PILLARBOX, clips_table, make_media


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex perceptual hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


@pytest.fixture(scope="module")
def scored(tmp_path_factory, carphone, bunny):
    root = tmp_path_factory.mktemp("score")
    media = make_media(root, carphone, bunny)
    table = score_clips(clips_table(media, root), root, ScoreConfig(), jobs=2)
    return {r["clip_id"].removeprefix("clip-"): r for r in table.to_dicts()}, table, media, root


def test_table_matches_schema_one_row_per_clip(scored):
    rows, table, media, _ = scored
    schemas.validate(table, "scores")
    assert sorted(rows) == sorted(media)
    assert all(r["status"] == "ok" for n, r in rows.items() if n != "broken")


def test_frames_decoded_at_fixed_short_side(carphone):
    sampling = FrameSampling(short_side=96, sample_fps=5.0, max_frames=8)
    frames = decode_frames(carphone, sampling=sampling)
    assert frames.n_frames == 120 and (frames.width, frames.height) == (176, 144)
    assert all(min(g.shape) == 96 and g.dtype == np.uint8 for g in frames.gray)
    assert len(frames.gray) == 8  # 4 s at 5 fps is 20 frames, capped to 8 spread over the clip
    assert frames.times[0] == 0.0 and frames.times[-1] == pytest.approx(119 / frames.fps, abs=1e-3)


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


def test_undecodable_clip_is_an_error_row_others_go_on(scored):
    broken = scored[0]["broken"]
    assert broken["status"] == "error"
    assert "broken.mp4" in broken["reason"] and "\n" not in broken["reason"]
    assert broken["motion"] is None and broken["phash"] is None


def test_decode_error_names_the_file(tmp_path):
    with pytest.raises(DecodeError, match="missing.mp4"):
        decode_frames(tmp_path / "missing.mp4")


def test_split_error_rows_are_not_scored(scored):
    _, _, media, root = scored
    clips = clips_table(media, root, ["carphone"])
    bad = clips.with_columns(pl.lit("clip-x").alias("clip_id"), pl.lit("error").alias("status"))
    out = score_clips(pl.concat([clips, bad]), root, ScoreConfig(), jobs=1)
    assert out["clip_id"].to_list() == ["clip-carphone"]



def test_params_file_defaults_match_config():
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    assert ScoreConfig.from_params(params["score"]) == ScoreConfig()
    with pytest.raises(ValueError, match="score.short_sid: unknown key"):
        ScoreConfig.from_params({"short_sid": 3})
