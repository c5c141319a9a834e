"""The other expert of Wan 2.2 A14B, for sample videos.

A run trains one expert at a time (``experts``), but a sample denoises with both, as
``WanPipeline`` / ``WanImageToVideoPipeline`` do at inference: ``transformer`` above the boundary,
``transformer_2`` below. The expert not being trained is loaded for sampling only, frozen:

- its base weights, plus its LoRA when this run trained it already (``train.expert: both`` trains
  high first, so the low-noise expert's samples use the high-noise LoRA just written; the high-noise
  expert's samples use the base low-noise expert: its LoRA does not exist yet);
- in host memory, in the run's storage dtype (fp8 stays fp8), and on a GPU with every block swapped
  (``block_swap``): two blocks' weights on the device while it denoises, whatever the budget. Its
  host memory (the expert's size: ~14 GB in fp8, ~28 GB in bf16 for A14B) is held from the first
  sample to the end of the expert's training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.models.profiles import Profile
from pipeline.models.transformer import load_transformer
from pipeline.train.config import TrainConfig
from pipeline.train.estimate import NO_PLAN, MemoryPlan
from pipeline.train.experts import Expert
from pipeline.train.lora import load_lora_file
from pipeline.train.memory import apply_memory_plan
from pipeline.train.precision import keep_condition_embedder_out_of_autocast

log = logging.getLogger("train")


def partner_of(profile: Profile, expert: Expert) -> str | None:
    """The diffusers subfolder of the expert a sample also needs (None for a single-expert family)."""
    if len(profile.experts) < 2:
        return None
    return next(e for e in profile.experts if e != expert.model)


def load_partner(profile: Profile, cfg: TrainConfig, expert: Expert, device: torch.device, storage: str,
                 compute: torch.dtype, lora_file: Path | None = None) -> torch.nn.Module:
    """The other expert, frozen and ready for inference (see the module docstring)."""
    from pipeline.train.setup import FP8_SKIP

    name = partner_of(profile, expert)
    if name is None:
        raise ValueError(f"{profile.name} has one expert")
    model = load_transformer(profile, dtype=compute, device="cpu", expert=name)
    if lora_file is not None:
        load_lora_file(model, lora_file, cfg.rank, cfg.alpha, cfg.targets)
    if storage == "fp8":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute,
                                       skip_modules_pattern=FP8_SKIP)
    keep_condition_embedder_out_of_autocast(model)
    plan = MemoryPlan(blocks_to_swap=len(model.blocks)) if device.type == "cuda" else NO_PLAN
    apply_memory_plan(model, plan, device, gradient_checkpointing=True)
    model.eval()
    log.info("sample videos: %s loaded for sampling (%s%s)", name, f"LoRA {lora_file.name}" if lora_file else "base weights",
             ", every block swapped" if plan.blocks_to_swap else "")
    return model
