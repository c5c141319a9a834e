"""A takedown end to end, with `dvc repro` in a fresh copy of the repository: train on real samples with
their records, `vlp withdraw` the astronaut portrait, repro, gc the cache, audit what is left; and the
consent filters on the same real clips (their faces found by the score stage)."""

import json
import os
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline.core import consent, schemas
from pipeline.core.fs import sha256_file
from pipeline.core.samples import sample_photo, sample_records, sample_video
from pipeline.lineage import audit
from tests.test_dvc_pipeline import _copy_repo, _run

RAW = {"carphone_pristine.mp4": sample_video, "photos/astronaut.png": sample_photo, "photos/chelsea.png": sample_photo,
       "photos/coffee.png": sample_photo}
WITHDRAWN = "photos/astronaut.png"


def _vlp(args, work, env):
    return _run([sys.executable, "-m", "pipeline.cli", *args], work, env)


def _json(args, work, env) -> dict:
    out = _vlp([*args, "--json"], work, env)
    return json.loads(out[out.index("{"):out.rindex("}") + 1])


def _cache_keys(manifest: pl.DataFrame, source_id: str) -> set[str]:
    rows = manifest.filter(pl.col("source_id") == source_id)
    return set(rows["latent_key"].to_list())


@pytest.fixture(scope="module")
def takedown(tmp_path_factory):
    work = tmp_path_factory.mktemp("repo")
    _copy_repo(work)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    params = work / "params.yaml"
    text = params.read_text()
    assert "\n  steps: 200 " in text
    params.write_text(text.replace("\n  steps: 200 ", "\n  steps: 6   ", 1))  # a few tiny steps are enough here
    raw = work / "data/raw"
    for rel, find in RAW.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(find(Path(rel).name), raw / rel)
    (raw / "sources.yaml").write_text(sample_records(list(RAW)))
    for argv in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        _run(argv, work, env)
    _run(["dvc", "repro"], work, env)
    before = work / "data/lora/before"  # a LoRA trained before the withdrawal, kept on disk
    shutil.copytree(work / "data/lora/default", before, ignore=shutil.ignore_patterns("checkpoints"))
    out = {"work": work, "env": env, "astronaut_id": sha256_file(raw / WITHDRAWN)}
    out["withdraw"] = _vlp(["withdraw", WITHDRAWN, "--reason", "asked by email on 1 Dec"], work, env)
    out["audit_before_repro"] = _json(["audit", "--withdrawn"], work, env)
    out["repro"] = _run(["dvc", "repro"], work, env)
    return out


def test_first_run_trained_on_the_portrait_with_its_record(takedown):
    work = takedown["work"]
    run = audit.open_run(work / "data/lora/before/default.safetensors")
    assert takedown["astronaut_id"] in run.manifest["source_id"].to_list()
    portrait = run.manifest.filter(pl.col("source_id") == takedown["astronaut_id"]).row(0, named=True)
    assert (portrait["consent"], portrait["licence"], portrait["face"]) == ("unknown", "public domain", True)
    assert json.loads(run.metadata["vlp.consent"]) == consent.summary(run.manifest)  # of the trained clips
    assert audit.consent_problem(run) == ""


def test_withdraw_records_it_and_names_the_loras(takedown):
    work, out = takedown["work"], takedown["withdraw"]
    assert "consent withdrawn on" in out and "asked by email on 1 Dec" in out
    assert "2 LoRA(s)" in out and "data/lora/before/default.safetensors" in out and "data/lora/default/default.safetensors" in out
    record = yaml.safe_load((work / "data/raw/sources.yaml").read_text())[WITHDRAWN]
    assert record["consent"] == "withdrawn" and record["source_id"] == takedown["astronaut_id"]
    assert record["owner"] == "NASA" and record["withdrawn_reason"] == "asked by email on 1 Dec"
    held = takedown["audit_before_repro"]["holding_withdrawn"]
    assert sorted(h["lora"] for h in held) == ["data/lora/before/default.safetensors", "data/lora/default/default.safetensors"]


def test_repro_drops_the_source_everywhere(takedown):
    work = takedown["work"]
    sources = schemas.read_table(work / "data/sources.parquet", "sources")
    assert sources.filter(pl.col("path") == WITHDRAWN)["consent"].to_list() == ["withdrawn"]
    clips = schemas.read_table(work / "data/clips.parquet", "clips")
    mine = clips.filter(pl.col("source_id") == takedown["astronaut_id"])
    assert mine.select("status", "reason").rows() == [("skipped", "consent withdrawn")]
    # nothing kept of it in the split stage's caches: its frame numbers and measurements are gone
    kept = [p.name for d in (".scenes", ".measure") for p in (work / "data/clips" / d).iterdir()]
    assert kept and not any(n.startswith(takedown["astronaut_id"]) for n in kept)
    dataset = schemas.read_table(work / "data/dataset.parquet", "dataset")
    assert takedown["astronaut_id"] not in dataset["source_id"].to_list() and dataset.height == 3
    rejected = schemas.read_table(work / "data/rejected.parquet", "rejected")
    assert rejected.filter(pl.col("source_id") == takedown["astronaut_id"])["reasons"].to_list() == [["consent withdrawn"]]
    for table in ("captions", "encoded"):
        df = schemas.read_table(work / f"data/{table}.parquet", table)
        assert set(df["clip_id"]) == set(dataset["clip_id"])
    assert json.loads((work / "data/metrics/filter.json").read_text())["rejected_by"]["consent"] == 1


def test_the_lora_trained_after_withdrawal_does_not_contain_it(takedown):
    work = takedown["work"]
    run = audit.open_run(work / "data/lora/default/default.safetensors")  # strict: the manifest's sha256 is checked
    assert run.verified and takedown["astronaut_id"] not in run.manifest["source_id"].to_list()
    assert run.manifest["clip_id"].n_unique() == 3
    assert json.loads(run.metadata["vlp.consent"])["clips"] == run.manifest.filter(~pl.col("held_out"))["clip_id"].n_unique()
    assert audit.consent_problem(run) == ""


def test_audit_lists_only_the_lora_that_still_holds_it(takedown):
    work, env = takedown["work"], takedown["env"]
    held = _json(["audit", "--withdrawn"], work, env)["holding_withdrawn"]
    assert [h["lora"] for h in held] == ["data/lora/before/default.safetensors"]
    assert held[0]["sources"][0]["path"] == WITHDRAWN and held[0]["sources"][0]["withdrawn_reason"] == "asked by email on 1 Dec"
    text = _vlp(["audit", "--source", f"data/raw/{WITHDRAWN}"], work, env)
    assert "consent withdrawn on" in text and "owner NASA" in text and "data/lora/before/default.safetensors" in text
    assert "data/lora/default/default.safetensors" not in text


def test_cache_gc_removes_its_entries(takedown):
    work, env = takedown["work"], takedown["env"]
    old = audit.open_run(work / "data/lora/before/default.safetensors").manifest
    new = audit.open_run(work / "data/lora/default/default.safetensors").manifest
    gone = _cache_keys(old, takedown["astronaut_id"])
    kept = set(new["latent_key"]) | set(new["text_key"])
    assert gone and not gone & kept
    indexes = [f for f in ("data/encoded.parquet", "data/prompts.parquet", "data/sample_images.parquet") if (work / f).exists()]
    out = _vlp(["cache", "gc", *[a for f in indexes for a in ("--keep", f)], "--delete", "--grace", "0"], work, env)
    assert "deleted" in out
    remaining = {p.stem for p in (work / "data/cache").rglob("*.safetensors")}
    assert not gone & remaining
    assert set(new["latent_key"]) <= remaining and set(new["text_key"]) <= remaining


def test_consent_filters_on_the_real_clips(takedown):
    """require_consent keeps exactly the sources with consent yes; faces_require_consent drops the clip with a
    face (carphone, consent unknown) and keeps the photos without one (`vlp filter`: the stage's own runner)."""
    work, env = takedown["work"], takedown["env"]
    scores = schemas.read_table(work / "data/scores.parquet", "scores")
    clips = schemas.read_table(work / "data/clips.parquet", "clips").join(scores, on="clip_id")
    faces = dict(zip(clips["source_path"].to_list(), clips["face"].to_list()))
    assert faces == {"carphone_pristine.mp4": True, "photos/chelsea.png": False, "photos/coffee.png": False}

    def kept(*settings):
        _vlp(["filter", *[a for s in settings for a in ("-S", s)]], work, env)
        dataset = schemas.read_table(work / "data/dataset.parquet", "dataset")
        rejected = schemas.read_table(work / "data/rejected.parquet", "rejected")
        why = {p: r for p, r in zip(rejected["source_path"].to_list(), rejected["reasons"].to_list())}
        return sorted(dataset["source_path"].to_list()), why

    paths, why = kept("filter.require_consent=true")
    assert paths == ["photos/chelsea.png", "photos/coffee.png"]
    assert why["carphone_pristine.mp4"] == ["consent: unknown"] and why[WITHDRAWN] == ["consent withdrawn"]
    paths, why = kept("filter.faces_require_consent=true")
    assert paths == ["photos/chelsea.png", "photos/coffee.png"]
    assert why["carphone_pristine.mp4"][0].startswith("face without consent: consent unknown")
    paths, _ = kept()
    assert paths == ["carphone_pristine.mp4", "photos/chelsea.png", "photos/coffee.png"]
