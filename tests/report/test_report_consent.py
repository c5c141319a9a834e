"""The report's consent and likeness parts: each source's licence and consent, a face flag per clip, the
warning banner when a kept clip with a face lacks consent, and each run's consent summary."""

import polars as pl
import pytest

from pipeline.core import schemas
from pipeline.report.report import ReportConfig, build_report
from tests.helpers.fake_runs import manifest_row, write_run
from tests.helpers.fake_tables import build


@pytest.fixture
def project(tmp_path):
    t = build(tmp_path)
    data = tmp_path / "data"
    records = {"people/alice_walk.mp4": ("Alice", "CC-BY-4.0", "unknown", "Alice"), "bob.mp4": ("Bob", "", "yes", ""),
               "photos/cat <1>.png": ("", "CC0-1.0", "withdrawn", "a cat")}
    sources = t["sources"].with_columns(
        pl.col("path").replace_strict({p: r[0] for p, r in records.items()}, default="").alias("owner"),
        pl.col("path").replace_strict({p: r[1] for p, r in records.items()}, default="").alias("licence"),
        pl.col("path").replace_strict({p: r[2] for p, r in records.items()}, default="unknown").alias("consent"),
        pl.col("path").replace_strict({p: r[3] for p, r in records.items()}, default="").alias("subject"),
        pl.lit("2026-12-01").alias("withdrawn_on"), pl.lit("sources.yaml:1").alias("record"))
    schemas.write_table(sources, data / "sources.parquet", "sources")
    ids = t["ids"]
    faces = {ids["v1a"]: (0.75, 0.12, True), ids["v1b"]: (0.0, 0.0, False), ids["v2a"]: (1.0, 0.2, True)}
    scores = t["scores"].with_columns(
        pl.col("clip_id").replace_strict({k: v[0] for k, v in faces.items()}, default=None, return_dtype=pl.Float64).alias("face_share"),
        pl.col("clip_id").replace_strict({k: v[1] for k, v in faces.items()}, default=None, return_dtype=pl.Float64).alias("face_area"),
        pl.col("clip_id").replace_strict({k: v[2] for k, v in faces.items()}, default=None, return_dtype=pl.Boolean).alias("face"))
    schemas.write_table(scores, data / "scores.parquet", "scores")
    write_run(data / "lora/run_one", [
        manifest_row(ids["v1a"], "a1" * 32, "people/alice_walk.mp4", consent="unknown", licence="CC-BY-4.0", face_share=0.75,
                     face=True),
        manifest_row(ids["v2a"], "b2" * 32, "bob.mp4", consent="yes", face_share=1.0, face=True)])
    return tmp_path, ids


def _page(root) -> str:
    index = build_report(root / "data", root / "data/report", root / "data/lora", {}, ReportConfig(thumb_width=64), root=root)
    return index.read_text()


def test_sources_licence_consent_faces_and_the_banner(project):
    root, ids = project
    text = _page(root)
    consent = text[text.index('<section id="consent">'):text.index('<section id="histograms">')]
    alice = consent[consent.index("people/alice_walk.mp4"):].split("</tr>")[0]
    assert "Alice" in alice and "CC-BY-4.0" in alice and 'class="badge warn">unknown' in alice and "1 of 3" in alice
    assert 'class="warnrow"' in consent and "no consent" in alice
    bob = consent[consent.index("bob.mp4"):].split("</tr>")[0]
    assert 'class="badge kept">yes' in bob and "warn" not in bob
    cat = consent[consent.index("photos/cat &lt;1&gt;.png"):].split("</tr>")[0]
    assert 'class="badge rejected">withdrawn' in cat and "2026-12-01" in cat
    # the banner names the kept clip with a face whose source's consent is not yes: alice's, not bob's
    banner = text[text.index('id="likeness-warning"'):].split("</p>")[0]
    assert "1 kept clip(s) show a face" in banner and "people/alice_walk.mp4" in banner and "bob.mp4" not in banner
    assert "faces_require_consent" in banner
    # per clip: the face flag, and the warning badge on alice's clip only
    row = text[text.index(f'id="clip-{ids["v1a"]}"'):].split("</tr>")[0]
    assert "face in 75% of frames" in row and "face, consent unknown" in row
    row = text[text.index(f'id="clip-{ids["v2a"]}"'):].split("</tr>")[0]
    assert "face in 100% of frames" in row and "face, consent" not in row
    assert "no face" in text[text.index(f'id="clip-{ids["v1b"]}"'):].split("</tr>")[0]
    assert "not checked" in text[text.index(f'id="clip-{ids["p1"]}"'):].split("</tr>")[0]
    assert "consent unknown</span> CC-BY-4.0" in text  # the source's summary line
    # the run: its consent summary and per-clip columns
    run = text[text.index('id="run-run_one"'):]
    assert "Consent of its trained clips: 2 clips: consent unknown 1, yes 1" in run
    assert "no consent" in run


def test_no_banner_when_every_face_has_consent(project):
    root, _ = project
    sources = schemas.read_table(root / "data/sources.parquet", "sources").with_columns(pl.lit("yes").alias("consent"))
    schemas.write_table(sources, root / "data/sources.parquet", "sources")
    text = _page(root)
    assert 'id="likeness-warning"' not in text and 'class="warnrow"' not in text
