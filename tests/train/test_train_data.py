"""Train stage, no model: timestep sampling, held-out split, bucket batches, ComfyUI keys, estimate."""

import re
from collections import Counter

import polars as pl
import pytest
import torch

from pipeline.core import schemas
from pipeline.models.profiles import get_profile
from pipeline.train.comfy_keys import comfy_module_name, to_comfy
from pipeline.train.data import (
    BatchPlan,
    build_samples,
    check_profile,
    held_out_flags,
    pad_text,
    sample_repeats,
)
from pipeline.train.timesteps import TimestepSampler, shift_timesteps
from tests.helpers.comfy import COMFY_BLOCK_KEY
from tests.helpers.train_data import make_dataset


def test_timestep_methods_stay_in_range_and_shift_moves_towards_noise():
    def g():
        return torch.Generator().manual_seed(0)

    for method in ("uniform", "logit_normal", "sigmoid", "shift"):
        t = TimestepSampler(method, min_t=0.2, max_t=0.6).sample(4000, g())
        assert t.min() >= 0.2 and t.max() <= 0.6, method
        assert torch.equal(t, TimestepSampler(method, min_t=0.2, max_t=0.6).sample(4000, g()))
    plain = TimestepSampler("sigmoid").sample(4000, g())
    shifted = TimestepSampler("shift", shift=3.0).sample(4000, g())
    assert torch.allclose(shifted, shift_timesteps(plain, 3.0))
    assert shifted.mean() > plain.mean() + 0.1
    assert abs(TimestepSampler("uniform").sample(20000, g()).mean().item() - 0.5) < 0.01
    assert torch.allclose(shift_timesteps(torch.tensor([0.0, 0.5, 1.0]), 3.0), torch.tensor([0.0, 0.75, 1.0]))
    with pytest.raises(ValueError, match="timestep sampling"):
        TimestepSampler("cosine")


def _mixed(tmp_path):
    clips = [{"clip_id": f"v{i}", "frames": 17 if i < 4 else 33, "height": 64, "width": 64 if i % 2 else 96,
              "source": f"vids/src{i % 3}"} for i in range(8)]
    clips += [{"clip_id": f"i{i}", "kind": "image", "frames": 1, "height": 64, "width": 64 if i < 3 else 48,
               "source": f"photos/p{i}"} for i in range(5)]
    data = make_dataset(tmp_path, clips)
    return build_samples(schemas.read_table(data / "encoded.parquet", "encoded"),
                         schemas.read_table(data / "clips.parquet", "clips"),
                         schemas.read_table(data / "captions.parquet", "captions"))


def test_samples_carry_provenance(tmp_path):
    s = _mixed(tmp_path)
    row = s.filter(pl.col("clip_id") == "v1").row(0, named=True)
    assert row["source_path"] == "vids/src1.mp4" and row["start_frame"] == 10 and row["caption_source"] == "vlm"
    check_profile(s, get_profile("tiny"))
    with pytest.raises(ValueError, match="family"):
        check_profile(s.with_columns(pl.lit("wan2.2-ti2v").alias("family")), get_profile("tiny"))


def test_batches_never_mix_kinds_or_buckets_and_follow_the_seed(tmp_path):
    s = _mixed(tmp_path)
    reps = sample_repeats(s, {"video": 1, "image": 2}, {"vids/src0*": 3})
    assert reps[s["clip_id"].to_list().index("v0")] == 3 and reps[s["clip_id"].to_list().index("i0")] == 2
    plan = BatchPlan(s, reps, batch_size=2, seed=7, image_fraction=0.25)
    batches = plan.take(400)
    buckets = list(zip(*(s[c].to_list() for c in ("kind", "bucket_frames", "bucket_height", "bucket_width"))))
    for b in batches:
        assert {buckets[r] for r in b.rows} == {b.bucket} and b.bucket[0] == b.kind
        assert 1 <= len(b.rows) <= 2
    image_share = sum(b.kind == "image" for b in batches) / len(batches)
    assert 0.18 < image_share < 0.32
    # repeats: over whole epochs, v0 (source src0, x3) shows up 3x as often as v1
    seen = Counter(r for b in batches if b.kind == "video" for r in b.rows)
    ids = s["clip_id"].to_list()
    assert seen[ids.index("v0")] == pytest.approx(3 * seen[ids.index("v1")], rel=0.2)
    # deterministic, resumable at any index, and the seed matters
    assert BatchPlan(s, reps, 2, 7, 0.25).take(400) == batches
    assert BatchPlan(s, reps, 2, 7, 0.25).take(50, start=123) == batches[123:173]
    assert BatchPlan(s, reps, 2, 8, 0.25).take(400) != batches
    only_video = BatchPlan(s, reps, 2, 7, 0.0).take(50)
    assert all(b.kind == "video" for b in only_video)


def test_held_out_is_by_clip_or_source_and_stable(tmp_path):
    s = _mixed(tmp_path)
    flags = held_out_flags(s, 0.3)
    assert flags == held_out_flags(s, 0.3) and 0 < sum(flags) < len(flags)
    listed = held_out_flags(s, 0.0, ["v3"])
    assert [c for c, f in zip(s["clip_id"], listed) if f] == ["v3"]
    by_source = held_out_flags(s, 0.5, by="source")
    src = dict(zip(s["source_id"], by_source))
    assert all(src[sid] == f for sid, f in zip(s["source_id"], by_source))
    # a fraction that would hold out everything holds out nothing
    assert not any(held_out_flags(s[:1], 0.999999))


def test_text_is_zero_padded_to_the_profile_length():
    e = torch.randn(5, 32)
    p = pad_text(e, 64)
    assert p.shape == (64, 32) and torch.equal(p[:5], e) and not p[5:].any()


def test_comfy_keys_follow_the_wan_layout_and_diffusers_reads_them_back():
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_wan_lora_to_diffusers,
    )

    from pipeline.train.lora import DEFAULT_TARGETS

    r, alpha = 4, 8.0
    g = torch.Generator().manual_seed(0)
    sd = {}
    for block in range(2):
        for t in DEFAULT_TARGETS:
            sd[f"blocks.{block}.{t}.lora_A.weight"] = torch.randn(r, 32, generator=g)
            sd[f"blocks.{block}.{t}.lora_B.weight"] = torch.randn(48, r, generator=g)
    comfy = to_comfy(sd, alpha)
    assert all(COMFY_BLOCK_KEY.match(k) for k in comfy), [k for k in comfy if not COMFY_BLOCK_KEY.match(k)]
    assert "diffusion_model.blocks.1.self_attn.q.lora_A.weight" in comfy
    assert "diffusion_model.blocks.0.cross_attn.o.lora_B.weight" in comfy
    assert "diffusion_model.blocks.0.ffn.0.alpha" in comfy and comfy["diffusion_model.blocks.0.ffn.2.alpha"].item() == alpha
    assert len([k for k in comfy if k.endswith(".alpha")]) == 2 * len(DEFAULT_TARGETS)
    back = _convert_non_diffusers_wan_lora_to_diffusers({k: v.clone() for k, v in comfy.items()})  # it scales in place
    assert set(back) == {f"transformer.{k}" for k in sd}
    for k in sd:
        if k.endswith("lora_A.weight"):
            kb = k.replace("lora_A", "lora_B")
            # diffusers bakes alpha / r into the weights; the product is the same update
            assert torch.allclose(back[f"transformer.{kb}"] @ back[f"transformer.{k}"], (alpha / r) * sd[kb] @ sd[k], atol=1e-5)
    assert comfy_module_name("blocks.3.attn2.add_k_proj") == "blocks.3.cross_attn.k_img"
    with pytest.raises(ValueError, match="ComfyUI"):
        comfy_module_name("blocks.0.norm2")
    assert re.match(r"^diffusion_model\.blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)\.lora_(A|B)\.weight$",
                    "diffusion_model.blocks.12.cross_attn.v.lora_B.weight")


def test_estimate_matches_the_measured_h200_figures():
    """The pre-run estimate reproduces bench/baseline-h200.jsonl (its calibration) within 5%."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    from pipeline.models.transformer import transformer_config
    from pipeline.train.estimate import ModelSize, estimate_step

    measured = {("1.3b", "bf16"): (11.72, 2.944), ("14b", "bf16"): (54.71, 14.022), ("14b", "fp8"): (38.66, 13.251)}
    sizes = {}
    for (size, storage), (gib, secs) in measured.items():
        if size not in sizes:
            with torch.device("meta"):  # shapes only, no memory
                m = WanTransformer3DModel(**transformer_config(size))
            targets = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
            m.add_adapter(LoraConfig(r=32, lora_alpha=32, target_modules=targets))
            sizes[size] = ModelSize.of(m)
            assert sizes[size].base_params + sizes[size].lora_params == {"1.3b": 1462742080, "14b": 14441845824}[size]
        est = estimate_step(sizes[size], 21 * 30 * 52, storage=storage)
        assert est.peak_gib == pytest.approx(gib, rel=0.05) and est.step_s == pytest.approx(secs, rel=0.05)
    small = estimate_step(ModelSize(30, 1536, 8960, 1_419_000_000, 1_392_000_000, 43_745_280), 21 * 30 * 52 // 4)
    assert small.peak_gib < 11.72 and small.step_s < 2.94
