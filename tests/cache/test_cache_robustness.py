"""Never train on wrong data: damaged cache entries, absurd latents, non-finite losses, damaged
checkpoints and interrupted runs (issue "Never train on wrong data", items 3 and 10)."""

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from pipeline.cache.store import CacheDamaged, CacheStore
from pipeline.core import schemas
from pipeline.encode.config import EncodeConfig
from pipeline.encode.encode import encode_dataset
from pipeline.models.profiles import get_profile
from pipeline.train import checkpoint as ckpt
from pipeline.train.data import MAX_ABS_LATENT
from pipeline.train.stage import run_from_params
from tests.helpers.encode_data import small_dataset
from tests.helpers.train_data import make_dataset

TINY = {"profile": "tiny", "path": None}

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def params(**kw):
    base = dict(run_name="run", steps=4, rank=4, alpha=8, lr=5e-3, base_storage="fp32", save_dtype="float32",
                held_out_fraction=0.0, eval_every=0, checkpoint_every=0, progress=False, seed=3)
    return {**base, **kw}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def flip(path, offset, mask=0xFF):
    """XOR one byte of a file (``offset`` < 0 counts from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def warnings_of(caplog, logger):
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


def assert_same_lora(a_dir, b_dir):
    a, b = load_file(str(a_dir / f"{a_dir.name}.safetensors")), load_file(str(b_dir / f"{b_dir.name}.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the store ---------------------------------------------------------------------------------

def one_entry(tmp_path):
    store = CacheStore(tmp_path / "cache")
    key = "ab" * 32
    store.put(key, {"latents": torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)})
    return store, key


def test_check_header_finds_each_kind_of_damage_and_get_names_the_file(tmp_path):
    store, key = one_entry(tmp_path)
    path = store.path(key)
    good = path.read_bytes()
    assert store.check_header(key) is None and store.check_header("cd" * 32) == "missing"

    damages = {
        "truncated": good[:-40],
        "trailing bytes": good + b"\0" * 8,
        "tiny": good[:5],
        "header is not valid JSON": good[:12] + b"\xff" + good[13:],
        "implausible header length": good[:6] + b"\xff\xff" + good[8:],
    }
    for reason, data in damages.items():
        path.write_bytes(data)
        problem = store.check_header(key)
        assert problem and (reason in problem or (reason == "tiny" and "truncated" in problem)), (reason, problem)
        if reason != "trailing bytes":  # safetensors itself refuses all of these
            with pytest.raises(CacheDamaged) as e:
                store.get(key)
            assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    # an entry stored under another key's name
    path.write_bytes(good)
    other = store.path("cd" * 32)
    other.parent.mkdir(parents=True)
    shutil.copy(path, other)
    assert "does not match the file name" in store.check_header("cd" * 32)
    # bytes flipped inside the tensor data: the header is sound, the sha256 is not
    flip(path, -2, 0x01)  # the low (mantissa) byte of the last bf16 value: a small, finite change
    assert store.check_header(key) is None
    assert torch.isfinite(store.get(key)["latents"].float()).all()
    with pytest.raises(CacheDamaged, match="sha256"):
        store.get(key, verify=True)
    assert "sha256" in store.verify_entry(key)


# -- training on a damaged cache ---------------------------------------------------------------

def test_flipped_byte_in_a_latent_skips_that_sample(tmp_path, caplog):
    data = make_dataset(tmp_path, [{"clip_id": f"c{i}"} for i in range(3)])
    encoded = schemas.read_table(data / "encoded.parquet", "encoded")
    store = CacheStore(data / "cache")
    bad = store.path(encoded.filter(pl.col("clip_id") == "c1")["latent_key"][0])
    flip(bad, -2, 0x01)  # finite, plausible values: only the stored sha256 tells
    caplog.set_level(logging.INFO, logger="train")
    metrics = run_from_params(TINY, params(steps=2), cache_dir=str(data / "cache"), data_dir=str(data))
    named = [m for m in warnings_of(caplog, "train") if str(bad) in m]
    assert len(named) == 1 and "sha256" in named[0] and "c1#0" in named[0] and "\n" not in named[0]
    manifest = schemas.read_table(data / "lora" / "run" / "manifest.parquet", "manifest")
    assert sorted(manifest["sample_id"].to_list()) == ["c0#0", "c2#0"] and metrics["train_samples"] == 2


def test_nothing_left_is_the_one_line_error(tmp_path):
    data = make_dataset(tmp_path, [{"clip_id": "only"}])
    encoded = schemas.read_table(data / "encoded.parquet", "encoded")
    flip(CacheStore(data / "cache").path(encoded["latent_key"][0]), -2, 0x01)
    with pytest.raises(ValueError, match="no samples to train on .*damaged"):
        run_from_params(TINY, params(steps=1), cache_dir=str(data / "cache"), data_dir=str(data))


def test_absurd_latents_never_reach_the_optimizer(tmp_path, caplog, monkeypatch):
    """A bad encoder's latents (1e26, written with a valid sha256) pass the cache checks but are
    skipped batch by batch; the batch index is consumed all the same."""
    import pipeline.train.loop as loop

    data = make_dataset(tmp_path, [{"clip_id": "good"}, {"clip_id": "bad"}])
    encoded = schemas.read_table(data / "encoded.parquet", "encoded")
    row = encoded.filter(pl.col("clip_id") == "bad").row(0, named=True)
    store = CacheStore(data / "cache")
    store.put(row["latent_key"], {"latents": torch.full(row["latent_shape"], 1e26).to(torch.bfloat16)})
    assert store.verify_entry(row["latent_key"]) is None

    seen = []
    real_step = loop.micro_step

    def watching_step(model, inputs, *a, **k):
        seen.append(float(inputs.latents.abs().max()))
        return real_step(model, inputs, *a, **k)

    monkeypatch.setattr(loop, "micro_step", watching_step)
    caplog.set_level(logging.INFO, logger="train")
    metrics = run_from_params(TINY, params(steps=6), cache_dir=str(data / "cache"), data_dir=str(data))
    skipped = [m for m in warnings_of(caplog, "train") if "skipped (samples bad#0)" in m]
    assert skipped and all("latents reach |x| = 9.97e+25 (more than 1000)" in m for m in skipped)  # 1e26 in bf16
    assert metrics["skipped_batches"] == len(skipped) and metrics["skipped_steps"] == len(skipped)  # batch_size 1
    assert len(seen) == 6 - len(skipped) > 0 and max(seen) <= MAX_ABS_LATENT
    assert len(read_csv(data / "lora" / "run" / "loss.csv")) - 1 == len(seen)
    lora = load_file(str(data / "lora" / "run" / "run.safetensors"))
    assert all(torch.isfinite(t).all() for t in lora.values())


def test_non_finite_loss_makes_no_update(tmp_path, caplog, monkeypatch):
    import pipeline.train.loop as loop

    data = make_dataset(tmp_path, [{"clip_id": "a"}, {"clip_id": "b"}])
    real_step = loop.micro_step
    calls = []

    def poisoned_step(model, inputs, *a, **k):
        value = real_step(model, inputs, *a, **k)
        calls.append(value)
        if len(calls) == 3:  # the third step: NaN gradients and loss, as an overflow would give
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
            return float("nan")
        return value

    monkeypatch.setattr(loop, "micro_step", poisoned_step)
    caplog.set_level(logging.INFO, logger="train")
    metrics = run_from_params(TINY, params(steps=5), cache_dir=str(data / "cache"), data_dir=str(data))
    assert metrics["skipped_steps"] == 1 and metrics["skipped_batches"] == 0
    assert any(m.startswith("step 3: loss is nan") for m in warnings_of(caplog, "train"))
    assert [int(r[0]) for r in read_csv(data / "lora" / "run" / "loss.csv")[1:]] == [1, 2, 4, 5]
    lora = load_file(str(data / "lora" / "run" / "run.safetensors"))
    assert all(torch.isfinite(t).all() for t in lora.values())


# -- encoding over a damaged cache -------------------------------------------------------------

def test_damaged_entries_are_named_recomputed_and_then_reused(tmp_path, caplog):
    ds, caps = small_dataset(tmp_path)
    store = CacheStore(tmp_path / "cache")
    cfg = EncodeConfig(frame_buckets=(17,), area=64 * 64, image_area=48 * 48, batch_size=2, device="cpu")
    tiny = get_profile("tiny")
    first = encode_dataset(ds, caps, store, tiny, cfg, root=tmp_path)
    rows = {r["clip_id"]: r for r in first.table.iter_rows(named=True)}
    before = {k: store.get(k)["latents"] for k in (rows["clip_a"]["latent_key"], rows["clip_c"]["latent_key"])}

    truncated = store.path(rows["clip_a"]["latent_key"])
    truncated.write_bytes(truncated.read_bytes()[:-100])
    header = store.path(rows["clip_b"]["text_key"])
    flip(header, 20)  # inside the header's JSON
    renamed = store.path(rows["clip_c"]["latent_key"])
    shutil.copy(store.path(rows["clip_a"]["text_key"]), renamed)  # another entry under this name

    caplog.set_level(logging.INFO, logger="encode")
    second = encode_dataset(ds, caps, store, tiny, cfg, root=tmp_path)
    m = second.metrics
    assert (m["latents_computed"], m["texts_computed"], m["damaged_recomputed"], m["rejected"]) == (2, 1, 3, 0)
    warned = warnings_of(caplog, "encode")
    for path, reason in ((truncated, "truncated"), (header, "JSON"), (renamed, "does not match the file name")):
        named = [w for w in warned if w.startswith(f"{path}: damaged cache entry")]
        assert len(named) == 1 and reason in named[0] and "\n" not in named[0], (path, warned)
    assert second.table.equals(first.table)
    assert all(problem is None for _, problem in store.verify())
    for key, z in before.items():  # the same latents again (bf16 at bf16 tolerance: batching may round differently)
        torch.testing.assert_close(store.get(key)["latents"], z)

    caplog.clear()
    third = encode_dataset(ds, caps, store, tiny, cfg, root=tmp_path)
    m = third.metrics
    assert (m["latents_computed"], m["texts_computed"], m["latents_reused"], m["texts_reused"]) == (0, 0, 4, 4)
    assert "damaged_recomputed" not in m and not warnings_of(caplog, "encode")


# -- checkpoints -------------------------------------------------------------------------------

RESUME = dict(steps=6, checkpoint_every=2, dropout=0.1, grad_accum=2, batch_size=2, lr_scheduler="cosine", warmup_steps=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, torch_one_thread):
    """A dataset, an uninterrupted run ("straight") and a run killed after step 5 ("killed": checkpoints 2 and 4)."""
    root = tmp_path_factory.mktemp("resume")
    clips = [{"clip_id": f"c{i}", "frames": 9 if i % 2 else 17} for i in range(4)] + [{"clip_id": "im", "kind": "image", "frames": 1}]
    data = make_dataset(root, clips)
    kw = dict(cache_dir=str(data / "cache"), data_dir=str(data))
    run_from_params(TINY, params(**RESUME, run_name="straight"), **kw)

    class Killed(Exception):
        pass

    def kill_at_5(step, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        run_from_params(TINY, params(**RESUME, run_name="killed"), on_step=kill_at_5, **kw)
    names = sorted(p.name for p in (data / "lora" / "killed" / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000004"]
    return data, kw


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _old_style_bad_header(folder):
    """A checkpoint without file hashes (as written before they were recorded) and a damaged header."""
    state = json.loads((folder / "state.json").read_text())
    del state["files"]
    (folder / "state.json").write_text(json.dumps(state))
    flip(folder / "trainable.safetensors", 30)


DAMAGES = {
    "truncated trainable": lambda f: _truncate(f / "trainable.safetensors"),
    "flipped optimizer": lambda f: flip(f / "optimizer.safetensors", -3, 0x01),
    "invalid state.json": lambda f: (f / "state.json").write_text('{"step": 4, "fingerprint": '),
    "old checkpoint, bad header": _old_style_bad_header,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(runs, damage, caplog):
    data, kw = runs
    name = "case-" + damage.replace(" ", "-").replace(",", "").replace(".", "-")
    out = data / "lora" / name
    shutil.copytree(data / "lora" / "killed" / "checkpoints", out / "checkpoints")
    DAMAGES[damage](out / "checkpoints" / "step-000004")
    leftover = out / "checkpoints" / ".tmp-step-000006-12345"
    leftover.mkdir()
    (leftover / "trainable.safetensors").write_bytes(b"half")
    caplog.set_level(logging.INFO, logger="train")
    metrics = run_from_params(TINY, params(**RESUME, run_name=name), **kw)
    warned = [w for w in warnings_of(caplog, "train") if "step-000004" in w]
    assert len(warned) == 2 and "damaged checkpoint" in warned[0] and all("\n" not in w for w in warned), warned
    assert "not resumed by this run; kept as" in warned[1]  # set aside, not deleted
    assert metrics["resumed_from_step"] == 2 and not leftover.exists()
    folders = sorted(f for f in (out / "checkpoints").iterdir() if f.name != "stale")
    assert [f.name for f in folders] == ["step-000004", "step-000006"]  # the damaged step 4 was written anew
    assert [f.name for f in (out / "checkpoints" / "stale").iterdir()] == ["step-000004"]
    for folder in folders:
        ckpt.read_tensors(folder, ckpt.read_state(folder))
    assert_same_lora(data / "lora" / "straight", out)
    assert read_csv(data / "lora" / "straight" / "loss.csv") == read_csv(out / "loss.csv")


def test_checkpoint_that_does_not_fit_the_model_leaves_the_run_untouched(tmp_path, caplog):
    from diffusers.optimization import get_scheduler

    torch.manual_seed(0)
    params_ = {"a.lora_A": torch.nn.Parameter(torch.randn(4, 8)), "a.lora_B": torch.nn.Parameter(torch.randn(8, 4))}
    opt = torch.optim.AdamW(list(params_.values()), lr=1e-2)
    sched = get_scheduler("constant", opt)
    sum(p.sum() for p in params_.values()).backward()
    opt.step()
    sched.step()
    ckpt.save_checkpoint(tmp_path, 1, params_, opt, sched, {"fingerprint": "f", "train_losses": [], "eval_losses": []})

    fresh = {n: torch.nn.Parameter(torch.zeros_like(p)) for n, p in params_.items()}
    fresh["a.lora_B"] = torch.nn.Parameter(torch.zeros(8, 2))  # another shape: the checkpoint does not fit
    opt2 = torch.optim.AdamW(list(fresh.values()), lr=1e-2)
    sched2 = get_scheduler("constant", opt2)
    before = (json.dumps(opt2.state_dict(), default=str), sched2.state_dict(), torch.get_rng_state())
    caplog.set_level(logging.INFO, logger="train")
    assert ckpt.resume(tmp_path, "f", fresh, opt2, sched2) is None
    assert any("step-000001: damaged checkpoint (parameter 'a.lora_B' is [8, 4]" in w for w in warnings_of(caplog, "train"))
    assert all(p.abs().sum() == 0 for p in fresh.values()) and not opt2.state
    assert json.dumps(opt2.state_dict(), default=str) == before[0] and sched2.state_dict() == before[1]
    assert torch.equal(torch.get_rng_state(), before[2])
    # the same checkpoint resumes into a run that fits it
    fits = {n: torch.nn.Parameter(torch.zeros_like(p)) for n, p in params_.items()}
    opt3 = torch.optim.AdamW(list(fits.values()), lr=1e-2)
    found = ckpt.resume(tmp_path, "f", fits, opt3, get_scheduler("constant", opt3))
    assert found["state"]["step"] == 1 and all(torch.equal(fits[n], params_[n]) for n in params_)


# -- signals -----------------------------------------------------------------------------------

CHILD = """
import json, logging, sys, time
from pathlib import Path
import torch
from pipeline.train.stage import run_from_params

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
torch.set_num_threads(1)
data, params, reached, sent = Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])


def on_step(step, loss):
    if step == 3:  # hold here until the test has sent SIGINT: the run stops after this step
        reached.write_text("3")
        deadline = time.monotonic() + 600
        while not sent.exists() and time.monotonic() < deadline:
            time.sleep(0.01)


try:
    run_from_params({"profile": "tiny", "path": None}, params, cache_dir=str(data / "cache"), data_dir=str(data),
                    on_step=on_step)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigint_checkpoints_the_last_step_and_the_resumed_run_equals_an_uninterrupted_one(runs, tmp_path):
    data, kw = runs
    script, reached, sent, log_path = tmp_path / "child.py", tmp_path / "reached", tmp_path / "sent", tmp_path / "child.log"
    script.write_text(CHILD)
    p = params(**RESUME, run_name="sigint")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, str(script), str(data), json.dumps(p), str(reached), str(sent)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while not reached.exists():  # wait for step 3 (no fixed sleep: poll the file the child writes)
                assert child.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the child never reached step 3"
                time.sleep(0.05)
            child.send_signal(signal.SIGINT)
            sent.write_text("sent")
            assert child.wait(timeout=600) == 130, log_path.read_text()
        finally:
            if child.poll() is None:
                child.kill()
    out = data / "lora" / "sigint"
    text = log_path.read_text()
    assert f"SIGINT after step 3: checkpoint {out / 'checkpoints' / 'step-000003'} written" in text, text
    assert (out / "checkpoints" / "step-000003" / "state.json").exists() and not (out / "sigint.safetensors").exists()

    before = signal.getsignal(signal.SIGINT)
    metrics = run_from_params(TINY, p, **kw)
    assert signal.getsignal(signal.SIGINT) is before  # the loop's handlers are gone again
    assert metrics["resumed_from_step"] == 3
    assert_same_lora(data / "lora" / "straight", out)
    assert read_csv(data / "lora" / "straight" / "loss.csv") == read_csv(out / "loss.csv")


def test_sigterm_checkpoints_and_exits_143(runs, caplog):
    """In-process: SIGTERM sent to this process at step 1 (the handler only sets a flag) stops the run
    after that step with a checkpoint, as SystemExit(143); the rerun resumes from it."""
    data, kw = runs
    p = params(**RESUME, run_name="sigterm")

    def term_at_1(step, loss):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    caplog.set_level(logging.INFO, logger="train")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        run_from_params(TINY, p, on_step=term_at_1, **kw)
    assert e.value.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
    assert any(w.startswith("SIGTERM after step 1: checkpoint") for w in warnings_of(caplog, "train"))
    assert run_from_params(TINY, p, **kw)["resumed_from_step"] == 1
    assert_same_lora(data / "lora" / "straight", data / "lora" / "sigterm")
