"""Filter stage: rules with a readable reason each, near-duplicates, metrics and plots data."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.core import schemas
from pipeline.curate.filter.filtering import filter_clips
from pipeline.curate.filter.rules import (
    AspectRange,
    FilterConfig,
    MinResolution,
    TooShort,
    find_duplicates,
)
from pipeline.curate.score.scoring import ScoreConfig, score_clips
from tests.helpers.curation_media import clips_dir, clips_table, make_media

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, carphone, bunny):
    root = tmp_path_factory.mktemp("filter")
    media = make_media(root, carphone, bunny)
    clips = clips_table(media, root)
    scores = score_clips(clips, clips_dir(root), ScoreConfig())
    return clips, scores, root


def run(scored, names, cfg=FilterConfig()):
    clips, scores, _ = scored
    sub = clips.filter(pl.col("clip_id").is_in([f"clip-{n}" for n in names]))
    result = filter_clips(sub, scores, cfg)
    reasons = {r["clip_id"].removeprefix("clip-"): r["reasons"] for r in result.rejected.to_dicts()}
    kept = [c.removeprefix("clip-") for c in result.dataset["clip_id"].to_list()]
    return result, kept, reasons


def test_still_is_static_panning_is_kept(scored):
    _, kept, reasons = run(scored, ["still", "panning"])
    assert kept == ["panning"]
    assert len(reasons["still"]) == 1 and reasons["still"][0].startswith("static: motion ")
    assert reasons["still"][0].endswith(" < 0.005")


def test_blurred_copy_rejected_original_passes(scored):
    _, kept, reasons = run(scored, ["carphone", "blurred"])
    assert kept == ["carphone"]
    assert [r.split(":")[0] for r in reasons["blurred"]] == ["blurry"]
    assert reasons["blurred"][0].endswith("< 30")


def test_darkened_copy_rejected_for_exposure(scored):
    _, kept, reasons = run(scored, ["darkened"])
    assert kept == []
    assert any(r.startswith("dark: luma ") and r.endswith("< 30") for r in reasons["darkened"])


def test_black_frames_rejected(scored):
    _, kept, reasons = run(scored, ["half_black"])
    assert kept == []
    assert [r.split(":")[0] for r in reasons["half_black"]] == ["black frames"]
    assert reasons["half_black"][0].endswith("of frames near-black > 0.25")


def test_letterbox_and_pillarbox_rejected(scored):
    _, kept, reasons = run(scored, ["letterboxed", "pillarboxed"])
    assert kept == []
    assert reasons["letterboxed"] == ["letterbox: top+bottom bars 0.25 > 0.15"]
    assert reasons["pillarboxed"][0].startswith("pillarbox: left+right bars 0.3")
    _, kept, _ = run(scored, ["letterboxed"], FilterConfig(max_letterbox=0.3))
    assert kept == ["letterboxed"]


def test_copies_deduplicated_kept_one_named(scored):
    _, kept, reasons = run(scored, ["carphone", "carphone_copy", "panning"])
    assert sorted(kept) == ["carphone", "panning"]
    assert reasons["carphone_copy"] == ["duplicate of clip-carphone (phash distance 0 <= 6)"]


def test_duplicate_keeps_the_longest_then_sharpest():
    base = {"source_id": "s", "scene_index": 0, "phash": "ffff0000ffff0000"}
    rows = [
        {**base, "clip_id": "short", "source_id": "a", "duration_s": 2.0, "sharpness": 900.0},
        {**base, "clip_id": "long-soft", "source_id": "b", "duration_s": 5.0, "sharpness": 100.0},
        {**base, "clip_id": "long-sharp", "source_id": "c", "duration_s": 5.0, "sharpness": 200.0,
         "phash": "ffff0000ffff0003"},
    ]
    out = find_duplicates(rows, max_distance=6)
    assert out == {
        "long-soft": "duplicate of long-sharp (phash distance 2 <= 6)",
        "short": "duplicate of long-sharp (phash distance 2 <= 6)",
    }
    # Pieces of one scene are consecutive moments, not copies, unless asked.
    same = [{**r, "source_id": "s"} for r in rows]
    assert find_duplicates(same, max_distance=6) == {}
    assert len(find_duplicates(same, max_distance=6, same_scene=True)) == 2


def test_image_never_static(scored):
    result, kept, reasons = run(scored, ["image"], FilterConfig(min_motion=10.0, max_static_fraction=0.0))
    assert kept == ["image"], reasons
    row = result.dataset.to_dicts()[0]
    assert row["motion"] is None and row["kind"] == "image"
    _, kept, reasons = run(scored, ["image"], FilterConfig(image_min_sharpness=1e6))
    assert reasons["image"][0].startswith("blurry: sharpness ") and reasons["image"][0].endswith("< 1e+06")


def test_errors_are_rejected_with_their_reason(scored):
    clips, scores, _ = scored
    split_err = clips.filter(pl.col("clip_id") == "clip-carphone").with_columns(
        pl.lit("clip-cut").alias("clip_id"), pl.lit("error").alias("status"),
        pl.lit("clip cut: decoded 3 frames, span 0-5 should give 5").alias("reason"))
    unscored = clips.filter(pl.col("clip_id") == "clip-carphone").with_columns(pl.lit("clip-new").alias("clip_id"))
    sub = pl.concat([clips.filter(pl.col("clip_id").is_in(["clip-broken", "clip-panning"])), split_err, unscored])
    result = filter_clips(sub, scores, FilterConfig())
    reasons = {r["clip_id"]: r["reasons"] for r in result.rejected.to_dicts()}
    assert result.dataset["clip_id"].to_list() == ["clip-panning"]
    assert reasons["clip-broken"][0].startswith("score error: ") and "broken.mp4" in reasons["clip-broken"][0]
    assert reasons["clip-cut"] == ["split error: clip cut: decoded 3 frames, span 0-5 should give 5"]
    assert reasons["clip-new"][0].startswith("not scored")
    by = result.metrics["rejected_by"]
    assert (by["score_error"], by["split_error"], by["not_scored"]) == (1, 1, 1)


def test_metrics_and_plot_rows(scored):
    result, kept, reasons = run(scored, ["carphone", "carphone_copy", "blurred", "darkened", "still", "panning"])
    m = result.metrics
    assert (m["clips"], m["kept"], m["rejected"]) == (6, 2, 4)
    assert m["rejected_by"]["duplicate"] == 1 and m["rejected_by"]["static"] == 1
    assert m["rejected_by"]["dark"] == 1 and m["rejected_by"]["blurry"] >= 1
    schemas.validate(result.dataset, "dataset")
    schemas.validate(result.rejected, "rejected")
    plots = result.plot_rows
    assert plots.height == 6 and plots.filter(pl.col("kept")).height == 2
    assert set(plots.filter(~pl.col("kept"))["reason"].to_list()) >= {"duplicate", "static", "blurry"}
    # what the DVC plot templates (.dvc/plots/) colour by and draw: the verdict (kept, or the first rule that
    # rejected the clip) and the thresholds the rules held each clip to
    assert plots["verdict"].to_list() == [r or "kept" for r in plots["reason"].to_list()]
    assert plots["verdict"].to_list().count("kept") == 2
    assert set(plots["sharpness_min"].to_list()) == {30.0} and set(plots["motion_min"].to_list()) == {0.005}
    assert plots["duration_s_max"].to_list() == [60.0] * 6


def test_plot_limits_per_kind():
    from pipeline.curate.filter.filtering import LIMIT_COLUMNS, plot_limits

    cfg = FilterConfig(min_sharpness=40, image_min_sharpness=90, max_duration_s=0)
    video, image = plot_limits("video", cfg), plot_limits("image", cfg)
    assert list(video) == list(image) == LIMIT_COLUMNS
    assert (video["sharpness_min"], image["sharpness_min"]) == (40.0, 90.0)
    assert video["duration_s_max"] is None and video["duration_s_min"] == 1.0  # max 0: no limit
    assert image["motion_min"] is None and image["static_fraction_max"] is None and image["duration_s_min"] is None
    assert (video["luma_mean_min"], video["luma_mean_max"], image["luma_std_min"]) == (30.0, 225.0, 12.0)
    # every limit column is named after a plotted score, so a template finds "<score>_min" / "<score>_max"
    from pipeline.curate.filter.filtering import PLOT_COLUMNS

    assert {c.rsplit("_", 1)[0] for c in LIMIT_COLUMNS} <= set(PLOT_COLUMNS)


def test_rule_reasons_read_on_their_own():
    assert TooShort(1.0)({"kind": "video", "duration_s": 0.8}) == "too short: 0.80 s < 1 s"
    assert TooShort(1.0)({"kind": "image", "duration_s": 0.0}) is None
    assert MinResolution(256)({"width": 176, "height": 144}) == "resolution: 176x144 below min short side 256"
    assert AspectRange(0.4, 2.5)({"width": 960, "height": 300}) == "aspect: 3.20 outside [0.4, 2.5]"
    assert AspectRange(0.4, 2.5)({"width": 640, "height": 272}) is None


def test_params_file_defaults_match_config():
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert FilterConfig.from_params(params["filter"]) == FilterConfig()
    with pytest.raises(ValueError, match="filter.min_sharpnes: unknown key"):
        FilterConfig.from_params({"min_sharpnes": 3})


def test_stages_write_tables_metrics_and_plots(scored, tmp_path):
    clips, _, root = scored
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "params.yaml").write_text((REPO / "params.yaml").read_text())
    keep = ["clip-carphone", "clip-carphone_copy", "clip-still", "clip-broken"]
    sub = clips.filter(pl.col("clip_id").is_in(keep)).with_columns((pl.lit(str(root) + "/") + pl.col("path")).alias("path"))
    schemas.write_table(sub, work / "data/clips.parquet", "clips")
    shutil.copytree(clips_dir(root) / ".measure", work / "data/clips/.measure")  # what the split stage measured
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    logs = {}
    for stage in ("score", "filter"):
        proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=work, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        logs[stage] = proc.stderr
    assert any("broken.mp4" in line and "WARNING" in line for line in logs["score"].splitlines())
    assert "duplicate of clip-carphone" in logs["filter"]
    scores = schemas.read_table(work / "data/scores.parquet", "scores")
    assert scores.height == 4
    dataset = schemas.read_table(work / "data/dataset.parquet", "dataset")
    rejected = schemas.read_table(work / "data/rejected.parquet", "rejected")
    assert dataset["clip_id"].to_list() == ["clip-carphone"]
    assert rejected.height == 3
    metrics = json.loads((work / "data/metrics/filter.json").read_text())
    assert metrics["kept"] == 1 and metrics["rejected_by"]["duplicate"] == 1
    csv = pl.read_csv(work / "data/plots/scores.csv")
    assert csv.height == 3 and {"motion", "sharpness", "luma_mean", "kept", "verdict", "sharpness_min"} <= set(csv.columns)
