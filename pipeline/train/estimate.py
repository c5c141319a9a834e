"""Peak GPU memory and time per step of a LoRA training step, estimated before the run.

An analytic model calibrated on measured runs (``bench/baseline-h200.jsonl``: naive diffusers +
peft at 480x832x81 = 32,760 tokens, LoRA r32 on attention + FFN, gradient checkpointing, one
H200): 1.3B 11.72 GiB / 2.94 s, 14B bf16 54.71 GiB / 14.02 s, 14B fp8 storage 38.66 GiB / 13.25 s.

Memory = base weights (2 bytes a parameter in bf16; 1 byte for the block Linears with fp8
storage) + LoRA weights, gradients and AdamW state (4 + 4 + 8 bytes a parameter; 4 + 4 + 2 with
8-bit AdamW) + activations. With checkpointing the activations are each block's input kept for
the backward pass (tokens x dim x 2 bytes x layers) plus one block's recomputed internals
(``K_DIM`` bytes per token per model width and ``K_FFN`` per FFN width; fitted to the 1.3B and
14B figures). Without checkpointing every block keeps its internals. fp8 storage also shrinks
the transient (``FP8_TRANSIENT``, from the 14B fp8 figure).

Time = FLOPs / throughput + a per-layer overhead, both fitted on the H200 figures; a training
step with checkpointing costs four forward passes (forward, recompute, backward = 2x), three
without. Other GPUs scale by their dense bf16 peak relative to the H200's.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30

# Fitted on bench/baseline-h200.jsonl (see the module docstring).
K_DIM = 54.3  # bytes per token per unit of model width, one block's recomputed internals
K_FFN = 11.14  # bytes per token per unit of FFN width
FP8_TRANSIENT = 0.778  # the transient term with fp8 weight storage, relative to bf16
SECONDS_PER_FLOP_H200 = 1.945e-15  # ~514 TFLOP/s effective
SECONDS_PER_LAYER_H200 = 0.0247  # per-layer overhead (norms, modulation, launches) at 32,760 tokens
FP8_TIME = 0.945  # 13.25 / 14.02
H200_BF16_TFLOPS = 989.0
# Dense bf16 peak TFLOP/s of common cards, to scale the H200-calibrated time.
GPU_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0,
    "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A6000": 155.0, "A10": 125.0, "4090": 165.0, "3090": 71.0,
    "5090": 210.0, "4080": 97.0, "V100": 125.0, "T4": 65.0,
}


@dataclass(frozen=True)
class ModelSize:
    num_layers: int
    dim: int
    ffn_dim: int
    base_params: int  # every non-LoRA parameter
    block_linear_params: int  # of those, the Linear weights inside the blocks (what fp8 storage shrinks)
    lora_params: int

    @classmethod
    def of(cls, transformer) -> ModelSize:
        """Counts from a built ``WanTransformer3DModel`` (with or without the LoRA adapter)."""
        cfg = transformer.config
        import torch

        base = lora = block_linear = 0
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("blocks.") and "lora_" not in name:
                block_linear += module.weight.numel()
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                lora += p.numel()
            else:
                base += p.numel()
        return cls(cfg.num_layers, cfg.num_attention_heads * cfg.attention_head_dim, cfg.ffn_dim, base, block_linear, lora)


@dataclass(frozen=True)
class Estimate:
    peak_gib: float
    step_s: float
    weights_gib: float
    lora_gib: float
    activations_gib: float
    tokens: int
    gpu: str

    def describe(self) -> str:
        return (f"estimated peak {self.peak_gib:.1f} GiB (weights {self.weights_gib:.1f}, LoRA + optimizer "
                f"{self.lora_gib:.2f}, activations {self.activations_gib:.1f}) and {self.step_s:.2f} s/step "
                f"on {self.gpu} for {self.tokens:,} tokens a step")


def video_tokens(latent_shape: list[int] | tuple[int, ...], patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    """Transformer tokens of one latent [C, F, H, W]."""
    _, f, h, w = latent_shape
    return (f // patch[0]) * (h // patch[1]) * (w // patch[2])


def gpu_scale(name: str | None) -> tuple[str, float]:
    """(label, time factor vs the H200) for a CUDA device name; unknown cards are treated as an H200."""
    if name:
        for key, tflops in GPU_TFLOPS.items():
            if key in name:
                return name, H200_BF16_TFLOPS / tflops
        return f"{name} (scaled as an H200)", 1.0
    return "an H200", 1.0


def estimate_step(size: ModelSize, tokens: int, text_tokens: int = 512, batch_size: int = 1,
                  storage: str = "bf16", checkpointing: bool = True, optimizer_8bit: bool = False,
                  gpu: str | None = None) -> Estimate:
    """Peak memory and step time of one optimizer step over ``batch_size`` samples of ``tokens`` tokens."""
    if storage not in ("bf16", "fp8", "fp32"):
        raise ValueError(f"storage must be bf16, fp8 or fp32, got '{storage}'")
    bytes_per = {"bf16": 2, "fp8": 2, "fp32": 4}[storage]
    weights = size.base_params * bytes_per
    if storage == "fp8":
        weights -= size.block_linear_params  # 1 byte instead of 2
    lora = size.lora_params * (4 + 4 + (2 if optimizer_8bit else 8))
    act_bytes = 2 if storage != "fp32" else 4
    n = tokens * batch_size
    saved_inputs = n * size.dim * act_bytes * size.num_layers
    transient = n * (K_DIM * size.dim + K_FFN * size.ffn_dim) * act_bytes / 2
    if storage == "fp8":
        transient *= FP8_TRANSIENT
    activations = saved_inputs + transient if checkpointing else transient * size.num_layers
    peak = weights + lora + activations

    d, f, L = size.dim, size.ffn_dim, size.num_layers
    linear = 2 * n * (6 * d * d + 2 * d * f) + 2 * batch_size * text_tokens * 2 * d * d
    attention = 4 * batch_size * tokens * tokens * d + 4 * n * text_tokens * d
    passes = 4 if checkpointing else 3
    flops = passes * L * (linear + attention)
    label, scale = gpu_scale(gpu)
    step = (flops * SECONDS_PER_FLOP_H200 + L * SECONDS_PER_LAYER_H200 * n / 32760) * scale
    if storage == "fp8":
        step *= FP8_TIME
    return Estimate(peak / GIB, step, weights / GIB, lora / GIB, activations / GIB, n, label)
