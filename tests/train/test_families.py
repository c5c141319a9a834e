"""Train stage across model families (tiny profiles, CPU): Wan 2.1 I2V, Wan 2.2 TI2V-5B, Wan 2.2 A14B
T2V and I2V. Each trains a few steps from a synthetic cache; the LoRA loads into the family's diffusers
pipeline and changes its output; conditioning matches the pipelines; experts keep their timestep ranges."""

import csv
import json

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.core import schemas
from pipeline.core.fs import sha256_file
from pipeline.models.profiles import get_profile
from pipeline.train.conditioning import Conditioning, TrainInputs, first_frame_mask
from pipeline.train.stage import run_from_params
from tests.helpers.comfy import COMFY_BLOCK_KEY
from tests.helpers.train_data import make_dataset

CLIPS = [{"clip_id": "v0", "frames": 9}, {"clip_id": "v1", "frames": 9, "width": 96},
         {"clip_id": "p0", "kind": "image", "frames": 1, "source": "photos/p0"}]
FAMILIES = ["tiny", "tiny-i2v", "tiny-ti2v", "tiny-t2v-a14b", "tiny-i2v-a14b"]
FILES = {"": ["run.safetensors"], "high": ["run_high_noise.safetensors"], "low": ["run_low_noise.safetensors"]}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def params(**kw):
    base = dict(run_name="run", steps=3, rank=4, alpha=8, lr=2e-2, base_storage="fp32", save_dtype="float32",
                held_out_fraction=0.0, eval_every=0, checkpoint_every=2, progress=False, seed=5)
    return {**base, **kw}


def train_tiny(root, name, clips=CLIPS, **kw):
    prof = get_profile(name)
    data = make_dataset(root, clips, profile=prof)
    metrics = run_from_params({"profile": name, "path": None}, params(**kw), cache_dir=str(data / "cache"), data_dir=str(data))
    return data, data / "lora" / "run", metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short run per tiny family (trained once, shared by the tests)."""
    out = {}
    for name in FAMILIES:
        out[name] = train_tiny(tmp_path_factory.mktemp(name), name)
    return out


# ------------------------------------------------------------------ diffusers pipelines of each family


def family_pipeline(name):
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
    )

    from pipeline.models.image_encoder import load_image_encoder
    from pipeline.models.text_encoder import load_text_encoder
    from pipeline.models.transformer import load_transformer
    from pipeline.models.vae import load_vae

    prof = get_profile(name)
    tokenizer, encoder = load_text_encoder(prof)
    parts = dict(tokenizer=tokenizer, text_encoder=encoder, vae=load_vae(prof),
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                 transformer=load_transformer(prof, torch.float32))
    if len(prof.experts) == 2:
        parts.update(transformer_2=load_transformer(prof, torch.float32, expert="transformer_2"),
                     boundary_ratio=prof.boundary_ratio)
    if prof.task == "i2v":
        if prof.image_encoder:
            processor, clip = load_image_encoder(prof)
            parts.update(image_processor=processor, image_encoder=clip)
        return WanImageToVideoPipeline(**parts)
    return WanPipeline(**parts, expand_timesteps=prof.task == "ti2v")


def generate(pipe):
    # 2 steps at shift 3: timesteps 1000 and 750, so an A14B pipeline runs both experts
    # prompt embeddings given directly (WanImageToVideoPipeline's prompt clean-up needs ftfy, not a dependency)
    emb = torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(prompt_embeds=emb, height=64, width=64, num_frames=5, num_inference_steps=2, guidance_scale=1.0,
              max_sequence_length=64, generator=torch.Generator().manual_seed(0), output_type="latent")
    if type(pipe).__name__ == "WanImageToVideoPipeline":
        rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        kw["image"] = Image.fromarray(rgb)
    return pipe(**kw).frames


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_loads_into_the_family_pipeline_and_changes_its_output(runs, name):
    _, out, _ = runs[name]
    prof = get_profile(name)
    pipe = family_pipeline(name)
    before = generate(pipe)
    if len(prof.experts) == 1:
        pipe.load_lora_weights(str(out), weight_name="run.safetensors", adapter_name="vlp")
        after = generate(pipe)
        assert (after - before).abs().max() > 1e-3
        comfy = family_pipeline(name)  # the ComfyUI file (I2V: k_img / v_img keys) gives the same model
        comfy.load_lora_weights(str(out), weight_name="run_comfy.safetensors", adapter_name="comfy")
        assert torch.allclose(generate(comfy), after, atol=1e-5)
        return
    pipe.load_lora_weights(str(out), weight_name="run_high_noise.safetensors", adapter_name="high")
    high = generate(pipe)
    assert (high - before).abs().max() > 1e-3
    pipe.load_lora_weights(str(out), weight_name="run_low_noise.safetensors", adapter_name="low",
                           load_into_transformer_2=True)
    both = generate(pipe)
    assert (both - high).abs().max() > 1e-3
    # ComfyUI files, one per expert, give the same models
    comfy = family_pipeline(name)
    comfy.load_lora_weights(str(out), weight_name="run_high_noise_comfy.safetensors", adapter_name="high")
    comfy.load_lora_weights(str(out), weight_name="run_low_noise_comfy.safetensors", adapter_name="low",
                            load_into_transformer_2=True)
    assert torch.allclose(generate(comfy), both, atol=1e-5)


def test_i2v_lora_covers_the_image_projections_in_both_layouts(runs):
    _, out, _ = runs["tiny-i2v"]
    diff = load_file(str(out / "run.safetensors"))
    assert "transformer.blocks.0.attn2.add_k_proj.lora_A.weight" in diff
    assert "transformer.blocks.1.attn2.add_v_proj.lora_B.weight" in diff
    comfy = load_file(str(out / "run_comfy.safetensors"))
    assert all(COMFY_BLOCK_KEY.match(k) for k in comfy)
    assert "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight" in comfy
    assert "diffusion_model.blocks.1.cross_attn.v_img.alpha" in comfy
    # text-to-video models have no image projections: the same default targets match nothing there
    assert not any("add_k_proj" in k for k in load_file(str(runs["tiny-t2v-a14b"][1] / "run_high_noise.safetensors")))


# ------------------------------------------------------------------ experts


def test_a14b_writes_one_lora_pair_per_expert_named_for_comfyui(runs):
    for name in ("tiny-t2v-a14b", "tiny-i2v-a14b"):
        _, out, metrics = runs[name]
        prof = get_profile(name)
        assert not (out / "run.safetensors").exists()
        sha = sha256_file(out / "manifest.parquet")
        for expert in ("high", "low"):
            for f in (f"run_{expert}_noise.safetensors", f"run_{expert}_noise_comfy.safetensors"):
                with safe_open(str(out / f), "pt") as fh:
                    meta = fh.metadata()
                assert meta["vlp.expert"] == expert and meta["vlp.family"] == prof.family, f
                assert meta["vlp.profile"] == name and meta["vlp.manifest_sha256"] == sha and meta["vlp.steps"] == "3"
            assert sorted(p.name for p in (out / "checkpoints" / expert).iterdir()) == ["step-000002", "step-000003"]
            assert metrics[expert]["steps"] == 3 and metrics[expert]["resumed_from_step"] is None
        assert metrics["family"] == prof.family and metrics["expert"] == "high+low"
        # one loss curve for dvc plots: the low expert's steps run on after the high one's
        with open(out / "loss.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["step", "train_loss", "expert"]
        assert [(int(r[0]), r[2]) for r in rows[1:]] == [(1, "high"), (2, "high"), (3, "high"), (4, "low"), (5, "low"), (6, "low")]
        manifest = schemas.read_table(out / "manifest.parquet", "manifest")
        assert set(manifest["family"]) == {prof.family} and set(manifest["expert"]) == {"high+low"}
        # both experts saw the same batches: times_seen counts both
        assert manifest["times_seen"].sum() == 2 * 3
    _, out, metrics = runs["tiny"]
    manifest = schemas.read_table(out / "manifest.parquet", "manifest")
    assert set(manifest["family"]) == {"wan2.1-t2v"} and set(manifest["expert"]) == {""}
    assert metrics["family"] == "wan2.1-t2v" and "high" not in metrics


def test_each_expert_samples_only_its_own_timesteps(tmp_path, monkeypatch):
    """Every t the high-noise expert trains or is evaluated on is >= boundary_ratio, every t of the low one below it."""
    from pipeline.train import step as loop  # flow_matching_loss, used by micro_step and evaluate

    seen: dict[int, list[float]] = {}
    real = loop.flow_matching_loss

    def spy(model, inputs, t, noise, compute, conditioning, *rest):
        seen.setdefault(id(model), []).extend(t.tolist())
        return real(model, inputs, t, noise, compute, conditioning, *rest)

    monkeypatch.setattr(loop, "flow_matching_loss", spy)
    clips = [{"clip_id": f"v{i}", "frames": 5} for i in range(4)]
    train_tiny(tmp_path, "tiny-t2v-a14b", clips, steps=6, batch_size=2, held_out_clips=["v3"], eval_every=3,
               timestep_sampling="uniform")
    high, low = list(seen.values())  # trained in turn: high first
    assert len(high) == len(low) > 12
    assert min(high) >= 0.875 and max(low) < 0.875 and min(low) < 0.5
    # the expert's range also takes train.min_t / max_t
    from pipeline.train.config import TrainConfig
    from pipeline.train.experts import experts_to_train

    cfg = TrainConfig(timestep_sampling="uniform", min_t=0.2, max_t=0.95)
    for e in experts_to_train(get_profile("tiny-i2v-a14b"), "both", cfg.min_t, cfg.max_t):
        t = cfg.sampler(e.min_t, e.max_t, e.max_exclusive).sample(20000, torch.Generator().manual_seed(0))
        lo, hi = {"high": (0.9, 0.95), "low": (0.2, 0.9)}[e.name]
        assert t.min() >= lo and t.max() <= hi and (e.name == "high" or t.max() < 0.9), e
    with pytest.raises(ValueError, match="no timesteps for the high-noise expert"):
        experts_to_train(get_profile("tiny-t2v-a14b"), "high", 0.0, 0.5)


def test_one_expert_at_a_time_and_resume_per_expert(tmp_path):
    """A run killed while training the low-noise expert resumes it (the high one is done) and ends with the
    same two LoRAs as an uninterrupted run; expert: low alone leaves no stale high-noise file behind."""
    clips = [{"clip_id": f"v{i}", "frames": 5 if i % 2 else 9} for i in range(3)]
    prof = get_profile("tiny-t2v-a14b")
    data = make_dataset(tmp_path, clips, profile=prof)
    model = {"profile": "tiny-t2v-a14b", "path": None}
    p = params(steps=4, checkpoint_every=2, dropout=0.1)

    def go(run_name, **kw):
        return run_from_params(model, {**p, "run_name": run_name, **kw.pop("extra", {})}, cache_dir=str(data / "cache"),
                               data_dir=str(data), **kw)

    go("straight")

    class Killed(Exception):
        pass

    def kill(step, loss):
        if step == 4 + 3:  # the low expert's step 3 (steps count on through the second expert)
            raise Killed

    with pytest.raises(Killed):
        go("resumed", on_step=kill)
    assert (data / "lora/resumed/resumed_high_noise.safetensors").exists()
    assert not (data / "lora/resumed/resumed_low_noise.safetensors").exists()
    metrics = go("resumed")
    assert metrics["high"]["resumed_from_step"] == 4 and metrics["low"]["resumed_from_step"] == 2
    for f in ("high_noise.safetensors", "low_noise.safetensors"):
        a, b = load_file(str(data / "lora/straight" / f"straight_{f}")), load_file(str(data / "lora/resumed" / f"resumed_{f}"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert (data / "lora/straight/loss.csv").read_text() == (data / "lora/resumed/loss.csv").read_text()
    high, low = (load_file(str(data / f"lora/straight/straight_{e}_noise.safetensors")) for e in ("high", "low"))
    assert any(not torch.equal(high[k], low[k]) for k in high)  # two experts, two different LoRAs

    only_low = go("resumed", extra={"expert": "low"})  # the low expert's checkpoints are reused as they are
    run = data / "lora/resumed"
    assert not (run / "resumed_high_noise.safetensors").exists() and not (run / "resumed_high_noise_comfy.safetensors").exists()
    assert only_low["expert"] == "low" and only_low["low"]["resumed_from_step"] == 4
    b = load_file(str(run / "resumed_low_noise.safetensors"))
    assert all(torch.equal(low[k], b[k]) for k in low)
    assert set(schemas.read_table(run / "manifest.parquet", "manifest")["expert"]) == {"low"}
    with safe_open(str(run / "resumed_low_noise.safetensors"), "pt") as fh:
        assert fh.metadata()["vlp.manifest_sha256"] == sha256_file(run / "manifest.parquet")


# ------------------------------------------------------------------ conditioning


def test_i2v_mask_is_the_pipelines_and_the_model_sees_36_channels(runs):
    pipe = family_pipeline("tiny-i2v")
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    _, condition = pipe.prepare_latents(image, 1, 16, 64, 64, 9, torch.float32, "cpu", torch.Generator().manual_seed(0))
    mask = first_frame_mask(1, 3, 8, 8, 4)
    assert condition.shape[1] == 4 + 16 and torch.equal(condition[:, :4], mask)
    assert mask[:, :, 0].eq(1).all() and mask[:, :, 1:].eq(0).all()

    captured = {}

    class Model(torch.nn.Module):
        config = type("C", (), {"patch_size": (1, 2, 2)})

        def forward(self, **kw):
            captured.update(kw)
            return (torch.zeros(kw["hidden_states"].shape[0], 16, *kw["hidden_states"].shape[2:]),)

    from pipeline.train.step import flow_matching_loss

    x0, cond, img = torch.randn(2, 16, 3, 8, 8), torch.randn(2, 16, 3, 8, 8), torch.randn(2, 17, 32)
    t = torch.tensor([0.25, 0.5])
    noise = torch.randn(2, 16, 3, 8, 8)
    loss = flow_matching_loss(Model(), TrainInputs(x0, torch.randn(2, 7, 32), cond, img), t, noise, torch.float32,
                              Conditioning.of(get_profile("tiny-i2v")))
    hs = captured["hidden_states"]
    assert hs.shape == (2, 36, 3, 8, 8)
    tt = t.view(2, 1, 1, 1, 1)
    assert torch.allclose(hs[:, :16], (1 - tt) * x0 + tt * noise)
    assert torch.equal(hs[:, 16:20], mask.expand(2, -1, -1, -1, -1)) and torch.equal(hs[:, 20:], cond)
    assert torch.equal(captured["encoder_hidden_states_image"], img) and torch.equal(captured["timestep"], t * 1000)
    assert loss.item() == pytest.approx(((noise - x0) ** 2).mean().item(), rel=1e-5)
    # Wan 2.2 I2V A14B: same channels, no CLIP embeddings
    captured.clear()
    flow_matching_loss(Model(), TrainInputs(x0, torch.randn(2, 7, 32), cond, None), t, noise, torch.float32,
                       Conditioning.of(get_profile("tiny-i2v-a14b")))
    assert captured["hidden_states"].shape[1] == 36 and "encoder_hidden_states_image" not in captured


def test_ti2v_keeps_the_first_frame_clean_with_per_token_timesteps(runs):
    captured = {}

    class Model(torch.nn.Module):
        config = type("C", (), {"patch_size": (1, 2, 2)})

        def forward(self, **kw):
            captured.update(kw)
            return (torch.zeros_like(kw["hidden_states"]),)

    from pipeline.train.step import flow_matching_loss

    ti2v = Conditioning.of(get_profile("tiny-ti2v"))
    x0, noise = torch.randn(2, 48, 3, 4, 6), torch.randn(2, 48, 3, 4, 6)
    t = torch.tensor([0.3, 0.9])
    loss = flow_matching_loss(Model(), TrainInputs(x0, torch.randn(2, 7, 32)), t, noise, torch.float32, ti2v)
    hs, ts = captured["hidden_states"], captured["timestep"]
    assert torch.equal(hs[:, :, 0], x0[:, :, 0])
    tt = t.view(2, 1, 1, 1, 1)
    assert torch.allclose(hs[:, :, 1:], ((1 - tt) * x0 + tt * noise)[:, :, 1:])
    per_frame = 2 * 3  # tokens of one latent frame: (4 / 2) x (6 / 2)
    assert ts.shape == (2, 3 * per_frame) and ts[:, :per_frame].eq(0).all()
    assert torch.allclose(ts[:, per_frame:], (t * 1000).view(2, 1).expand(2, 2 * per_frame))
    assert loss.item() == pytest.approx(((noise - x0)[:, :, 1:] ** 2).mean().item(), rel=1e-5)  # first frame left out
    # a photo (one latent frame) is trained text-to-image: every token at t, the whole frame in the loss
    p0, pn = torch.randn(1, 48, 1, 4, 6), torch.randn(1, 48, 1, 4, 6)
    loss = flow_matching_loss(Model(), TrainInputs(p0, torch.randn(1, 7, 32)), t[:1], pn, torch.float32, ti2v)
    assert captured["timestep"].shape == (1, per_frame) and captured["timestep"].eq(300).all()
    assert loss.item() == pytest.approx(((pn - p0) ** 2).mean().item(), rel=1e-5)
    # WanPipeline(expand_timesteps=True) builds its per-token timesteps the same way (mask[:, ::2, ::2] * t, flattened)
    mask = torch.ones(48, 3, 4, 6)
    mask[:, 0] = 0
    assert torch.equal((mask[0][:, ::2, ::2] * 900.0).flatten(), ts[1])


def test_image_samples_are_skipped_for_i2v_and_trained_for_ti2v(runs):
    for name, has_image in (("tiny-i2v", False), ("tiny-i2v-a14b", False), ("tiny-ti2v", True), ("tiny", True)):
        _, out, _ = runs[name]
        manifest = schemas.read_table(out / "manifest.parquet", "manifest")
        assert ("image" in set(manifest["kind"])) == has_image, name
        assert set(manifest.filter(pl.col("kind") == "video")["clip_id"]) == {"v0", "v1"}


# ------------------------------------------------------------------ refusal across VAEs


def test_latents_of_another_vae_are_refused_with_a_clear_error(tmp_path):
    wan22 = make_dataset(tmp_path / "ti2v", CLIPS[:1], profile=get_profile("tiny-ti2v"))
    for name in ("tiny", "tiny-t2v-a14b", "tiny-i2v"):
        with pytest.raises(ValueError, match=r"encoded\.parquet: encoded latents were made with the wan2\.2 VAE.*"
                                             rf"model\.profile={name}"):
            run_from_params({"profile": name, "path": None}, params(), cache_dir=str(wan22 / "cache"), data_dir=str(wan22))
    wan21 = make_dataset(tmp_path / "t2v", CLIPS[:1])
    with pytest.raises(ValueError, match="wan2.1 VAE .*needs latents of the wan2.2 VAE"):
        run_from_params({"profile": "tiny-ti2v", "path": None}, params(), cache_dir=str(wan21 / "cache"), data_dir=str(wan21))
    with pytest.raises(ValueError, match="no first-frame conditioning latents"):
        run_from_params({"profile": "tiny-i2v-a14b", "path": None}, params(), cache_dir=str(wan21 / "cache"), data_dir=str(wan21))
    # the Wan 2.2 A14B T2V experts use the Wan 2.1 VAE: Wan 2.1 T2V latents train them
    metrics = run_from_params({"profile": "tiny-t2v-a14b", "path": None}, params(steps=1, expert="high"),
                              cache_dir=str(wan21 / "cache"), data_dir=str(wan21))
    assert metrics["expert"] == "high" and (wan21 / "lora/run/run_high_noise.safetensors").exists()


def test_a_transformer_of_another_family_is_refused():
    from pipeline.models.tiny.transformer import (
        build_transformer,
        tiny_transformer_config,
    )
    from pipeline.models.transformer import check_transformer

    t2v = build_transformer(tiny_transformer_config(get_profile("tiny")))
    with pytest.raises(ValueError, match="needs 36 / 16"):
        check_transformer(t2v, get_profile("tiny-i2v-a14b"))
    i2v22 = build_transformer(tiny_transformer_config(get_profile("tiny-i2v-a14b")))
    with pytest.raises(ValueError, match="no image embedder"):
        check_transformer(i2v22, get_profile("tiny-i2v"))
    from pipeline.models.transformer import load_transformer

    a, b = (load_transformer(get_profile("tiny-t2v-a14b"), torch.float32, expert=e) for e in ("transformer", "transformer_2"))
    assert not torch.equal(a.proj_out.weight, b.proj_out.weight)  # two experts, two models
    with pytest.raises(ValueError, match="no 'transformer_2'"):
        load_transformer(get_profile("tiny"), expert="transformer_2")


# ------------------------------------------------------------------ audit


def test_audit_names_family_and_expert_and_finds_expert_loras(runs, capsys):
    from pipeline.cli import main as vlp

    data, out, _ = runs["tiny-t2v-a14b"]
    assert vlp(["audit", str(out / "run_low_noise.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "family wan2.2-t2v-a14b" in text and "expert low (low-noise: transformer_2)" in text
    assert vlp(["audit", str(out / "run_high_noise.safetensors"), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["family"] == "wan2.2-t2v-a14b" and js["expert"] == "high" and js["verified"]
    assert {s["expert"] for s in js["samples"]} == {"high+low"}
    source = schemas.read_table(out / "manifest.parquet", "manifest")["source_id"][0]
    assert vlp(["audit", "--source", source, "--lora-dir", str(data / "lora"), "--json"]) == 0
    used = json.loads(capsys.readouterr().out)["used_by"]
    assert sorted((u["lora"].rsplit("/", 1)[1], u["expert"], u["family"]) for u in used) == [
        ("run_high_noise.safetensors", "high", "wan2.2-t2v-a14b"), ("run_low_noise.safetensors", "low", "wan2.2-t2v-a14b")]


@pytest.mark.parametrize("name", ["tiny-i2v", "tiny-ti2v"])
def test_bench_train_step_takes_a_family_profile(tmp_path, monkeypatch, name):
    """bench/train_step.py --profile builds the family's model and conditioning (tiny size on the CPU)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_step", Path(__file__).parents[2] / "bench" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench.main(["--tiny", "--cases", "1.3b", "--steps", "2", "--profile", name]) == 0
    rec = json.loads((tmp_path / "train_step.jsonl").read_text().splitlines()[0])
    assert "error" not in rec and rec["profile"] == name and rec["step_s_median"] > 0
    assert rec["latent"][1] == get_profile(name).latent_channels
