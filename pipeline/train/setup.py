"""Setting a run up before its first step: the memory plan (before any weights load), the transformer
with its LoRA, fp8 storage and the plan in effect, and the optimizer."""

from __future__ import annotations

import importlib.util
import logging

import torch

from pipeline.models.profiles import Profile
from pipeline.models.transformer import (
    build_on_meta,
    load_transformer,
    profile_transformer_config,
)
from pipeline.train.config import TrainConfig
from pipeline.train.estimate import (
    NO_PLAN,
    Estimate,
    MemoryPlan,
    ModelSize,
)
from pipeline.train.experts import (
    Expert,
)
from pipeline.train.lora import (
    add_lora,
)
from pipeline.train.memory import apply_memory_plan
from pipeline.train.planner import choose_plan
from pipeline.train.precision import keep_condition_embedder_out_of_autocast
from pipeline.train.step import (
    STORAGE_DTYPES,
)

log = logging.getLogger("train")


# Modules kept in their compute dtype under fp8 storage (precision-critical, or the trainable LoRA).
FP8_SKIP = ("lora_", "norm", "patch_embedding", "condition_embedder", "proj_out", "scale_shift_table")


def optimizer_is_8bit(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether ``make_optimizer`` gives bitsandbytes' AdamW8bit: when asked, or on ``auto`` with a
    GPU and bitsandbytes installed."""
    if cfg.optimizer == "adamw8bit":
        return True
    if cfg.optimizer == "auto" and device.type == "cuda":
        return importlib.util.find_spec("bitsandbytes") is not None
    return False


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], device: torch.device) -> tuple[torch.optim.Optimizer, bool]:
    """(optimizer, is 8-bit): bitsandbytes AdamW8bit when asked, or on ``auto`` with a GPU and bitsandbytes."""
    if optimizer_is_8bit(cfg, device):
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay), True
        except ImportError:
            raise RuntimeError("train.optimizer is adamw8bit but bitsandbytes is not installed (pip install bitsandbytes)") from None
    if cfg.optimizer == "auto" and device.type == "cuda":
        log.info("bitsandbytes not installed: using torch AdamW")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay), False


def resolve_storage(base_storage: str, device: torch.device) -> tuple[str, torch.dtype]:
    """(storage actually used, compute dtype): bf16 becomes fp32 on a CPU; fp8 computes in bf16 on a GPU."""
    if device.type != "cuda" and base_storage == "bf16":
        base_storage = "fp32"
    compute = STORAGE_DTYPES[base_storage] if device.type == "cuda" else torch.float32
    return base_storage, compute


def setup_lora_training(model, cfg: TrainConfig, storage: str, compute: torch.dtype):
    """Add the LoRA adapter (float32 weights), fp8 layerwise casting of the base, and keep the
    condition embedder out of autocast (``precision``). Gradient checkpointing and where the
    weights live come with the memory plan (``memory.apply_memory_plan``)."""
    lora_config = add_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, cfg.seed)
    if storage == "fp8":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute,
                                       skip_modules_pattern=FP8_SKIP)
    keep_condition_embedder_out_of_autocast(model)
    model.train()
    return lora_config


def prepare_model(profile: Profile, cfg: TrainConfig, device: torch.device, expert: str = "transformer",
                  plan: MemoryPlan = NO_PLAN):
    """The profile's transformer (``expert``: which of a two-expert family's) set up for LoRA
    training under ``plan``: (model, LoRA config, storage, compute dtype, memory runtime)."""
    storage, compute = resolve_storage(cfg.base_storage, device)
    # fp8 or swapped blocks: load and set up in host memory, so the whole model never has to fit on the GPU
    on_host = storage == "fp8" or plan.blocks_to_swap > 0
    model = load_transformer(profile, dtype=compute, device="cpu" if on_host else device, expert=expert)
    lora_config = setup_lora_training(model, cfg, storage, compute)
    runtime = apply_memory_plan(model, plan, device, cfg.gradient_checkpointing)
    return model, lora_config, storage, compute, runtime


def model_size(profile: Profile, cfg: TrainConfig, expert: str = "transformer") -> ModelSize:
    """Parameter counts of the expert's transformer with this run's LoRA, without loading weights."""
    model = build_on_meta(profile_transformer_config(profile, expert))
    add_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, cfg.seed)
    return ModelSize.of(model)


def budget_gib(cfg: TrainConfig, device: torch.device) -> float | None:
    """The memory to plan for: ``train.vram_budget_gib``, else the GPU's free memory (None on a CPU)."""
    if cfg.vram_budget_gib is not None:
        return float(cfg.vram_budget_gib)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    return None


def plan_run(cfg: TrainConfig, profile: Profile, expert: Expert, tokens: int, device: torch.device, storage: str,
             optimizer_8bit: bool) -> tuple[MemoryPlan, Estimate, float | None]:
    """The memory plan for the largest bucket (``tokens`` a sample), before any weights load."""
    size = model_size(profile, cfg, expert.model)
    wanted = cfg.wanted_memory()
    if wanted.blocks_to_swap is not None and wanted.blocks_to_swap > size.num_layers:
        raise ValueError(f"train.blocks_to_swap: {wanted.blocks_to_swap} is more than the {size.num_layers} blocks "
                         f"of {profile.name}")
    budget = budget_gib(cfg, device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    what = f"{profile.name}" + (f" ({expert.name}-noise expert)" if expert.name else "")
    plan, est = choose_plan(size, tokens, budget, wanted, text_tokens=profile.max_text_tokens,
                            batch_size=cfg.batch_size, storage=storage, checkpointing=cfg.gradient_checkpointing,
                            optimizer_8bit=optimizer_8bit, gpu=gpu, what=what)
    return plan, est, budget


def log_plan(plan: MemoryPlan, est: Estimate, budget: float | None, biggest, device: torch.device) -> None:
    if device.type != "cuda":  # no GPU: no peak, time or card to claim
        where = "no GPU memory to plan for" if budget is None else f"planned for train.vram_budget_gib {budget:.3g}"
        log.info("%s run (float32 compute): %s, %s", device.type.upper(), plan.describe(), where)
        return
    where = f"a budget of {budget:.3g} GiB" if budget is not None else "no budget"
    log.info("memory plan for the largest bucket (latents %s) and %s: %s; %s", biggest, where, plan.describe(),
             est.describe())
