"""Consent in the filter and split stages: a withdrawn source always goes; filter.require_consent and
filter.faces_require_consent drop exactly the clips they name, each with a reason that reads on its own."""

import json

import polars as pl
import pytest

from pipeline.core import schemas
from pipeline.core.layout import Layout
from pipeline.curate.filter.filtering import filter_clips
from pipeline.curate.filter.rules import FilterConfig
from pipeline.curate.filter.stage import run as run_filter

# source -> (consent, licence); each source has two clips: one showing a face, one not
SOURCES = {"yes": ("yes", "CC0-1.0"), "unknown": ("unknown", ""), "no": ("no", "proprietary"),
           "withdrawn": ("withdrawn", "CC-BY-4.0")}


def _tables():
    sources, clips, scores = [], [], []
    for i, (name, (consent, licence)) in enumerate(SOURCES.items()):
        sid = f"{i:x}" * 64
        sources.append({c: None for c in schemas.SOURCES} | {
            "source_id": sid[:64], "path": f"{name}.mp4", "kind": "video", "status": "ok", "reason": "",
            "consent": consent, "licence": licence, "owner": "", "withdrawn_on": "2026-12-01" if consent == "withdrawn" else ""})
        for face in (True, False):
            cid = f"{name}-{'face' if face else 'none'}"
            clips.append({c: None for c in schemas.CLIPS} | {
                "clip_id": cid, "source_id": sid[:64], "source_path": f"{name}.mp4", "kind": "video", "scene_index": int(face),
                "start_frame": 0, "end_frame": 50, "start_s": 0.0, "end_s": 2.0, "n_frames": 50, "fps": 25.0,
                "width": 320, "height": 240, "path": f"data/clips/{cid}.mp4", "status": "ok", "reason": "", "note": ""})
            scores.append({c: None for c in schemas.SCORES} | {
                "clip_id": cid, "kind": "video", "duration_s": 2.0, "width": 320, "height": 240, "n_sampled": 16,
                "motion": 0.05, "static_fraction": 0.0, "sharpness": 300.0, "luma_mean": 120.0, "luma_std": 40.0,
                "black_fraction": 0.0, "white_fraction": 0.0, "border_top": 0.0, "border_bottom": 0.0, "border_left": 0.0,
                "border_right": 0.0, "phash": f"{(0x0123456789abcdef * (len(scores) + 1)) % 2**64:016x}",
                "face_share": 0.5 if face else 0.0, "face_area": 0.1 if face else 0.0, "face": face,
                "status": "ok", "reason": ""})
    return (schemas.frame("sources", sources), schemas.frame("clips", clips), schemas.frame("scores", scores))


def _run(**settings):
    sources, clips, scores = _tables()
    result = filter_clips(clips, scores, FilterConfig(**settings), sources)
    reasons = {r["clip_id"]: r["reasons"] for r in result.rejected.to_dicts()}
    return sorted(result.dataset["clip_id"].to_list()), reasons, result


def test_by_default_only_the_withdrawn_source_goes():
    kept, reasons, result = _run()
    assert kept == ["no-face", "no-none", "unknown-face", "unknown-none", "yes-face", "yes-none"]
    assert reasons == {"withdrawn-face": ["consent withdrawn"], "withdrawn-none": ["consent withdrawn"]}
    assert result.metrics["rejected_by"]["consent"] == 2
    row = result.dataset.filter(pl.col("clip_id") == "yes-face").row(0, named=True)
    assert (row["licence"], row["consent"], row["face"], row["face_share"]) == ("CC0-1.0", "yes", True, 0.5)


def test_require_consent_keeps_only_consent_yes():
    kept, reasons, result = _run(require_consent=True)
    assert kept == ["yes-face", "yes-none"]
    assert reasons["unknown-face"] == ["consent: unknown"] and reasons["unknown-none"] == ["consent: unknown"]
    assert reasons["no-none"] == ["consent: no"] and reasons["withdrawn-none"] == ["consent withdrawn"]
    assert result.metrics["rejected_by"]["consent"] == 6


def test_faces_require_consent_drops_only_faces_without_consent():
    kept, reasons, result = _run(faces_require_consent=True)
    assert kept == ["no-none", "unknown-none", "yes-face", "yes-none"]
    assert reasons["unknown-face"] == ["face without consent: consent unknown, a face in 0.5 of its frames"]
    assert reasons["no-face"] == ["face without consent: consent no, a face in 0.5 of its frames"]
    assert reasons["withdrawn-face"] == ["consent withdrawn"]  # named once, by the consent rule
    assert result.metrics["rejected_by"]["face_consent"] == 2


def test_a_withdrawn_source_goes_whatever_else_is_wrong_with_it():
    sources, clips, scores = _tables()
    scores = scores.with_columns(pl.when(pl.col("clip_id") == "withdrawn-face").then(pl.lit("error"))
                                 .otherwise(pl.col("status")).alias("status"))
    result = filter_clips(clips, scores, FilterConfig(), sources)
    reasons = {r["clip_id"]: r["reasons"] for r in result.rejected.to_dicts()}
    assert reasons["withdrawn-face"] == ["consent withdrawn"]


def test_without_a_sources_table_consent_is_unknown():
    _, clips, scores = _tables()
    result = filter_clips(clips, scores, FilterConfig(require_consent=True))
    assert result.dataset.height == 0 and set(result.rejected["consent"]) == {"unknown"}


def test_the_stage_reads_consent_from_sources_parquet(tmp_path):
    sources, clips, scores = _tables()
    lay = Layout.of(tmp_path)
    for name, df in (("sources", sources), ("clips", clips), ("scores", scores)):
        schemas.write_table(df, tmp_path / f"{name}.parquet", name)
    run_filter({"filter": {"require_consent": True}}, lay)
    dataset = schemas.read_table(lay.dataset, "dataset")
    assert sorted(dataset["clip_id"]) == ["yes-face", "yes-none"]
    assert json.loads(lay.metrics("filter").read_text())["rejected_by"]["consent"] == 6


@pytest.fixture
def split_inputs(tmp_path, carphone):
    import shutil

    from pipeline.curate.probe.table import probe_folder

    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copyfile(carphone, raw / "carphone.mp4")
    return raw, probe_folder(raw)


def test_split_does_not_split_a_withdrawn_source_and_removes_what_it_kept_of_it(split_inputs, tmp_path):
    from pipeline.curate.split.config import SplitConfig
    from pipeline.curate.split.split import split_sources

    raw, sources = split_inputs
    clips_dir = tmp_path / "clips"
    cfg = SplitConfig(preset="ultrafast", write_clips=True)
    first = split_sources(sources, raw, clips_dir, cfg)
    assert first.filter(pl.col("status") == "ok").height >= 1 and list(clips_dir.glob("*.mp4"))
    assert list(clips_dir.glob(".scenes/*")) and list(clips_dir.glob(".measure/*"))
    withdrawn = sources.with_columns(pl.lit("withdrawn").alias("consent"))
    table = split_sources(withdrawn, raw, clips_dir, cfg)
    assert table.select("source_path", "status", "reason").rows() == [("carphone.mp4", "skipped", "consent withdrawn")]
    assert not list(clips_dir.glob("*.mp4"))  # the clip files written before are gone
    assert not list(clips_dir.glob(".scenes/*")) and not list(clips_dir.glob(".measure/*"))  # its frame numbers too
    result = filter_clips(table, schemas.empty("scores"), FilterConfig(), withdrawn)
    assert result.rejected["reasons"].to_list() == [["consent withdrawn"]] and result.dataset.height == 0
