"""One training step of flow matching on cached tensors: the loss, a micro step (forward and backward
of one batch), the optimizer step, and the fixed-noise evaluation loss."""

from __future__ import annotations

import hashlib
import math

import torch

from pipeline.train.conditioning import T2V, Conditioning, TrainInputs
from pipeline.train.data import (
    CachedBatches,
)

STORAGE_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp32": torch.float32}


def seed_of(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def flow_matching_loss(model, inputs: TrainInputs, t: torch.Tensor, noise: torch.Tensor, compute_dtype: torch.dtype,
                       conditioning: Conditioning = T2V, clean_first: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the model's velocity and noise - x0 at x_t = (1 - t) x0 + t noise, the model
    conditioned as the family's pipeline conditions it (TI2V videos given a clean first frame: that
    frame left out). ``clean_first``: TI2V ``mixed``'s per-sample coins."""
    x0 = inputs.latents
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - tt) * x0 + tt * noise
    target = noise - x0
    kwargs, skip_first = conditioning.model_inputs(inputs, x_t, t, tuple(model.config.patch_size), clean_first)
    kwargs = {k: (v if k == "timestep" else v.to(compute_dtype)) for k, v in kwargs.items()}
    autocast = compute_dtype != torch.float32
    with torch.autocast(x0.device.type, dtype=compute_dtype, enabled=autocast):
        pred = model(**kwargs, encoder_hidden_states=inputs.text.to(compute_dtype), return_dict=False)[0]
    if isinstance(skip_first, torch.Tensor):  # per sample: the mean over the frames each sample is trained on
        err = (pred.float() - target.float()) ** 2
        weight = torch.ones(err.shape[0], 1, err.shape[2], 1, 1, device=err.device)
        weight[:, :, 0] = (~skip_first).float().view(-1, 1, 1, 1)
        return (err * weight).sum() / weight.expand_as(err).sum()
    if skip_first:
        pred, target = pred[:, :, 1:], target[:, :, 1:]
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def micro_step(model, inputs: TrainInputs, sampler, generator: torch.Generator, compute: torch.dtype,
               grad_accum: int = 1, conditioning: Conditioning = T2V) -> float:
    """Forward and backward of one batch (noise and timesteps from ``generator``); returns the loss."""
    latents = inputs.latents
    t = sampler.sample(latents.shape[0], generator, latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    clean_first = conditioning.draw_clean_first(latents.shape[0], generator, latents.device)
    loss = flow_matching_loss(model, inputs, t, noise, compute, conditioning, clean_first)
    (loss / grad_accum).backward()
    return loss.item()


def optimizer_step(params: list[torch.nn.Parameter], optimizer, scheduler, max_grad_norm: float) -> None:
    if max_grad_norm and max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def skip_update(optimizer, scheduler) -> None:
    """A step that must not change the LoRA (its loss is not finite, or every batch was skipped): the
    gradients are dropped, the optimizer does not step; the LR schedule moves on with the step count."""
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


@torch.no_grad()
def evaluate(model, loader: CachedBatches, rows: list[int], sample_ids: list[str], timesteps: list[float],
             seed: int, device: torch.device, compute_dtype: torch.dtype, conditioning: Conditioning = T2V,
             t_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Mean loss over ``rows`` at fixed timesteps with fixed noise per sample (comparable across steps and runs).
    ``t_range``: an expert's range; the timesteps are mapped into it (t -> lo + (hi - lo) t)."""
    if not rows:
        return math.nan
    was_training = model.training
    model.eval()
    lo, hi = t_range
    total = 0.0
    for r in rows:
        inputs = loader.load([r]).to(device)
        g = torch.Generator(device).manual_seed(seed_of("eval", seed, sample_ids[r]))
        noise = torch.randn(inputs.latents.shape, generator=g, device=device)
        clean_first = conditioning.draw_clean_first(1, g, device)  # TI2V mixed: one fixed coin per sample
        for t in timesteps:
            tt = torch.full((1,), lo + (hi - lo) * float(t), device=device)
            total += flow_matching_loss(model, inputs, tt, noise, compute_dtype, conditioning, clean_first).item()
    model.train(was_training)
    return total / (len(rows) * len(timesteps))
