"""One cache, several writers: two processes encoding overlapping clip sets into the same store at
the same time end with every entry whole and sound, the same keys for the clips they share, and
no temporary file; `vlp cache gc` leaves alone what is younger than its grace period."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from pipeline.cache.store import CacheMiss, CacheStore
from pipeline.core import schemas
from tests.helpers.encode_data import small_dataset

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import sys
    import polars as pl
    from pipeline.cache.store import CacheStore
    from pipeline.core import schemas
    from pipeline.encode.config import EncodeConfig
    from pipeline.encode.encode import encode_dataset
    from pipeline.models.profiles import get_profile

    root, store, clips, out = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
    ds = schemas.read_table(f"{root}/dataset.parquet", "dataset").filter(pl.col("clip_id").is_in(clips))
    caps = schemas.read_table(f"{root}/captions.parquet", "captions")
    cfg = EncodeConfig(frame_buckets=(17,), area=64 * 64, image_area=48 * 48, batch_size=1, device="cpu")
    result = encode_dataset(ds, caps, CacheStore(store), get_profile("tiny"), cfg, root=root)
    schemas.write_table(result.table, out, "encoded")
""")


def test_two_processes_encode_overlapping_clips_into_one_cache(tmp_path):
    ds, caps = small_dataset(tmp_path)
    schemas.write_table(ds, tmp_path / "dataset.parquet", "dataset")
    schemas.write_table(caps, tmp_path / "captions.parquet", "captions")
    store = tmp_path / "shared-cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = {"a": "clip_a,clip_b,clip_c", "b": "clip_b,clip_c,photo_d"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(store), clips, str(tmp_path / f"{n}.parquet")],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n, clips in sets.items()]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    cache = CacheStore(store)
    tables = {n: pl.read_parquet(tmp_path / f"{n}.parquet") for n in sets}
    assert [t.height for t in tables.values()] == [3, 3]
    shared = {n: t.filter(pl.col("clip_id").is_in(["clip_b", "clip_c"])).sort("clip_id") for n, t in tables.items()}
    assert shared["a"]["latent_key"].to_list() == shared["b"]["latent_key"].to_list()
    keys = {k for t in tables.values() for c in ("latent_key", "text_key") for k in t[c].to_list()}
    assert keys == set(cache.keys())  # every entry of both tables, and nothing else
    assert all(problem is None for _, problem in cache.verify())
    assert cache.leftovers() == []


def test_gc_leaves_young_entries_and_temporary_files_alone(tmp_path):
    import torch

    cache = CacheStore(tmp_path)
    cache.put("ab" * 32, {"x": torch.ones(2)})
    cache.put("cd" * 32, {"x": torch.zeros(2)})
    writing = cache.path("ef" * 32).parent / ".tmp-writer-in-progress.safetensors"
    writing.parent.mkdir(parents=True, exist_ok=True)
    writing.write_bytes(b"partial")
    keep = tmp_path / "index.parquet"
    pl.DataFrame({"latent_key": ["ab" * 32]}).write_parquet(keep)
    run = lambda *a: subprocess.run([sys.executable, "-m", "pipeline.cli", "cache", "gc", "--store", str(tmp_path),  # noqa: E731
                                     "--keep", str(keep), "--delete", *a], cwd=REPO, capture_output=True, text=True)
    young = run()  # the default grace period: a moment-old entry may not be in its writer's index yet
    assert young.returncode == 0, young.stderr
    assert cache.has("cd" * 32) and writing.exists()
    old = run("--grace", "0")
    assert old.returncode == 0, old.stderr
    assert not cache.has("cd" * 32) and not writing.exists() and cache.has("ab" * 32)
    with pytest.raises(CacheMiss, match="cache entry missing"):
        cache.get("cd" * 32)
    assert list(cache.keys()) == ["ab" * 32]
