"""Sample videos of the image-to-video families and of Wan 2.2 A14B: the latents a run samples from
the cache alone equal what the family's diffusers pipeline makes with the real (tiny) VAE and CLIP
given the same image, and with both A14B experts and their LoRA files loaded as a user loads them."""

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.core.layout import Layout
from pipeline.encode.config import EncodeConfig
from pipeline.encode.encoder import Encoder
from pipeline.encode.pixels import load_frames
from pipeline.encode.prompts import encode_prompts_table
from pipeline.encode.sample_images import encode_sample_images, image_samples
from pipeline.encode.stage import sample_entries
from pipeline.models.profiles import get_profile
from pipeline.models.transformer import load_transformer
from pipeline.render.stage import run as render
from pipeline.train.config import TrainConfig
from pipeline.train.data import pad_text
from pipeline.train.experts import experts_to_train
from pipeline.train.sampling import SampleMaker, make_scheduler
from pipeline.train.setup import setup_lora_training
from pipeline.train.stage import run_from_params
from tests.helpers.train_data import make_dataset

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPT, IMAGE, STEPS = "a cat turns its head", "data/raw/cat.png", 3
ENCODE = EncodeConfig(device="cpu", dtype="float32", vae_tiling=False)


def size(name):
    """(frames, height, width) of the samples: multiples of 32 px for the Wan 2.2 VAE's TI2V."""
    return 5, 32, 64 if get_profile(name).task == "ti2v" else 48


def encode_inputs(root, name, prompts=(PROMPT,), images=(IMAGE,)):
    """What the encode stage caches for the samples: prompts.parquet, sample_images.parquet, entries."""
    (root / "data" / "raw").mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(7).integers(0, 256, (40, 56, 3), dtype=np.uint8)  # not the sample's aspect: cropped
    Image.fromarray(rgb).save(root / IMAGE)
    enc = Encoder(CacheStore(root / "data" / "cache"), get_profile(name), ENCODE)
    frames, h, w = size(name)
    table, _ = encode_prompts_table(enc, list(prompts))
    conds, computed = encode_sample_images(enc, list(images), root, frames, h, w)
    schemas.write_table(table, root / "data" / "prompts.parquet", "prompts")
    schemas.write_table(conds, root / "data" / "sample_images.parquet", "sample_images")
    return enc.store, table, conds, computed


def sample_cfg(name, **kw):
    frames, h, w = size(name)
    base = dict(samples=[{"prompt": PROMPT, "image": IMAGE}], sample_every=1, sample_frames=frames, sample_height=h,
                sample_width=w, sample_steps=STEPS, sample_guidance=5.0, rank=4, alpha=8, base_storage="fp32")
    return TrainConfig(**{**base, **kw})


def lora_model(name, expert_model="transformer"):
    """The family's transformer with a LoRA that changes its output (lora_B drawn, not zero)."""
    prof = get_profile(name)
    model = load_transformer(prof, torch.float32, "cpu", expert_model)
    setup_lora_training(model, sample_cfg(name), "fp32", torch.float32)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def reference(name, store, prompts, root, transformers, lora_files=()):
    """The family's diffusers pipeline with its real (tiny) VAE and CLIP, given the cropped image."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    from pipeline.models.image_encoder import load_image_encoder
    from pipeline.models.vae import load_vae

    prof = get_profile(name)
    frames, h, w = size(name)
    parts = dict(tokenizer=None, text_encoder=None, scheduler=make_scheduler(prof), **transformers)
    if len(prof.experts) == 2:
        parts["boundary_ratio"] = prof.boundary_ratio
    kw = {}
    if prof.task == "t2v":
        pipe = WanPipeline(vae=None, **parts)
    else:
        if prof.image_encoder:
            processor, clip = load_image_encoder(prof, torch.float32, "cpu")
            parts.update(image_processor=processor, image_encoder=clip)
        pipe = WanImageToVideoPipeline(vae=load_vae(prof, torch.float32, "cpu"), expand_timesteps=prof.task == "ti2v",
                                       **parts)
        s = image_samples([IMAGE], root, prof, frames, h, w)[0]
        kw["image"] = Image.fromarray(load_frames(s.path, "image", [0], s.resize, s.size)[0])
    for folder, file, into_2 in lora_files:
        pipe.load_lora_weights(str(folder), weight_name=file, adapter_name=file.split(".")[0],
                               **({"load_into_transformer_2": True} if into_2 else {}))
    if prof.task == "t2v":
        pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal = prof.vae_scale_spatial, prof.vae_scale_temporal
    key = {r["role"]: r["text_key"] for r in prompts.iter_rows(named=True)}
    emb = lambda k: pad_text(store.get(k)["prompt_embeds"].float(), prof.max_text_tokens)[None]  # noqa: E731
    with torch.no_grad():
        return pipe(prompt_embeds=emb(key["sample"]), negative_prompt_embeds=emb(key["empty"]), height=h, width=w,
                    num_frames=frames, num_inference_steps=STEPS, guidance_scale=5.0,
                    generator=torch.Generator().manual_seed(42), output_type="latent", **kw).frames[0]


@pytest.mark.parametrize("name", ["tiny-i2v", "tiny-ti2v", "tiny-i2v-a14b"])
def test_image_samples_equal_the_family_pipeline_with_its_vae_and_clip(tmp_path, name):
    prof = get_profile(name)
    store, prompts, conds, computed = encode_inputs(tmp_path, name)
    assert computed == (2 if prof.image_encoder else 1)  # the VAE condition (and the CLIP embedding)
    expert = experts_to_train(prof, "high")[0]
    model = lora_model(name, expert.model)
    maker = SampleMaker(sample_cfg(name), prof, prompts, store, tmp_path / "run", torch.device("cpu"), torch.float32,
                        images=conds, expert=expert)
    [path] = maker.run(model, 1)
    with safe_open(str(path), "pt") as f:
        ours, meta = f.get_tensor("latents"), f.metadata()
    assert meta["image"] == IMAGE and meta["family"] == prof.family
    transformers = {"transformer": model}
    if len(prof.experts) == 2:  # the other expert as the sample loaded it: base weights (this run has no low LoRA)
        transformers["transformer_2"] = load_transformer(prof, torch.float32, "cpu", "transformer_2")
    model.eval()
    torch.testing.assert_close(ours, reference(name, store, prompts, tmp_path, transformers), rtol=1e-4, atol=1e-4)


def test_sample_images_are_encoded_once_and_bad_ones_are_one_line_errors(tmp_path):
    *_, computed = encode_inputs(tmp_path, "tiny-i2v")
    *_, again = encode_inputs(tmp_path, "tiny-i2v")
    assert (computed, again) == (2, 0)
    enc = Encoder(CacheStore(tmp_path / "cache2"), get_profile("tiny-i2v"), ENCODE)
    with pytest.raises(ValueError, match=r"data/raw/gone\.png: train.samples image cannot be read"):
        encode_sample_images(enc, ["data/raw/gone.png"], tmp_path, 5, 32, 48)
    i2v, t2v = get_profile("tiny-i2v"), get_profile("tiny")
    with pytest.raises(ValueError, match=r"train.samples\[0\]: tiny-i2v makes videos from an image"):
        sample_entries({"samples": ["no image"]}, i2v)
    with pytest.raises(ValueError, match=r"train.samples\[0\]: tiny is text-to-video; leave out 'image'"):
        sample_entries({"samples": [{"prompt": "x", "image": IMAGE}]}, t2v)
    assert sample_entries({"samples": [{"prompt": "x", "image": IMAGE}]}, get_profile("tiny-ti2v")) == [("x", IMAGE)]


def test_samples_at_another_size_than_encoded_ask_for_the_encode_stage(tmp_path):
    store, prompts, conds, _ = encode_inputs(tmp_path, "tiny-i2v")
    with pytest.raises(ValueError, match=r"no cached conditioning of image data/raw/cat\.png at 64x32.*re-run the encode"):
        SampleMaker(sample_cfg("tiny-i2v", sample_width=64), get_profile("tiny-i2v"), prompts, store, tmp_path,
                    torch.device("cpu"), torch.float32, images=conds)


def test_a14b_samples_use_both_experts_with_the_loras_of_the_run(tmp_path):
    """expert: both trains high, then low; the low-noise expert's last samples equal WanPipeline with both
    LoRA files loaded as a user loads them, and the sample steps count on as the loss curves do."""
    name = "tiny-t2v-a14b"
    prof = get_profile(name)
    data = make_dataset(tmp_path, [{"clip_id": f"c{i}", "frames": 9} for i in range(2)], profile=prof)
    store, prompts, _, _ = encode_inputs(tmp_path, name, images=())
    frames, h, w = size(name)
    params = dict(run_name="run", steps=2, rank=4, alpha=8, lr=5e-2, base_storage="fp32", save_dtype="float32",
                  held_out_fraction=0.0, eval_every=0, checkpoint_every=0, progress=False, seed=3, expert="both",
                  samples=[PROMPT], sample_every=1, sample_frames=frames, sample_height=h, sample_width=w,
                  sample_steps=STEPS)
    run_from_params({"profile": name, "path": None}, params, cache_dir=str(data / "cache"), data_dir=str(data))
    out = data / "lora" / "run"
    steps = sorted(p.name for p in (out / "samples").iterdir())
    assert steps == ["step-00001", "step-00002", "step-00003", "step-00004"]  # high 1-2, then low 3-4
    with safe_open(str(out / "samples" / "step-00004" / "0.safetensors"), "pt") as f:
        ours, meta = f.get_tensor("latents"), f.metadata()
    assert (meta["expert"], meta["partner_lora"]) == ("low", "run_high_noise.safetensors")
    transformers = {"transformer": load_transformer(prof, torch.float32, "cpu", "transformer"),
                    "transformer_2": load_transformer(prof, torch.float32, "cpu", "transformer_2")}
    ref = reference(name, store, prompts, tmp_path, transformers,
                    [(out, "run_high_noise.safetensors", False), (out, "run_low_noise.safetensors", True)])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    # the high-noise expert's samples had the base low-noise expert: not what the final pair makes
    high_last = load_file(str(out / "samples" / "step-00002" / "0.safetensors"))["latents"]
    assert (high_last - ours).abs().max() > 1e-3


def test_i2v_run_samples_from_the_cache_and_the_render_stage_decodes_them(tmp_path):
    name = "tiny-i2v"
    prof = get_profile(name)
    data = make_dataset(tmp_path, [{"clip_id": "c0", "frames": 9}], profile=prof)
    encode_inputs(tmp_path, name)
    frames, h, w = size(name)
    params = dict(run_name="run", steps=2, rank=4, alpha=8, lr=5e-2, base_storage="fp32", save_dtype="float32",
                  held_out_fraction=0.0, eval_every=0, checkpoint_every=0, progress=False, seed=3,
                  samples=[{"prompt": PROMPT, "image": IMAGE}], sample_every=2, sample_frames=frames, sample_height=h,
                  sample_width=w, sample_steps=2)
    run_from_params({"profile": name, "path": None}, params, cache_dir=str(data / "cache"), data_dir=str(data))
    latents = load_file(str(data / "lora" / "run" / "samples" / "step-00002" / "0.safetensors"))["latents"]
    assert list(latents.shape) == [16, 2, h // 8, w // 8] and torch.isfinite(latents).all()
    metrics = render({"model": {"profile": name, "path": None}}, Layout.of(data))
    assert (metrics["rendered"], metrics["failed"]) == (1, [])
    assert (data / "samples" / "run" / "step-00002" / "0.mp4").stat().st_size > 0
    assert schemas.read_table(data / "sample_images.parquet", "sample_images")["bucket"].to_list() == [[frames, h, w]]
    assert pl.read_parquet(data / "prompts.parquet")["role"].to_list() == ["empty", "sample"]
