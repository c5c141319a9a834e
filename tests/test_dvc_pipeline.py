"""The whole DVC pipeline on the sample videos, in a fresh copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.core import schemas

REPO = Path(__file__).resolve().parents[1]


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _run(argv, cwd, env):
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{argv} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    work = tmp_path_factory.mktemp("repo")
    _copy_repo(work)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for argv in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        _run(argv, work, env)
    _run([sys.executable, "-m", "pipeline.cli", "fetch-samples", "data/raw"], work, env)
    first = _run(["dvc", "repro"], work, env)
    second = _run(["dvc", "repro"], work, env)
    return work, first, second, env


def test_repro_builds_sources_and_clips(repro):
    work, first, _, _ = repro
    sources = schemas.read_table(work / "data/sources.parquet", "sources")
    assert sorted(sources["path"]) == ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4",
                                       "photos/astronaut.png", "photos/chelsea.png", "photos/coffee.png"]
    assert sources["status"].to_list() == ["ok"] * 6
    clips = schemas.read_table(work / "data/clips.parquet", "clips")
    ok = clips.filter(pl.col("status") == "ok")
    assert ok.filter(pl.col("kind") == "video").height >= 7
    assert ok.filter(pl.col("kind") == "image").height == 3
    assert all((work / p).exists() for p in ok["path"])


def test_every_stage_ran_on_a_mixed_dataset(repro):
    work, _, _, _ = repro
    dataset = schemas.read_table(work / "data/dataset.parquet", "dataset")
    assert set(dataset["kind"]) == {"video", "image"}
    captions = schemas.read_table(work / "data/captions.parquet", "captions")
    assert set(captions["clip_id"]) == set(dataset["clip_id"])
    assert captions["status"].to_list() == ["ok"] * captions.height
    encoded = schemas.read_table(work / "data/encoded.parquet", "encoded")
    assert set(encoded["clip_id"]) == set(dataset["clip_id"])
    run = work / "data/lora/default"
    for name in ("default.safetensors", "default_comfy.safetensors", "manifest.parquet", "loss.csv", "metrics.json"):
        assert (run / name).exists(), name
    manifest = schemas.read_table(run / "manifest.parquet", "manifest")
    assert set(manifest["kind"]) == {"video", "image"}
    assert set(manifest["sample_id"]) == set(encoded["sample_id"])
    assert (work / "data/report/index.html").exists()


def test_audit_names_the_clips_of_the_run(repro):
    work, _, _, env = repro
    out = _run([sys.executable, "-m", "pipeline.cli", "audit", "data/lora/default/default.safetensors", "--json"],
               work, env)
    report = json.loads(out[out.index("{"):])
    assert report["verified"] is True
    manifest = schemas.read_table(work / "data/lora/default/manifest.parquet", "manifest")
    assert sorted(c["clip_id"] for c in report["clips"]) == sorted(manifest["clip_id"].unique())
    used = _run([sys.executable, "-m", "pipeline.cli", "audit", "--source", "data/raw/bikes.mp4"], work, env)
    assert "data/lora/default/default.safetensors" in used


def test_second_repro_has_nothing_to_do(repro):
    """Only the listing of data/raw runs (it always does, in a second); nothing else re-runs."""
    _, _, second, _ = repro
    assert "Running stage 'list'" in second, second
    for stage in ("probe", "split", "score", "filter", "caption", "encode", "train", "report"):
        assert f"Stage '{stage}' didn't change, skipping" in second, (stage, second)


def _approx(value):
    """Floats (losses, scores) at a relative 1e-3: a float32 CPU result may differ in its last digits on
    another CPU; counts, names and every other value must be equal."""
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_approx(v) for v in value]
    return pytest.approx(value, rel=1e-3) if isinstance(value, float) else value


def test_committed_metrics_match_a_fresh_repro(repro):
    """The committed baseline (data/metrics/*.json, what `dvc exp show` compares against on a fresh clone)
    is what a clean `dvc repro` of the samples gives; nothing in it is a timing (core.timings)."""
    work, _, _, _ = repro
    committed = sorted(p.name for p in (REPO / "data/metrics").glob("*.json"))
    assert {"filter.json", "caption.json", "encode.json", "train.json", "render.json"} <= set(committed)
    for name in committed:
        ours = json.loads((work / "data/metrics" / name).read_text())
        assert ours == _approx(json.loads((REPO / "data/metrics" / name).read_text())), name
    assert (work / "data/timings/caption.json").exists() and (work / "data/timings/train.json").exists()


def test_caption_edit_reencodes_exactly_one_text(repro):
    work, _, _, env = repro
    clip = schemas.read_table(work / "data/captions.parquet", "captions")["clip_id"][0]
    _run([sys.executable, "-m", "pipeline.cli", "caption", "edit", clip, "A person rides a bike on a dirt road."],
         work, env)
    out = _run(["dvc", "repro"], work, env)
    for stage in ("probe", "split", "score", "filter"):
        assert f"Stage '{stage}' didn't change, skipping" in out, stage
    metrics = json.loads((work / "data/metrics/encode.json").read_text())
    assert (metrics["texts_computed"], metrics["latents_computed"]) == (1, 0)
    captions = schemas.read_table(work / "data/captions.parquet", "captions")
    edited = captions.filter(pl.col("clip_id") == clip).row(0, named=True)
    assert (edited["source"], edited["caption"]) == ("edit", "A person rides a bike on a dirt road.")


def test_exp_run_with_another_rank_reruns_only_train(repro):
    work, _, _, env = repro
    out = _run(["dvc", "exp", "run", "-S", "train.rank=16"], work, env)
    for stage in ("probe", "split", "score", "filter", "caption", "encode"):
        assert f"Stage '{stage}' didn't change, skipping" in out, (stage, out[-2000:])
    assert "Running stage 'train'" in out
    metrics = json.loads((work / "data/metrics/encode.json").read_text())
    assert metrics["latents_computed"] == 0 and metrics["texts_computed"] <= 1
    from safetensors import safe_open

    with safe_open(str(work / "data/lora/default/default.safetensors"), "pt") as f:
        assert f.metadata()["vlp.rank"] == "16"


def _fingerprints(root: Path) -> dict[str, tuple[int, str]]:
    """path -> (mtime_ns, sha256) of every file under ``root``."""
    from pipeline.core.fs import sha256_file

    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, sha256_file(p))
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_filter_only_experiment_leaves_captions_cache_and_loras_untouched(repro):
    """README: `dvc exp run filter -S ...` re-runs filter alone; `dvc exp show` compares the kept counts."""
    work, _, _, env = repro
    data = work / "data"
    kept_before = json.loads((data / "metrics/filter.json").read_text())["kept"]
    watched = {name: _fingerprints(data / name) for name in ("cache", "lora", "captions.parts")}
    watched["tables"] = {n: _fingerprints(data)[n] for n in ("captions.parquet", "encoded.parquet", "prompts.parquet")}
    out = _run(["dvc", "exp", "run", "filter", "-S", "filter.min_sharpness=100", "-S", "filter.min_motion=0.03"], work, env)
    assert "Running stage 'filter'" in out
    for stage in ("caption", "encode", "train", "render", "report"):
        assert f"Running stage '{stage}'" not in out, (stage, out[-2000:])
    after = {name: _fingerprints(data / name) for name in ("cache", "lora", "captions.parts")}
    after["tables"] = {n: _fingerprints(data)[n] for n in ("captions.parquet", "encoded.parquet", "prompts.parquet")}
    assert after == watched
    kept = json.loads((data / "metrics/filter.json").read_text())["kept"]
    assert kept < kept_before
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=work, env=env, capture_output=True, text=True, check=True)
    text = json.dumps(json.loads(shown.stdout))  # the baseline and the experiment, with their params and metrics
    assert '"min_sharpness": 100' in text and f'"kept": {kept}' in text and f'"kept": {kept_before}' in text
