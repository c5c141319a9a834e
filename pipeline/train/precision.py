"""Numerics that must match inference: the condition embedder runs outside autocast.

Training runs the transformer under bf16 autocast (the LoRA weights are float32). Autocast
would also run the time embedding in bf16, although diffusers keeps ``time_embedder`` in
float32 (``_keep_in_fp32_modules``) and the original Wan code computes the time embedding and
the modulation in float32. At inference diffusers runs no autocast: the time embedder in
float32, the time projection and the text embedder in the weights' dtype. Running the
condition embedder with autocast off gives training exactly that; the blocks' modulation
(``scale_shift_table + temb.float()``) and the norms are float32 in diffusers' code already.
"""

from __future__ import annotations

import torch


def keep_condition_embedder_out_of_autocast(model) -> None:
    """Run ``model.condition_embedder`` with autocast disabled (idempotent)."""
    embedder = model.condition_embedder
    if getattr(embedder, "_vlp_no_autocast", False):
        return
    original = embedder.forward

    def forward(timestep: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=timestep.device.type, enabled=False):
            return original(timestep, *args, **kwargs)

    embedder.forward = forward
    embedder._vlp_no_autocast = True
