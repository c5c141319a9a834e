"""Kill tests: split, caption, encode and train are SIGKILLed at a seeded random moment and run
again; the outputs equal an uninterrupted run's and nothing that was finished is done again.

Each stage runs as its DVC stage script (``python stages/<stage>.py``) in a work folder of its
own: a reference folder runs it once; a second folder runs it, is killed (the whole process
group, ffmpeg included) at ``uniform(0.15, 0.85)`` of the reference run's wall time, then runs
it again. The moment is seeded, the assertions hold for any moment:

- split: no clip file that was complete when the run was killed is cut again;
- caption: no caption that was written (a finished chunk) is generated again, and at most one
  chunk in flight is lost;
- encode: no cache entry that was written is computed again;
- train: the re-run resumes from the newest checkpoint on disk (so at most ``checkpoint_every``
  steps are repeated), and the LoRA is bitwise equal.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.core import schemas
from tests.helpers.bad_media import photo, video

REPO = Path(__file__).resolve().parents[1]
SEED = 20261201
pytestmark = pytest.mark.slow


def _env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _run(stage: str, work: Path) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{stage} failed:\n{proc.stderr[-3000:]}"
    return time.monotonic() - t0


def _run_and_kill(stage: str, work: Path, after_s: float) -> None:
    proc = subprocess.Popen([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=work, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=after_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A work folder with three short videos and a photo, listed and probed, and small run settings."""
    work = tmp_path_factory.mktemp("kill") / "base"
    raw = work / "data" / "raw"
    raw.mkdir(parents=True)
    for i in range(3):
        video(raw / f"v{i}.mp4", 300 + i)
    photo(raw / "p.jpg", 310, quality=92)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["split"]["jobs"] = 1
    params["caption"]["chunk_size"] = 2
    params["train"].update(steps=8, checkpoint_every=2, eval_every=0, rank=4, alpha=4, progress=False)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("list", "probe"):
        _run(stage, work)
    return work


def _kill_and_resume(stage: str, before: Path, root: Path, moment: float):
    """(reference folder, killed-and-resumed folder, state of the killed folder right after the kill)."""
    ref = _copy(before, root / f"{stage}-ref")
    took = _run(stage, ref)
    killed = _copy(before, root / f"{stage}-killed")
    _run_and_kill(stage, killed, moment * took)
    return ref, killed


def _files(folder: Path, pattern: str) -> dict[Path, int]:
    """Complete files (no temporary names) under ``folder`` with their mtimes."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob(pattern) if p.is_file() and not p.name.startswith(".tmp-")}


def test_kill_split_caption_encode_train(base, tmp_path):
    rng = random.Random(SEED)
    state = base

    # split: finished clip files are never cut again
    ref, killed = _kill_and_resume("split", state, tmp_path, rng.uniform(0.15, 0.85))
    done = _files(killed / "data" / "clips", "*.mp4")
    _run("split", killed)
    assert all(p.stat().st_mtime_ns == m for p, m in done.items()), "a finished clip was cut again"
    # paths are relative to the work folder: the same in both
    assert schemas.read_table(killed / "data/clips.parquet", "clips").equals(schemas.read_table(ref / "data/clips.parquet", "clips"))
    for stage in ("score", "filter"):
        _run(stage, ref)
    state = ref

    # caption: written chunks are never generated again
    ref, killed = _kill_and_resume("caption", state, tmp_path, rng.uniform(0.15, 0.85))
    parts = killed / "data" / "captions.parts"
    written = sum(pl.read_parquet(p).height for p in parts.glob("*.parquet")) if parts.exists() else 0
    _run("caption", killed)
    metrics = json.loads((killed / "data/metrics/caption.json").read_text())
    total = schemas.read_table(ref / "data/captions.parquet", "captions").height
    assert metrics["captioned"] == total - written, (metrics, total, written)
    drop = ["created_at"]
    assert schemas.read_table(killed / "data/captions.parquet", "captions").drop(drop).equals(
        schemas.read_table(ref / "data/captions.parquet", "captions").drop(drop))
    state = ref

    # encode: entries already in the cache are never computed again
    ref, killed = _kill_and_resume("encode", state, tmp_path, rng.uniform(0.15, 0.85))
    cached = _files(killed / "data" / "cache", "*.safetensors")
    _run("encode", killed)
    assert all(p.stat().st_mtime_ns == m for p, m in cached.items()), "a cache entry was computed again"
    assert schemas.read_table(killed / "data/encoded.parquet", "encoded").equals(
        schemas.read_table(ref / "data/encoded.parquet", "encoded"))
    # the same tensors under the same keys (the header's metadata holds a creation time, in no fixed order)
    for p in _files(ref / "data" / "cache", "*.safetensors"):
        a, b = load_file(str(p)), load_file(str(killed / p.relative_to(ref)))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), p.name
    state = ref

    # train: resumes from the newest checkpoint; the LoRA is bitwise the same
    ref, killed = _kill_and_resume("train", state, tmp_path, rng.uniform(0.15, 0.85))
    ckpts = sorted((killed / "data/lora/default/checkpoints").glob("step-*"))
    newest = int(ckpts[-1].name.split("-")[1]) if ckpts else None
    _run("train", killed)
    metrics = json.loads((killed / "data/lora/default/metrics.json").read_text())
    assert metrics["resumed_from_step"] == newest
    a, b = load_file(str(ref / "data/lora/default/default.safetensors")), load_file(str(killed / "data/lora/default/default.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
