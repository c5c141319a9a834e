"""The bad-input corpus (tests/bad_media.py) through probe, split, score and filter: every kind
ends with the row its expectation names, the stages exit 0, nothing hangs."""

import re
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import polars as pl
import pytest

from pipeline.core import schemas
from pipeline.core.clip import ClipSpan
from pipeline.curate.filter.filtering import filter_clips
from pipeline.curate.filter.rules import FilterConfig
from pipeline.curate.probe.files import probe_file, rejected_row
from pipeline.curate.probe.listing import list_raw
from pipeline.curate.probe.table import _table
from pipeline.curate.score.scoring import ScoreConfig, score_clips
from pipeline.curate.split.split import SplitConfig, split_source, write_measures
from tests.helpers.bad_media import KINDS, make_corpus, markdown_table

REPO = Path(__file__).resolve().parents[1]
PER_KIND_S = 120  # a kind that takes longer than this is hung (they are seconds of tiny media)


def _probe_and_split(args):
    rel, raw, clips_dir = args
    row = probe_file(Path(raw) / rel, raw)
    if row["status"] != "ok":
        return row, [], {}
    measured: dict[str, list[dict]] = {}  # written by the parent, as split_sources does (no polars in a worker)
    rows, _ = split_source(row, raw, clips_dir, SplitConfig(), measure=ScoreConfig().measure(), out=measured)
    return row, rows, measured


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Probe and split each kind in a worker with a deadline, then score and filter them all."""
    root = tmp_path_factory.mktemp("bad")
    raw, clips_dir = root / "raw", root / "clips"
    kinds = make_corpus(raw)
    entries = list_raw(raw)
    probed, clip_rows = [], []
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = {e.rel: pool.submit(_probe_and_split, (e.rel, str(raw), str(clips_dir)))
                   for e in entries if e.status == "ok"}
        for e in entries:
            if e.status != "ok":
                probed.append(rejected_row(e.rel, e.reason))
                continue
            row, rows, measured = futures[e.rel].result(timeout=PER_KIND_S)  # TimeoutError naming nothing: see below
            write_measures(measured)
            probed.append(row)
            clip_rows += rows
    sources = _table(probed, raw)
    # a duplicate's clips are dropped here as split_sources drops them (it splits ok sources only)
    ok_ids = set(sources.filter(pl.col("status") == "ok")["path"].to_list())
    clips = schemas.frame("clips", [r for r in clip_rows if r["source_path"] in ok_ids])
    schemas.validate(clips, "clips")
    scores = score_clips(clips.filter(pl.col("status") == "ok"), clips_dir, ScoreConfig())
    result = filter_clips(clips, scores, FilterConfig())
    return kinds, sources, clips, result, root


@pytest.mark.slow
def test_every_kind_ends_with_its_expected_row(corpus):
    kinds, sources, clips, result, _ = corpus
    assert len(kinds) >= 30
    by_path = {r["path"]: r for r in sources.to_dicts()}
    kept = set(result.dataset["source_path"].to_list())
    rejected = result.rejected.to_dicts()
    problems = []
    for name, k in kinds.items():
        src = by_path.get(name)
        if k.outcome == "ignored":
            if src is not None:
                problems.append(f"{name}: should have no row, has {src['status']}: {src['reason']}")
            continue
        if src is None:
            problems.append(f"{name}: no sources row")
            continue
        mine = clips.filter(pl.col("source_path") == name)
        if k.outcome == "rejected":
            if src["status"] != "rejected" or not re.search(k.reason, src["reason"]):
                problems.append(f"{name}: expected rejected /{k.reason}/, got {src['status']}: {src['reason']}")
            continue
        if src["status"] != "ok":
            problems.append(f"{name}: rejected at probe: {src['reason']}")
            continue
        if k.outcome == "no clip":
            rows = mine.to_dicts()
            if len(rows) != 1 or rows[0]["status"] != "skipped" or not re.search(k.reason, rows[0]["reason"]):
                problems.append(f"{name}: expected one skipped row /{k.reason}/, got {[(r['status'], r['reason']) for r in rows]}")
            elif not any(r["source_path"] == name and re.search(k.reason, " ".join(r["reasons"])) for r in rejected):
                problems.append(f"{name}: its no-clip row is not in rejected.parquet")
            continue
        errors = mine.filter(pl.col("status") != "ok")
        if errors.height or mine.height == 0:
            problems.append(f"{name}: split gave {mine.height} clips, errors {errors['reason'].to_list()}")
            continue
        if k.outcome == "kept" and name not in kept:
            why = [r["reasons"] for r in rejected if r["source_path"] == name]
            problems.append(f"{name}: expected kept, every clip rejected: {why}")
        if k.outcome.startswith("filtered"):
            mine_rej = [r for r in rejected if r["source_path"] == name]
            if name in kept or not mine_rej or not all(re.search(k.reason, " ".join(r["reasons"])) for r in mine_rej):
                problems.append(f"{name}: expected {k.outcome}, got kept={name in kept} {[r['reasons'] for r in mine_rej]}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_the_corrected_kinds_hold_the_right_pixels(corpus):
    """Odd sizes are read whole (no clip file: nothing to crop for yuv420p); a 16-bit grey PNG is not
    white; a late-starting stream gives its clips (tests/curate/test_split.py checks their frames)."""
    _, _, clips, _, root = corpus
    odd = clips.filter(pl.col("source_path") == "odd_size.mp4").to_dicts()
    assert odd and all((r["width"], r["height"]) == (333, 187) for r in odd)
    assert ClipSpan.from_row(odd[0]).read([0]).shape == (1, 187, 333, 3)
    grey = clips.filter(pl.col("source_path") == "gray16.png").row(0, named=True)
    pixels = ClipSpan.from_row(grey).read()[0]
    assert 40 < pixels.mean() < 215 and pixels.std() > 20
    late = clips.filter(pl.col("source_path") == "late_start.mp4")
    assert late.height >= 2 and set(late["status"].to_list()) == {"ok"}


@pytest.mark.slow
def test_probe_and_split_stages_exit_0_on_the_corpus_and_never_hang(tmp_path):
    work = tmp_path / "work"
    make_corpus(work / "data" / "raw")
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    for stage in ("list", "probe", "split"):
        proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=work, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{stage}:\n{proc.stderr[-3000:]}"
    sources = schemas.read_table(work / "data/sources.parquet", "sources")
    assert set(sources["path"].to_list()) == {k.name for k in KINDS if k.outcome != "ignored"}
    clips = schemas.read_table(work / "data/clips.parquet", "clips")
    ok_sources = sources.filter(pl.col("status") == "ok")["path"].to_list()
    # every ok source ends with a row in clips.parquet: clips, or one row saying why it gave none
    assert set(ok_sources) <= set(clips["source_path"].to_list())


def test_readme_bad_input_table_is_rendered_from_the_expectations():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "regenerate the README table: python -c " \
        "'from tests.helpers.bad_media import markdown_table; print(markdown_table())'"
