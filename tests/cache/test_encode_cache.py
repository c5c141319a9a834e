"""`vlp cache verify` / `vlp cache gc`, and the encode stage script end to end."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from pipeline.cache.store import CacheStore
from pipeline.cli import main as vlp
from pipeline.core import schemas
from tests.helpers.encode_data import small_dataset

REPO = Path(__file__).resolve().parents[2]


def filled_store(root: Path, n: int = 4) -> CacheStore:
    store = CacheStore(root / "cache")
    for i in range(n):
        key = f"{i:02x}" + "ab" * 31
        store.put(key, {"latents": torch.randn(16, 2, 4, 4).to(torch.bfloat16)},
                  {"kind": "latent", "tensor": "latents", "shape": "[16, 2, 4, 4]", "dtype": "bfloat16"})
    return store


def test_verify_names_every_kind_of_bad_entry(tmp_path, capsys):
    store = filled_store(tmp_path, 5)
    keys = list(store.keys())
    assert vlp(["cache", "verify", "--store", str(store.root)]) == 0
    assert "5 entries, 0 bad" in capsys.readouterr().out

    # 1. flipped bytes inside the tensor data
    p = store.path(keys[0])
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    # 2. truncated file
    p = store.path(keys[1])
    p.write_bytes(p.read_bytes()[:-40])
    # 3. an entry under the wrong name (metadata key differs)
    store.path("ff" + "cd" * 31).parent.mkdir()
    shutil.copy(store.path(keys[2]), store.path("ff" + "cd" * 31))
    # 4. NaN values (written by hand, bypassing the encode stage's check)
    store.put(keys[3], {"latents": torch.full((16, 2, 4, 4), float("nan"))}, {"tensor": "latents"})
    # 5. shape differs from its metadata
    store.put("ee" + "12" * 31, {"latents": torch.zeros(3, 3)}, {"tensor": "latents", "shape": "[16, 2, 4, 4]"})

    assert vlp(["cache", "verify", "--store", str(store.root)]) == 1
    out = capsys.readouterr().out
    bad = {line.split(": ", 1)[0].removeprefix("BAD "): line for line in out.splitlines() if line.startswith("BAD ")}
    assert set(bad) == {str(store.path(k)) for k in [keys[0], keys[1], keys[3], "ff" + "cd" * 31, "ee" + "12" * 31]}
    assert "sha256" in bad[str(store.path(keys[0]))]
    assert "unreadable" in bad[str(store.path(keys[1]))]
    assert "does not match the file name" in bad[str(store.path("ff" + "cd" * 31))]
    assert "NaN" in bad[str(store.path(keys[3]))]
    assert "shape" in bad[str(store.path("ee" + "12" * 31))]
    assert "7 entries, 5 bad" in out
    assert vlp(["cache", "verify", "--store", str(store.root), "--delete-bad"]) == 1
    assert sorted(store.keys()) == sorted([keys[2], keys[4]])
    assert vlp(["cache", "verify", "--store", str(store.root)]) == 0


def test_gc_lists_then_deletes_unreferenced_entries(tmp_path, capsys):
    store = filled_store(tmp_path, 4)
    keys = list(store.keys())
    index = tmp_path / "encoded.parquet"
    pl.DataFrame({"latent_key": [keys[0]], "text_key": [keys[1]]}).write_parquet(index)
    other = tmp_path / "other.parquet"
    pl.DataFrame({"latent_key": [keys[2]], "text_key": [keys[1]]}).write_parquet(other)
    (store.root / keys[0][:2] / ".tmp-leftover.safetensors").write_bytes(b"half")

    assert vlp(["cache", "gc", "--store", str(store.root), "--keep", str(index), "--keep", str(other), "--grace", "0"]) == 0
    out = capsys.readouterr().out
    assert str(store.path(keys[3])) in out and "1 entries" in out
    assert set(store.keys()) == set(keys)  # listing only

    assert vlp(["cache", "gc", "--store", str(store.root), "--keep", str(index), "--delete", "--grace", "0"]) == 0
    assert set(store.keys()) == {keys[0], keys[1]}
    assert not store.leftovers()
    assert vlp(["cache", "gc", "--store", str(store.root), "--keep", str(tmp_path / "missing.parquet")]) == 2


def test_stage_script_writes_table_metrics_and_reuses_on_rerun(tmp_path):
    ds, caps = small_dataset(tmp_path)
    schemas.write_table(ds, tmp_path / "data" / "dataset.parquet", "dataset")
    schemas.write_table(caps, tmp_path / "data" / "captions.parquet", "captions")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["encode"].update(frame_buckets=[17], device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run():
        subprocess.run([sys.executable, str(REPO / "stages" / "encode.py")], cwd=tmp_path, env=env, check=True, capture_output=True)
        return json.loads((tmp_path / "data" / "metrics" / "encode.json").read_text())

    m = run()
    assert (m["samples"], m["latents_computed"], m["texts_computed"]) == (4, 4, 4)
    table = schemas.read_table(tmp_path / "data" / "encoded.parquet", "encoded")
    assert table.height == 4 and (tmp_path / "data" / "cache").is_dir()
    # the empty prompt (caption dropout, negative prompt of samples) is cached beside the captions
    prompts = schemas.read_table(tmp_path / "data" / "prompts.parquet", "prompts")
    assert prompts.select("prompt", "role").rows() == [("", "empty")] and m["prompts_computed"] == 1
    empty = CacheStore(tmp_path / "data" / "cache").get(prompts["text_key"][0])["prompt_embeds"]
    assert list(empty.shape) == prompts["text_shape"][0].to_list() and empty.shape[0] >= 1
    # one caption edited: exactly one text encode, no latent encode
    caps = caps.with_columns(
        pl.when(pl.col("clip_id") == "clip_a").then(pl.lit("a blue bike")).otherwise(pl.col("caption")).alias("caption"))
    schemas.write_table(caps, tmp_path / "data" / "captions.parquet", "captions")
    m = run()
    assert (m["latents_computed"], m["latents_reused"], m["texts_computed"], m["texts_reused"]) == (0, 4, 1, 3)
    assert m["prompts_computed"] == 0
    # train.samples' prompts are cached too (a caption with the same text would share the entry)
    params["train"]["samples"] = ["a red bike at dusk", {"prompt": "waves"}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    m = run()
    prompts = schemas.read_table(tmp_path / "data" / "prompts.parquet", "prompts")
    assert prompts.select("prompt", "role").rows() == [("", "empty"), ("a red bike at dusk", "sample"), ("waves", "sample")]
    assert m["prompts_computed"] == 2 and m["texts_computed"] == 0
    assert vlp(["cache", "verify", "--store", str(tmp_path / "data" / "cache")]) == 0


@pytest.mark.parametrize("argv", [["cache"], ["cache", "nope"]])
def test_cache_usage_errors(argv, capsys):
    assert vlp(argv) == 2


def test_verify_of_a_missing_store_is_an_error(tmp_path, capsys):
    missing = tmp_path / "no-such-cache"
    assert vlp(["cache", "verify", "--store", str(missing)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and str(missing) in captured.err
    assert not missing.exists()
