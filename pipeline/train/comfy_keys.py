"""The original Wan / ComfyUI key layout of a LoRA, from diffusers module names.

ComfyUI (and the original Wan code) names the transformer's modules as Wan's own checkpoint
does: ``diffusion_model.blocks.N.self_attn.q``, ``cross_attn.o``, ``ffn.0``, ... A LoRA file in
that layout holds per module ``<name>.lora_A.weight`` (down, [r, in]), ``<name>.lora_B.weight``
(up, [out, r]) and a scalar ``<name>.alpha``; ComfyUI scales the update by alpha / r.

This is the inverse of diffusers' ``_convert_non_diffusers_wan_lora_to_diffusers`` (which
reads such files and scales alpha / r into the weights).
"""

from __future__ import annotations

import re

import torch

PREFIX = "diffusion_model."

# diffusers module name inside a block -> Wan / ComfyUI name
BLOCK_MODULES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img",  # image-to-video models
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}

# modules outside the blocks
TOP_MODULES = {
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "proj_out": "head.head",
}

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_KEY = re.compile(r"^(?:transformer\.)?(.+)\.(lora_A|lora_B)\.weight$")



def comfy_module_name(module: str) -> str:
    """``blocks.3.attn1.to_q`` -> ``blocks.3.self_attn.q``; an unmapped module is an error."""
    m = _BLOCK.match(module)
    if m and m.group(2) in BLOCK_MODULES:
        return f"blocks.{m.group(1)}.{BLOCK_MODULES[m.group(2)]}"
    if module in TOP_MODULES:
        return TOP_MODULES[module]
    raise ValueError(f"LoRA module '{module}' has no ComfyUI / original Wan name")


def to_comfy(state_dict: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A diffusers/peft LoRA state dict (``[transformer.]<module>.lora_A.weight`` ...) in the ComfyUI
    layout, with one ``.alpha`` scalar per module."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _KEY.match(key)
        if not m:
            raise ValueError(f"LoRA key '{key}' is not a lora_A/lora_B weight")
        name = PREFIX + comfy_module_name(m.group(1))
        out[f"{name}.{m.group(2)}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out
