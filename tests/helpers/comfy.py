"""What a ComfyUI key of a transformer block looks like (the original Wan module names)."""

import re

COMFY_BLOCK_KEY = re.compile(
    r"^diffusion_model\.blocks\.\d+\.(self_attn\.(q|k|v|o)|cross_attn\.(q|k|v|o|k_img|v_img)|ffn\.(0|2))"
    r"\.(lora_A\.weight|lora_B\.weight|alpha)$"
)
