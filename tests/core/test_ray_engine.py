"""``engine: ray`` against ``engine: local`` on a real local Ray instance (2 CPUs, no GPU).

Each stage runs on the same inputs in two project folders, through its runner: split and score
(Ray Data tasks), caption (tiny VLM) and encode (tiny profile) (Ray Data actor pools). On Ray, a
driver is first killed (SIGKILL) mid-stage, then the stage re-run: the tables must be the same
bytes as the local engine's (captions: the same rows but for their ``created_at``), the clip files
and the cache entries the same (same ids, same keys, same tensors and metadata but for ``created``),
and the re-run must have computed only what the killed driver had not persisted.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline.cache.store import CacheStore
from pipeline.caption.stage import run as run_caption_stage
from pipeline.core import schemas
from pipeline.core.cli import set_value
from pipeline.core.engine import EngineConfig, RayConfig, stage_engine
from pipeline.core.layout import Layout
from pipeline.core.samples import sample_photo
from pipeline.curate.probe.stage import run_list, run_probe
from pipeline.curate.score.stage import run as run_score
from pipeline.curate.split.stage import run as run_split
from pipeline.encode.stage import run as run_encode
from pipeline.models.tiny.vlm import tiny_vlm_dir
from tests.helpers.caption_helpers import cut_sample_clips, tiny_params
from tests.helpers.encode_data import make_image, make_video, tables
from tests.helpers.ray_items import DiesOnce, dies_once
from tests.helpers.synthetic_media import scenes_video

ray = pytest.importorskip("ray", reason="engine: ray needs the cluster extra: pip install -e '.[cluster]'")

REPO = Path(__file__).resolve().parents[2]
ENCODE = {"frame_buckets": [17], "area": 64 * 64, "image_area": 48 * 48, "batch_size": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray instance for the module; its address lets a driver in a subprocess join it."""
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def project(root: Path, engine: str, **groups) -> Path:
    """A project folder: ``params.yaml`` with ``engine`` and the given groups, an empty ``data/``."""
    root.mkdir(parents=True)
    (root / "data").mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump({"engine": engine, **groups}))
    return root


def params_of(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def in_project(root: Path, runner) -> object:
    """``runner(params, Layout('data'))`` run from ``root``, as DVC runs a stage there."""
    with contextlib.chdir(root):
        return runner(params_of(root), Layout.of("data"))


def same_bytes(a: Path, b: Path, *names: str) -> None:
    for name in names:
        assert filecmp.cmp(a / name, b / name, shallow=False), f"{name} differs between {a} and {b}"


def kill_when(cmd: list[str], cwd: Path, env: dict, ready, timeout: float = 240.0) -> None:
    """Start a driver, SIGKILL it as soon as ``ready()`` (some work persisted), wait for it to end."""
    log = cwd / "driver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"driver ended before the kill ({proc.returncode}): {log.read_text()[-2000:]}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"driver persisted nothing in {timeout:g} s: {log.read_text()[-2000:]}")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL


def settle(files, quiet_s: float = 3.0, timeout: float = 60.0) -> dict[Path, tuple[int, int]]:
    """Once ``files()`` has not changed for ``quiet_s`` (the dead driver's workers are gone): each file's
    (inode, mtime_ns), to check after the re-run that none of them was written again."""
    def state():
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files()}
    last, since, t0 = state(), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() - t0 < timeout:
        time.sleep(0.25)
        now = state()
        if now != last:
            last, since = now, time.monotonic()
    return last


def driver_env(cluster: str) -> dict:
    return {**os.environ, "RAY_ADDRESS": cluster, "VLP_LOG": "INFO"}


def unchanged(before: dict[Path, tuple[int, int]]) -> None:
    changed = [p for p, st in before.items() if (p.stat().st_ino, p.stat().st_mtime_ns) != st]
    assert not changed, f"written again after the kill: {changed}"


# -- the engine itself ---------------------------------------------------------------------


def test_tasks_and_actors_run_in_the_drivers_folder_and_a_lost_worker_loses_nothing(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with stage_engine({"engine": "ray", "ray": {"items_per_task": 2}}, "test") as engine:
        assert engine is not None and engine.gpus == 0 and not engine.wants_gpu("auto") and engine.wants_gpu("cuda")
        marker = tmp_path / "task-died"
        got = list(engine.map_items(dies_once, [(str(marker), i) for i in range(8)], name="dies"))
        assert marker.exists() and sorted(x for _, _, x in got) == list(range(8))  # the lost task was run again
        assert {cwd for cwd, _, _ in got} == {str(tmp_path)}
        marker = tmp_path / "actor-died"
        got = list(engine.map_actors(DiesOnce, (str(marker),), range(6), name="dies", gpu=False))
        assert marker.exists() and sorted(x for _, _, x in got) == list(range(6))  # the actor was restarted
        assert {cwd for cwd, _, _ in got} == {str(tmp_path)}
        assert len({pid for _, pid, _ in got}) <= 2  # ray.actors null, no GPU: one actor (and its restart)
        with pytest.raises(RuntimeError, match="the Ray cluster has none"):
            engine.map_actors(DiesOnce, (str(marker),), [1], name="dies", gpu=True)
    assert ray.is_initialized()  # a Ray the process had started is left running
    assert EngineConfig.from_params({}).engine == "local"


def test_the_engine_is_one_value_a_command_can_set():
    params: dict = {}
    set_value(params, "engine=ray")
    set_value(params, "ray.address=auto")
    assert EngineConfig.from_params(params) == EngineConfig(engine="ray", ray=RayConfig(address="auto"))


# Each stage below runs on the local engine in one project folder and on Ray in another, where a
# driver (a subprocess joining the module's Ray instance) is first SIGKILLed as soon as it has
# persisted some work, and the stage then re-run to the end: the Ray outputs must equal the local
# ones, and the re-run must have redone only what the killed driver had not persisted.


# -- split and score -----------------------------------------------------------------------


def make_raw(raw: Path, carphone: Path) -> None:
    raw.mkdir(parents=True)
    shutil.copy(carphone, raw / "carphone.mp4")
    for i, lengths in enumerate(([30, 35, 40], [45, 30], [28, 50, 33], [40, 40])):
        scenes_video(raw / f"scenes{i}.mp4", lengths)
    shutil.copy(sample_photo("astronaut.png"), raw / "astronaut.png")


# jobs 1: the local engine splits in this process (no fork of a process that holds Ray's threads)
CURATE = {"split": {"preset": "ultrafast", "jobs": 1}}


@pytest.fixture(scope="module")
def curated(cluster, tmp_path_factory, carphone):
    """The same raw folder split and scored by each engine; on Ray, split's first driver is killed."""
    base = tmp_path_factory.mktemp("ray-curate")
    local = project(base / "local", "local", **CURATE)
    make_raw(local / "data" / "raw", carphone)
    for runner in (run_list, run_probe, run_split, run_score):
        in_project(local, runner)

    on_ray = project(base / "ray", "ray", **CURATE)
    make_raw(on_ray / "data" / "raw", carphone)
    for runner in (run_list, run_probe):
        in_project(on_ray, runner)
    measured = on_ray / "data" / "clips" / ".measure"

    def measure_files() -> list[Path]:  # what split persists of each source: its measurements (no clip files)
        return [p for p in measured.glob("*.parquet") if not p.name.startswith(".")] if measured.exists() else []

    kill_when([sys.executable, str(REPO / "stages" / "split.py")], on_ray, driver_env(cluster), lambda: len(measure_files()) >= 1)
    done = settle(measure_files)
    killed_table = (on_ray / "data" / "clips.parquet").exists()
    in_project(on_ray, run_split)
    in_project(on_ray, run_score)
    return {"local": local, "ray": on_ray, "done": done, "killed_table": killed_table}


def test_split_and_score_on_ray_write_the_same_tables_and_measurements(curated):
    local, on_ray = curated["local"] / "data", curated["ray"] / "data"
    same_bytes(local, on_ray, "clips.parquet", "scores.parquet")
    clips = schemas.read_table(local / "clips.parquet", "clips")
    ok = clips.filter(pl.col("status") == "ok")
    assert ok.height >= 10 and ok["kind"].to_list().count("image") == 1
    assert schemas.read_table(local / "scores.parquet", "scores")["status"].to_list() == ["ok"] * ok.height
    assert not [p for p in (local / "clips").iterdir() if p.is_file() and not p.name.startswith(".")]  # no clip file
    files = sorted(p.name for p in (local / "clips" / ".measure").iterdir())
    assert len(files) == ok["source_id"].n_unique()
    same_bytes(local / "clips" / ".measure", on_ray / "clips" / ".measure", *files)


def test_split_killed_driver_is_resumed_decoding_only_the_sources_not_measured(curated):
    done, total = curated["done"], len(list((curated["local"] / "data" / "clips" / ".measure").iterdir()))
    assert not curated["killed_table"]
    assert 1 <= len(done) < total, (len(done), total)  # killed mid-stage: some sources measured, some not
    unchanged(done)  # the measurements written before the kill were kept, not made again


# -- caption -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captioned(cluster, tmp_path_factory, torch_one_thread):
    """Eight dataset rows (three real clips and a photo, each under two ids) captioned by the tiny VLM
    on each engine, one clip a batch and a part; on Ray the first driver is killed."""
    # one torch thread here: a Ray actor reserving one CPU runs torch on one thread too
    base = tmp_path_factory.mktemp("ray-caption")
    rows = cut_sample_clips(base / "clips")
    rows += [{**r, "clip_id": r["clip_id"] + "-again"} for r in rows]
    tiny = base / "tiny"
    tiny_vlm_dir(cache_dir=tiny)

    def caption_project(engine: str) -> Path:
        root = project(base / engine, engine, caption=tiny_params(tiny, batch_size=1, chunk_size=1))
        schemas.write_table(schemas.frame("dataset", rows), root / "data" / "dataset.parquet", "dataset")
        return root

    local = caption_project("local")
    m_local = in_project(local, run_caption_stage)
    on_ray = caption_project("ray")
    parts = on_ray / "data" / "captions.parts"

    def part_files() -> list[Path]:  # not the .tmp-* file of a part being written
        return sorted(p for p in parts.glob("*.parquet") if not p.name.startswith(".")) if parts.exists() else []

    kill_when([sys.executable, str(REPO / "stages" / "caption.py")], on_ray, driver_env(cluster), lambda: len(part_files()) >= 1)
    done = settle(part_files, quiet_s=1.0)  # the driver writes the parts: nothing comes after its death
    kept = sum(schemas.read_table(p, "caption_parts").height for p in done)
    killed_table = (on_ray / "data" / "captions.parquet").exists()
    m_ray = in_project(on_ray, run_caption_stage)
    return {"local": (local, m_local), "ray": (on_ray, m_ray), "kept": kept, "killed_table": killed_table}


def captions_of(root: Path) -> pl.DataFrame:
    return schemas.read_table(root / "data" / "captions.parquet", "captions").drop("created_at")


def test_caption_on_ray_writes_the_same_captions(captioned):
    (local, m_local), (on_ray, _) = captioned["local"], captioned["ray"]
    assert captions_of(local).equals(captions_of(on_ray))
    assert captions_of(local)["status"].to_list() == ["ok"] * 8 and m_local["vlm_clips"] == 8


def test_caption_killed_driver_is_resumed_captioning_only_the_rest(captioned):
    kept, (_, metrics) = captioned["kept"], captioned["ray"]
    assert 1 <= kept < 8 and not captioned["killed_table"]
    assert (metrics["reused"], metrics["vlm_clips"], metrics["captioned"]) == (kept, 8 - kept, 8 - kept)


# -- encode --------------------------------------------------------------------------------


def encode_project(root: Path, engine: str) -> Path:
    root = project(root, engine, model={"profile": "tiny"}, encode=ENCODE)
    rows, caps = [], {}
    for i, (n, w, h) in enumerate([(20, 80, 64), (40, 96, 64), (24, 64, 80), (30, 80, 80), (18, 64, 64), (26, 96, 80)]):
        rows.append(make_video(root, f"clip_{i}", n, w=w, h=h, seed=i + 1)[1])
        caps[f"clip_{i}"] = f"scene number {i}" if i != 5 else "scene number 0"  # two clips share a caption
    rows.append(make_image(root, "photo")[1])
    caps["photo"] = "a portrait"
    dataset, captions = tables(rows, caps)
    schemas.write_table(dataset, root / "data" / "dataset.parquet", "dataset")
    schemas.write_table(captions, root / "data" / "captions.parquet", "captions")
    return root


def same_entries(a: Path, b: Path) -> None:
    sa, sb = CacheStore(a / "data" / "cache"), CacheStore(b / "data" / "cache")
    keys = sorted(sa.keys())
    assert keys == sorted(sb.keys()) and len(keys) == 14  # 7 latents, 6 caption texts, the empty prompt
    for key in keys:
        ta, tb = sa.get(key), sb.get(key)
        assert ta.keys() == tb.keys() and all(ta[n].dtype == tb[n].dtype and ta[n].equal(tb[n]) for n in ta), key
        ma, mb = sa.metadata(key), sb.metadata(key)
        assert {k: v for k, v in ma.items() if k != "created"} == {k: v for k, v in mb.items() if k != "created"}, key


@pytest.fixture(scope="module")
def encoded(cluster, tmp_path_factory, torch_one_thread):
    """Seven samples (six videos, a photo) encoded with the tiny profile on each engine, one sample a
    VAE batch; on Ray the first driver is killed."""
    base = tmp_path_factory.mktemp("ray-encode")
    local = encode_project(base / "local", "local")
    m_local = in_project(local, run_encode)
    on_ray = encode_project(base / "ray", "ray")
    store = CacheStore(on_ray / "data" / "cache")

    def entry_files() -> list[Path]:
        return [store.path(k) for k in store.keys()] if store.root.exists() else []

    kill_when([sys.executable, str(REPO / "stages" / "encode.py")], on_ray, driver_env(cluster), lambda: len(entry_files()) >= 1)
    done = settle(entry_files)
    kinds = [store.metadata(k)["kind"] for k in store.keys()]
    killed_table = (on_ray / "data" / "encoded.parquet").exists()
    m_ray = in_project(on_ray, run_encode)
    return {"local": (local, m_local), "ray": (on_ray, m_ray), "done": done, "kinds": kinds, "killed_table": killed_table}


TABLES = ("encoded.parquet", "prompts.parquet", "sample_images.parquet")


def test_encode_on_ray_writes_the_same_tables_and_cache_entries(encoded):
    (local, m_local), (on_ray, _) = encoded["local"], encoded["ray"]
    same_bytes(local / "data", on_ray / "data", *TABLES)
    same_entries(local, on_ray)
    assert (m_local["samples"], m_local["latents_computed"], m_local["texts_computed"], m_local["prompts_computed"]) == (7, 7, 6, 1)


def test_encode_killed_driver_is_resumed_computing_only_the_missing_entries(encoded):
    kinds, (_, metrics) = encoded["kinds"], encoded["ray"]
    lat, txt = kinds.count("latent"), kinds.count("text")
    assert 1 <= lat + txt < 14 and not encoded["killed_table"], kinds
    unchanged(encoded["done"])  # what the killed driver's actors stored was reused, not encoded again
    assert (metrics["samples"], metrics["latents_reused"], metrics["latents_computed"]) == (7, lat, 7 - lat)
    assert metrics["texts_computed"] + metrics["prompts_computed"] == 7 - txt
