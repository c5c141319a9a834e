"""The report stage: the page holds every clip with its verdict, reasons and caption, its images exist,
it works with later tables missing, and headless Chromium renders it to a non-blank screenshot."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest

from pipeline.core import media, schemas
from pipeline.report.report import ReportConfig, build_report
from tests.helpers.fake_runs import manifest_row, write_run
from tests.helpers.fake_tables import build

THRESHOLDS = {"min_motion": 0.005, "max_static_fraction": 0.75, "min_sharpness": 30.0, "image_min_sharpness": 60.0,
              "min_luma": 30.0, "max_luma": 225.0, "max_duration_s": 0}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    t = build(root)
    ids = t["ids"]
    rows = [manifest_row(ids["v1a"], "a1" * 32, "people/alice_walk.mp4", caption="sks woman walks"),
            manifest_row(ids["v1b"], "a1" * 32, "people/alice_walk.mp4", caption="sks woman turns", caption_source="edit",
                         held_out=True),
            manifest_row(ids["p1"], "c3" * 32, "photos/cat <1>.png", caption="sks cat", kind="image")]
    write_run(root / "data/lora/run_one", rows, steps=30)
    return root, t


def _build(root, data="data", out="data/report"):
    return build_report(root / data, root / out, root / "data/lora", THRESHOLDS, ReportConfig(thumb_width=96), root=root)


def _img_srcs(text):
    return re.findall(r'<img src="([^"]+)"', text)


def test_report_lists_every_clip_with_verdict_reasons_and_caption(project):
    root, t = project
    index = _build(root)
    text = index.read_text()
    ids = t["ids"]
    for cid in ids.values():
        assert f'id="clip-{cid}"' in text
    # Rejection reasons, split error, caption failure, edited badge, escaped text.
    assert "static: static_fraction 0.95 &gt; 0.9" in text and "too dark: luma_mean 12.0 &lt; 30" in text
    assert "decoded 18 frames, span says 20" in text
    assert "caption_failed" in text and "VLM returned an empty caption" in text
    assert "sks woman walks along a &lt;b&gt;street&lt;/b&gt; &amp; waves" in text and "<b>street</b>" not in text
    assert "photos/cat &lt;1&gt;.png" in text
    assert "truncated: 12 of 60 frames decode" in text  # the rejected source
    assert 'class="badge edited"' in text
    # Summary counts.
    assert "6: 4 kept, 1 rejected, 1 error" in text
    assert "3 of 4 kept clips captioned (1 edited by hand), 1 failed" in text
    # Images: three thumbnails per video clip that decodes, one for the photo, histograms, the loss curve.
    srcs = _img_srcs(text)
    assert all((index.parent / s).is_file() for s in srcs)
    thumbs = [s for s in srcs if s.startswith("thumbs/")]
    assert len(thumbs) == 4 * 3 + 1
    assert sum(s.startswith("plots/hist_") for s in srcs) >= 10
    assert "runs/run_one_loss.png" in srcs
    assert 'loading="lazy"' in text
    # The photo's thumbnail is the photo (a red square on a texture), upright and scaled to 96 px wide.
    photo = cv2.imread(str(index.parent / f"thumbs/{ids['p1']}_w96_0.jpg"))
    assert photo.shape[:2] == (72, 96)
    b, g, r = photo[35, 45].astype(int)
    assert r > 180 and g < 100 and b < 100
    # The LoRA run lists its clips, photos included, and which were held out.
    run = text[text.index('id="run-run_one"'):]
    assert all(f"#clip-{ids[k]}" in run for k in ("v1a", "v1b", "p1"))
    assert "held out" in run and "image" in run


def test_thumbnails_are_made_once(project):
    root, t = project
    _build(root)
    thumb = root / "data/report/thumbs" / f"{t['ids']['v1a']}_w96_1.jpg"
    before = thumb.stat().st_mtime_ns
    _build(root)
    assert thumb.stat().st_mtime_ns == before


def test_report_with_later_tables_missing(project, tmp_path):
    root, _ = project
    data = tmp_path / "data"
    data.mkdir()
    for name in ("sources", "clips"):
        shutil.copy(root / "data" / f"{name}.parquet", data / f"{name}.parquet")
    index = build_report(data, tmp_path / "report", tmp_path / "no_lora", {}, ReportConfig(thumb_width=64), root=root)
    text = index.read_text()
    assert "scores.parquet not found: run the score stage" in text
    assert "captions.parquet not found: run the caption stage" in text
    assert "No LoRA runs yet" in text and "No scores yet" in text
    assert "not filtered" in text
    # Scored but not filtered yet: histograms in grey, every clip "not filtered".
    shutil.copy(root / "data/scores.parquet", data / "scores.parquet")
    text = build_report(data, tmp_path / "report", tmp_path / "no_lora", {}, ReportConfig(thumb_width=64), root=root).read_text()
    assert "plots/hist_motion.png" in _img_srcs(text)
    assert "rejected.parquet not found: run the filter stage" in text
    assert text.count('class="badge pending">not filtered') == 5
    # Nothing at all: still a page.
    index = build_report(tmp_path / "empty", tmp_path / "report2", tmp_path / "no_lora", {}, root=root)
    assert "sources.parquet not found: run the probe stage" in index.read_text()


def screenshot(page: Path, png: Path, profile: Path, height: int = 2000) -> np.ndarray:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (bash scripts/setup.sh test installs it)"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           f"--screenshot={png}", f"--window-size=1280,{height}", page.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = cv2.imread(str(png))
    assert img is not None, f"{png}: no screenshot written"
    return img


def test_chromium_renders_a_non_blank_page(project, tmp_path):
    root, _ = project
    index = _build(root)
    img = screenshot(index, tmp_path / "shot.png", tmp_path / "chrome-profile")
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 25
    colors = np.unique((img[::4, ::4] // 32).reshape(-1, 3), axis=0)
    assert len(colors) > 40  # text, header, plots and thumbnails, not a flat page
    # The header band is drawn (dark blue), and the first source's thumbnails are loaded and visible.
    assert img[20, 640].mean() < 100
    blank = screenshot(_blank(tmp_path), tmp_path / "blank.png", tmp_path / "chrome-profile")
    assert blank.std() < 5  # the same check would fail on an empty page


def _blank(tmp_path):
    p = tmp_path / "blank.html"
    p.write_text("<!DOCTYPE html><html><body></body></html>")
    return p


def test_stage_script_and_cli(project, monkeypatch, capsys):
    root, _ = project
    (root / "params.yaml").write_text("filter:\n  min_motion: 0.005\nreport:\n  thumb_width: 80\n  bins: 20\n")
    shutil.rmtree(root / "data/report", ignore_errors=True)
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(repo / "stages/report.py")], cwd=root, check=True, capture_output=True, timeout=300)
    thumb = cv2.imread(str(root / "data/report/thumbs" / f"{project[1]['ids']['v1a']}_w80_0.jpg"))
    assert thumb.shape[1] == 80
    assert (root / "data/report/runs/run_one_loss.png").exists()

    from pipeline.cli import main as vlp

    monkeypatch.chdir(root)
    shutil.rmtree(root / "data/report")
    assert vlp(["report", "--data", "data"]) == 0
    assert "wrote data/report/index.html" in capsys.readouterr().out
    assert (root / "data/report/plots/hist_motion.png").exists()


def test_a_bad_source_only_loses_its_clips_previews(tmp_path, caplog):
    t = build(tmp_path)
    (tmp_path / "data/raw/photos/cat <1>.png").unlink()  # p1: its source is missing
    (tmp_path / "data/raw/bob.mp4").write_bytes(b"not a video")  # v2a: its source does not decode
    clips = t["clips"].with_columns(  # v1c: the source changed since the split (it had 99 frames then)
        source_frames=pl.when(pl.col("clip_id") == t["ids"]["v1c"]).then(99).otherwise(pl.col("source_frames")))
    schemas.write_table(clips, tmp_path / "data/clips.parquet", "clips")
    index = build_report(tmp_path / "data", tmp_path / "report", tmp_path / "no_lora", {}, ReportConfig(thumb_width=64),
                         root=tmp_path)
    text = index.read_text()
    for name in ("v1c", "v2a", "v2b", "p1"):  # changed, undecodable, split error, missing
        row = text[text.index(f'id="clip-{t["ids"][name]}"'):]
        assert row[:row.index("</tr>")].count("no preview") == 1
    assert len([s for s in _img_srcs(text) if s.startswith("thumbs/")]) == 2 * 3
    assert "source file missing" in caplog.text and "99 when it was split" in caplog.text


def test_video_frames_of_a_span_shorter_than_its_row(tmp_path):
    from pipeline.core.clip import ClipSpan
    from pipeline.report.thumbs import video_frames
    from tests.helpers.synthetic_media import scenes_video

    path, _ = scenes_video(tmp_path / "c.mp4", [6, 12], h=32, w=48)
    first, middle, last = video_frames(ClipSpan(str(path), "video", 6, 18), 40)  # the row says 40 frames, the span has 12
    assert first.shape == (32, 48, 3)
    assert np.array_equal(first, media.read_frames(path, [6])[0])  # clip frame 0 is source frame 6
    assert not np.array_equal(first, last)
    assert np.array_equal(middle, last)  # clip frame 20 does not exist: the span's last frame stands in


def test_two_expert_run_lists_each_expert(project, tmp_path):
    root, t = project
    work = tmp_path / "proj"
    shutil.copytree(root, work)
    rows = [manifest_row(t["ids"]["v1a"], "a1" * 32, "people/alice_walk.mp4", caption="sks woman walks")]
    write_run(work / "data/lora/a14b", rows, family="wan2.2-t2v-a14b", experts=("high", "low"))
    html = _build(work).read_text()
    assert "(high-noise expert)" in html and "(low-noise expert)" in html
    assert "a14b_high_noise.safetensors" in html and "a14b_low_noise.safetensors" in html
