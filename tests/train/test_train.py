"""Train stage end to end on the tiny profile (CPU): overfitting, outputs, LoRA loading, resume."""

import csv
import json
import logging
import math

import polars as pl
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.core.fs import sha256_file
from pipeline.models.profiles import get_profile
from pipeline.train.stage import run_from_params
from tests.helpers.comfy import COMFY_BLOCK_KEY
from tests.helpers.train_data import make_dataset

TINY = {"profile": "tiny", "path": None}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def params(**kw):
    base = dict(run_name="run", steps=8, rank=4, alpha=8, lr=5e-3, base_storage="fp32", save_dtype="float32",
                held_out_fraction=0.0, eval_every=4, checkpoint_every=4, progress=False, seed=3)
    return {**base, **kw}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """A short run on videos in two buckets, photos, a held-out clip and one sample whose cache entry is gone.
    The VAE and the text encoder must never be built."""
    root = tmp_path_factory.mktemp("mixed")
    clips = [{"clip_id": f"v{i}", "frames": 17 if i < 3 else 9, "width": 64 if i < 3 else 48} for i in range(5)]
    clips += [{"clip_id": f"p{i}", "kind": "image", "frames": 1, "source": f"photos/p{i}", "caption_source": "edit"} for i in range(3)]
    data = make_dataset(root, clips)
    encoded = schemas.read_table(data / "encoded.parquet", "encoded")
    gone = encoded.filter(pl.col("clip_id") == "v4")["latent_key"][0]
    CacheStore(data / "cache").path(gone).unlink()

    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    def refuse(*a, **k):
        raise AssertionError("the train stage must not build the VAE or the text encoder")

    mp = pytest.MonkeyPatch()
    mp.setattr(AutoencoderKLWan, "__init__", refuse)
    mp.setattr(UMT5EncoderModel, "__init__", refuse)
    try:
        metrics = run_from_params(TINY, params(batch_size=2, grad_accum=2, held_out_clips=["v2"], image_batch_fraction=0.4,
                                               dropout=0.1), cache_dir=str(data / "cache"), data_dir=str(data))
    finally:
        mp.undo()
    return data / "lora" / "run", metrics, data


def test_run_writes_its_outputs_and_manifest(mixed_run):
    out, metrics, _ = mixed_run
    for name in ("run.safetensors", "run_comfy.safetensors", "manifest.parquet", "metrics.json", "loss.csv", "eval_loss.csv"):
        assert (out / name).exists(), name
    manifest = schemas.read_table(out / "manifest.parquet", "manifest")
    assert "v4#0" not in manifest["sample_id"].to_list()  # missing cache entry: skipped
    assert set(manifest["kind"]) == {"video", "image"}
    held = manifest.filter(pl.col("held_out"))
    assert held["clip_id"].to_list() == ["v2"] and held["times_seen"].to_list() == [0]
    train = manifest.filter(~pl.col("held_out"))
    assert train["times_seen"].sum() > 0 and set(train.filter(pl.col("kind") == "image")["caption_source"]) == {"edit"}
    p0 = manifest.filter(pl.col("clip_id") == "p0").row(0, named=True)
    assert p0["source_path"] == "photos/p0.png" and p0["bucket_frames"] == 1
    loss = read_csv(out / "loss.csv")
    assert loss[0] == ["step", "train_loss"] and [int(r[0]) for r in loss[1:]] == list(range(1, 9))
    ev = read_csv(out / "eval_loss.csv")
    assert ev[0] == ["step", "eval_loss"] and [int(r[0]) for r in ev[1:]] == [0, 4, 8]
    assert metrics["held_out_samples"] == 1 and metrics["peak_memory_kind"] == "cpu_max_rss"
    assert json.loads((out / "metrics.json").read_text())["steps"] == 8
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000008"]


def test_lora_files_carry_metadata_and_layouts(mixed_run):
    out, _, _ = mixed_run
    sha = sha256_file(out / "manifest.parquet")
    for name in ("run.safetensors", "run_comfy.safetensors"):
        with safe_open(str(out / name), "pt") as f:
            meta = f.metadata()
        assert meta["vlp.format"] == "1" and meta["vlp.manifest_sha256"] == sha
        assert meta["vlp.base_model"] == "tiny" and meta["vlp.profile"] == "tiny" and meta["vlp.family"] == "wan2.1-t2v"
        assert meta["vlp.rank"] == "4" and float(meta["vlp.alpha"]) == 8 and meta["vlp.steps"] == "8" and meta["vlp.expert"] == ""
        assert "attn1.to_q" in json.loads(meta["vlp.targets"]) and meta["vlp.run_name"] == "run"
    diff = load_file(str(out / "run.safetensors"))
    assert all(k.startswith("transformer.blocks.") for k in diff) and len(diff) == 2 * 2 * 10
    comfy = load_file(str(out / "run_comfy.safetensors"))
    assert all(COMFY_BLOCK_KEY.match(k) for k in comfy) and len(comfy) == 3 * 2 * 10


def _tiny_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from pipeline.models.text_encoder import load_text_encoder
    from pipeline.models.transformer import load_transformer
    from pipeline.models.vae import load_vae

    prof = get_profile("tiny")
    tokenizer, encoder = load_text_encoder(prof)
    return WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=load_vae(prof),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=load_transformer(prof, torch.float32))


def _generate(pipe):
    return pipe(prompt="a clip called v0", height=64, width=64, num_frames=5, num_inference_steps=2, guidance_scale=1.0,
                max_sequence_length=64, generator=torch.Generator().manual_seed(0), output_type="latent").frames


def test_lora_loads_into_wan_pipeline_and_both_files_agree(mixed_run):
    out, _, _ = mixed_run
    pipe = _tiny_pipeline()
    before = _generate(pipe)
    pipe.load_lora_weights(str(out), weight_name="run.safetensors", adapter_name="vlp")
    with_lora = _generate(pipe)
    assert (with_lora - before).abs().max() > 1e-3
    pipe2 = _tiny_pipeline()
    pipe2.load_lora_weights(str(out), weight_name="run_comfy.safetensors", adapter_name="comfy")
    assert torch.allclose(_generate(pipe2), with_lora, atol=1e-5)


def test_tiny_model_overfits_one_repeated_clip(tmp_path):
    """Loss at fixed timesteps and noise on the one clip falls by a clear margin, and the saved LoRA
    reproduces the trained model. The clip is smooth (a per-channel level plus a ramp), like real latents."""
    from pipeline.models.transformer import load_transformer
    from pipeline.train.data import CachedBatches, build_samples
    from pipeline.train.step import evaluate

    data = make_dataset(tmp_path, [{"clip_id": "one"}])
    encoded = schemas.read_table(data / "encoded.parquet", "encoded")
    g = torch.Generator().manual_seed(1)
    smooth = torch.randn(16, 1, 1, 1, generator=g) + 0.3 * torch.linspace(-1, 1, 8).view(1, 1, 1, 8)
    store = CacheStore(data / "cache")
    store.put(encoded["latent_key"][0], {"latents": smooth.expand(16, 5, 8, 8).contiguous()})
    run_from_params(TINY, params(steps=100, lr=1e-2, rank=16, alpha=16, timestep_sampling="uniform", eval_every=0,
                                 checkpoint_every=0), cache_dir=str(data / "cache"), data_dir=str(data))
    samples = build_samples(encoded, schemas.read_table(data / "clips.parquet", "clips"),
                            schemas.read_table(data / "captions.parquet", "captions"))
    loader = CachedBatches(store, samples, 64)
    model = load_transformer(get_profile("tiny"), torch.float32)
    ts = [0.1, 0.3, 0.5, 0.7, 0.9]
    before = evaluate(model, loader, [0], ["one#0"], ts, 0, torch.device("cpu"), torch.float32)
    model.load_lora_adapter(str(data / "lora/run/run.safetensors"), prefix="transformer", adapter_name="vlp")
    after = evaluate(model, loader, [0], ["one#0"], ts, 0, torch.device("cpu"), torch.float32)
    print(f"overfit: eval loss {before:.3f} -> {after:.3f}")
    assert after < 0.75 * before, (before, after)
    losses = [float(r[1]) for r in read_csv(data / "lora/run/loss.csv")[1:]]
    assert sum(losses[-20:]) / 20 < 0.9 * sum(losses[:10]) / 10


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, caplog):
    clips = [{"clip_id": f"c{i}", "frames": 9 if i % 2 else 17} for i in range(4)] + [{"clip_id": "im", "kind": "image", "frames": 1}]
    data = make_dataset(tmp_path, clips)
    p = params(steps=6, checkpoint_every=2, dropout=0.1, grad_accum=2, batch_size=2, lr_scheduler="cosine", warmup_steps=2)
    run_from_params(TINY, {**p, "run_name": "straight"}, cache_dir=str(data / "cache"), data_dir=str(data))

    class Killed(Exception):
        pass

    def kill_at_5(step, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        run_from_params(TINY, {**p, "run_name": "resumed"}, cache_dir=str(data / "cache"), data_dir=str(data), on_step=kill_at_5)
    assert not (data / "lora/resumed/resumed.safetensors").exists()
    metrics = run_from_params(TINY, {**p, "run_name": "resumed"}, cache_dir=str(data / "cache"), data_dir=str(data))
    assert metrics["resumed_from_step"] == 4
    a = load_file(str(data / "lora/straight/straight.safetensors"))
    b = load_file(str(data / "lora/resumed/resumed.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_csv(data / "lora/straight/loss.csv") == read_csv(data / "lora/resumed/loss.csv")
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)
    # another configuration never resumes a checkpoint that is not its own, and never deletes it silently
    with caplog.at_level(logging.WARNING, logger="train"):
        other = run_from_params(TINY, {**p, "run_name": "resumed", "rank": 8}, cache_dir=str(data / "cache"), data_dir=str(data))
    assert other["resumed_from_step"] is None
    stale = data / "lora/resumed/checkpoints/stale"
    assert sorted(x.name for x in stale.iterdir()) == ["step-000004", "step-000006"]
    warned = [r.getMessage() for r in caplog.records if "not resumed by this run" in r.getMessage()]
    assert len(warned) == 2 and all(str(stale) in m for m in warned)


def test_raising_steps_trains_on_from_the_last_checkpoint(tmp_path, caplog):
    clips = [{"clip_id": f"c{i}", "frames": 9 if i % 2 else 17} for i in range(4)]
    data = make_dataset(tmp_path, clips)
    p = params(checkpoint_every=2, grad_accum=2, batch_size=2, dropout=0.1)
    run = dict(cache_dir=str(data / "cache"), data_dir=str(data))
    run_from_params(TINY, {**p, "steps": 6, "run_name": "straight"}, **run)
    first = run_from_params(TINY, {**p, "steps": 4, "run_name": "longer"}, **run)
    assert first["resumed_from_step"] is None
    more = run_from_params(TINY, {**p, "steps": 6, "run_name": "longer"}, **run)
    assert more["resumed_from_step"] == 4 and more["steps"] == 6
    a = load_file(str(data / "lora/straight/straight.safetensors"))
    b = load_file(str(data / "lora/longer/longer.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_csv(data / "lora/straight/loss.csv") == read_csv(data / "lora/longer/loss.csv")
    assert not (data / "lora/longer/checkpoints/stale").exists()  # nothing set aside
    # a schedule that depends on the total is re-derived when resuming under another total
    cos = {**p, "lr_scheduler": "cosine", "run_name": "cos"}
    run_from_params(TINY, {**cos, "steps": 4}, **run)
    with caplog.at_level(logging.INFO, logger="train"):
        again = run_from_params(TINY, {**cos, "steps": 8}, **run)
    assert again["resumed_from_step"] == 4
    lr = 0.5 * p["lr"] * (1 + math.cos(math.pi * 4 / 8))  # diffusers' cosine at step 4 of 8, no warmup
    assert any(f"train.steps 4 -> 8: the cosine LR schedule is re-derived for 8 steps (lr now {lr:.3g})" in r.getMessage()
               for r in caplog.records)
    # lowering steps resumes the newest checkpoint at or before it; the later ones are kept aside
    fewer = run_from_params(TINY, {**cos, "steps": 6}, **run)
    assert fewer["resumed_from_step"] == 6
    assert [x.name for x in (data / "lora/cos/checkpoints/stale").iterdir()] == ["step-000008"]


def test_bench_train_step_runs_tiny_on_cpu(tmp_path, monkeypatch, capsys):
    """bench/train_step.py (the GPU benchmark of the stage's step) works end to end at tiny size."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_step", Path(__file__).parents[2] / "bench" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench.main(["--tiny", "--cases", "1.3b", "--steps", "2"]) == 0
    rec = json.loads((tmp_path / "train_step.jsonl").read_text().splitlines()[0])
    assert rec["case"] == "tiny" and "error" not in rec and rec["step_s_median"] > 0 and rec["params_lora"] > 0
