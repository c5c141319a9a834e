"""The memory planner against hand-computed expectations (no model weights: shapes on the meta device)."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from peft import LoraConfig

from pipeline.models.transformer import transformer_config
from pipeline.train.estimate import GIB, MemoryPlan, ModelSize, estimate_step, gpu_spec
from pipeline.train.lora import DEFAULT_TARGETS, target_regex
from pipeline.train.planner import (
    FIT_FRACTION,
    PlanError,
    Wanted,
    choose_plan,
    plan_memory,
)

TOKENS_480P = 21 * 30 * 52  # 480x832x81: 21 latent frames of 60x104, 2x2 patches
TOKENS_720P = 21 * 45 * 80  # 720x1280x81
TOKENS_5B_480P = 21 * 15 * 26  # Wan 2.2 VAE: 16x spatial
TOKENS_5B_720P = 21 * 22 * 40  # 704x1280x81


def _size(shape: str, channels: int = 16, in_channels: int | None = None) -> ModelSize:
    with torch.device("meta"):
        model = WanTransformer3DModel(**transformer_config(shape, channels, 4096, in_channels))
    model.add_adapter(LoraConfig(r=32, lora_alpha=32, target_modules=target_regex(DEFAULT_TARGETS)))
    return ModelSize.of(model)


@pytest.fixture(scope="module")
def sizes():
    return {"14b": _size("14b"), "a14b": _size("14b", 16, 36), "5b": _size("5b", 48)}


def test_the_14b_terms_by_hand(sizes):
    """Wan 14B, fp8 storage, 480x832x81, LoRA r32 with AdamW, by hand (GiB = 2**30 bytes):
    one block: 351,272,960 Linear weights at 1 byte + 121,344 other params at 2 bytes = 0.32738;
    outside the blocks: 232,719,424 params at 2 bytes = 0.43347; LoRA 153,354,240 x 16 bytes = 2.28516;
    a block input 32,760 x 5,120 x 2 = 0.31242; one block's recomputed internals in bf16 32,760 x 54.3 x
    5,120 = 8.4826 plus the FFN part 32,760 x 11.14 x 13,824 = 4.6985, at least 32,760 x 68 x 5,120 = 10.6218
    (the attention's own peak); fp8 storage scales them by 0.778 (all resident) or 0.83 (streaming)."""
    s = sizes["14b"]
    assert s.block_bytes("fp8") / GIB == pytest.approx(0.32738, abs=1e-5)
    assert s.nonblock_bytes("fp8") / GIB == pytest.approx(0.43347, abs=1e-5)
    full = estimate_step(s, TOKENS_480P, storage="fp8")
    assert full.lora_gib == pytest.approx(2.28516, abs=1e-5)
    # everything resident: 0.43347 + 40 x 0.32738 + 2.28516 + 40 x 0.31242 + 13.1811 x 0.778 = 38.5654
    assert full.peak_gib == pytest.approx(38.5654, abs=1e-3)
    # 20 swapped, inputs offloaded: 0.43347 + (20 + 2 slots) x 0.32738 + 2.28516 + 3 x 0.31242 + 13.1811 x 0.83
    planned = estimate_step(s, TOKENS_480P, storage="fp8", plan=MemoryPlan(20, True, 1))
    assert planned.peak_gib == pytest.approx(21.7986, abs=1e-3)
    # 2 chunks: the FFN part halves (8.4826 + 2.3493 = 10.8319 > the floor), x 0.83
    chunked = estimate_step(s, TOKENS_480P, storage="fp8", plan=MemoryPlan(20, True, 2))
    assert planned.peak_gib - chunked.peak_gib == pytest.approx(2.3493 * 0.83, abs=1e-3)
    # 4 chunks hit the floor: 8.4826 + 1.1746 = 9.6572 < 10.6218
    assert estimate_step(s, TOKENS_480P, storage="fp8", plan=MemoryPlan(20, True, 4)).peak_gib == pytest.approx(
        estimate_step(s, TOKENS_480P, storage="fp8", plan=MemoryPlan(20, True, 8)).peak_gib)
    # one more FFN forward per block: 40 x 2 x 32,760 x 2 x 5,120 x 13,824 FLOPs x 1.945e-15 s = 0.7217 s
    assert chunked.step_s - planned.step_s == pytest.approx(0.7217, abs=2e-3)


# (model, storage, tokens, budget GiB) -> (blocks_to_swap, offload_activations, ffn_chunks), or the budget
# named in the refusal. Worked by hand for 14B fp8 at 480p (terms above; a plan fits under 0.92 x budget):
#  80 GiB: 38.57 <= 73.6: everything resident.
#  32 GiB: limit 29.44 < 38.57; inputs offloaded, nothing swapped: 0.43347 + 13.0952 + 2.28516 + 0.93726 +
#          10.9403 = 27.69: fits.
#  24 GiB: limit 22.08; without offload even 40 swapped leaves 26.0: offload; the rest without blocks is
#          0.43347 + 2.28516 + 0.93726 + 10.9403 = 14.5962, room 7.4838 / 0.32738 = 22 blocks on the device,
#          2 of them slots: 20 resident, 20 swapped. 2 FFN chunks would save 6 swaps but cost 0.72 s of 13.3.
#  16 GiB: limit 14.72; 1 chunk leaves 14.5962 + 2 slots = 15.25: too much. 2 chunks: 12.6464, room 2.0736 ->
#          6 blocks on the device: 36 swapped.
#  12 GiB: the smallest plan (all swapped, offload, 4 chunks: the floor 10.6218 x 0.83 = 8.8161)
#          0.43347 + 2.28516 + 0.93726 + 8.8161 + 2 x 0.32738 = 13.127 > 11.04: refused, naming
#          13.127 / 0.92 = 14.27 -> "14.3 GiB" (rounded up to 0.1).
# 720p (75,600 tokens: a block input 0.72098, the floor 24.513 x 0.83 = 20.346): the smallest plan
# 0.43347 + 2.28516 + 3 x 0.72098 + 20.346 + 2 x 0.32738 = 25.882 -> needs 28.2 GiB; at 32 GiB 4 chunks
# (at the floor; 2 chunks give 24.997 x 0.83) leave room for 12 blocks on the device: 30 swapped.
# A14B: each expert is a 14B transformer (the I2V one with 36 input channels): the same plans, per expert.
# 5B (bf16; 0.30483 GiB a block): at 8,190 tokens a block computes in ~8 ms, less than a block's copy
# (13 ms over PCIe 4.0), so swapping costs time and offload is preferred to a few more swapped blocks.
EXPECTED = {
    ("14b", "fp8", TOKENS_480P): {80: (0, False, 1), 32: (0, True, 1), 24: (20, True, 1), 16: (36, True, 2), 12: "14.3"},
    ("14b", "fp8", TOKENS_720P): {80: (0, False, 1), 32: (30, True, 4), 24: "28.2", 16: "28.2", 12: "28.2"},
    ("a14b", "fp8", TOKENS_480P): {80: (0, False, 1), 32: (0, True, 1), 24: (20, True, 1), 16: (36, True, 2), 12: "14.3"},
    ("a14b", "fp8", TOKENS_720P): {80: (0, False, 1), 32: (30, True, 4), 24: "28.2", 16: "28.2", 12: "28.2"},
    ("5b", "bf16", TOKENS_5B_480P): {80: (0, False, 1), 32: (0, False, 1), 24: (0, False, 1), 16: (0, False, 1), 12: (9, True, 1)},
    ("5b", "bf16", TOKENS_5B_720P): {80: (0, False, 1), 32: (0, False, 1), 24: (0, False, 1), 16: (8, True, 1), 12: (20, True, 1)},
}


@pytest.mark.parametrize("case", list(EXPECTED), ids=lambda c: f"{c[0]}-{c[2]}")
def test_planner_choices_for_common_cards(sizes, case):
    name, storage, tokens = case
    for budget, want in EXPECTED[case].items():
        if isinstance(want, str):
            with pytest.raises(PlanError, match=rf"needs a budget of {want} GiB"):
                plan_memory(sizes[name], tokens, budget, storage=storage)
            continue
        plan, est = plan_memory(sizes[name], tokens, budget, storage=storage)
        assert (plan.blocks_to_swap, plan.offload_activations, plan.ffn_chunks) == want, (case, budget)
        assert est.peak_gib <= budget * FIT_FRACTION


def test_the_named_budget_is_enough(sizes):
    with pytest.raises(PlanError) as e:
        plan_memory(sizes["14b"], TOKENS_720P, 16, storage="fp8")
    need = float(str(e.value).split("needs a budget of ")[1].split(" GiB")[0])
    plan, _ = plan_memory(sizes["14b"], TOKENS_720P, need, storage="fp8")
    assert plan == MemoryPlan(40, True, 4)
    assert "\n" not in str(e.value) and "tokens a step" in str(e.value)


def test_set_params_are_kept_and_auto_fills_the_rest(sizes):
    plan, _ = plan_memory(sizes["14b"], TOKENS_480P, 24, storage="fp8", wanted=Wanted(blocks_to_swap=30))
    assert plan == MemoryPlan(30, True, 1)
    # offload off at 32 GiB (streaming: transient x 0.83 = 10.9403): 0.43347 + (40 - N + 2) x 0.32738 + 2.28516
    # + 12.4968 + 10.9403 <= 29.44 -> (42 - N) x 0.32738 <= 3.2843 -> N = 32 (chunks would cost 0.72 s)
    plan, _ = plan_memory(sizes["14b"], TOKENS_480P, 32, storage="fp8", wanted=Wanted(offload_activations=False))
    assert plan == MemoryPlan(32, False, 1)
    with pytest.raises(PlanError, match="needs a budget"):
        plan_memory(sizes["14b"], TOKENS_480P, 24, storage="fp8", wanted=Wanted(offload_activations=False, ffn_chunks=1))
    # no budget (a CPU run): auto is everything resident; a fully set plan over budget is a warning, not a refusal
    assert choose_plan(sizes["14b"], TOKENS_480P, None, storage="fp8")[0] == MemoryPlan()
    plan, _ = choose_plan(sizes["14b"], TOKENS_480P, 16, Wanted(0, False, 1), storage="fp8")
    assert plan == MemoryPlan()


def test_without_checkpointing_nothing_streams(sizes):
    plan, _ = plan_memory(sizes["5b"], TOKENS_5B_480P, 80, storage="bf16", checkpointing=False)
    assert not plan.streams
    with pytest.raises(ValueError, match="gradient checkpointing"):
        estimate_step(sizes["5b"], TOKENS_5B_480P, checkpointing=False, plan=MemoryPlan(2, False, 1))


def test_cards_by_name():
    assert gpu_spec("NVIDIA GeForce RTX 4090").memory_gib == 24 and gpu_spec("rtx 5090").memory_gib == 32
    assert gpu_spec("NVIDIA A100-SXM4-40GB").memory_gib == 40 and gpu_spec("NVIDIA A100 80GB PCIe").memory_gib == 80
    assert gpu_spec("NVIDIA H200").link_gbs > gpu_spec("RTX 3090").link_gbs
    assert gpu_spec("Some Card").memory_gib is None
