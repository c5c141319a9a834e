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

A memory plan (``MemoryPlan``: blocks swapped to host memory, block inputs offloaded, the FFN
computed over token chunks) changes the terms: only ``num_layers - blocks_to_swap`` blocks plus
``SWAP_SLOTS`` slots of block weights are on the device; offloaded inputs leave
``OFFLOAD_IN_FLIGHT`` block inputs on the device instead of one per block; ``ffn_chunks``
divides the FFN part of the transient, down to a floor (``K_FLOOR``: the attention's own peak),
and costs one more FFN forward per block (each chunk is checkpointed). These terms are fitted on
fake-tensor traces of the stage's own step at real sizes (``bench/memory_trace.py``).
Copies overlap compute: a swapped block's weights are uploaded while the
previous block computes (forward) or back-propagates (backward: three forward-equivalents);
only the part of a copy longer than that compute adds time (at the card's host link speed).
The planner (``planner``) searches these plans.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30

# Fitted on bench/baseline-h200.jsonl (see the module docstring).
K_DIM = 54.3  # bytes per token per unit of model width, one block's recomputed internals
K_FFN = 11.14  # bytes per token per unit of FFN width
FP8_TRANSIENT = 0.778  # the transient term with fp8 weight storage, relative to bf16
# Fitted on fake-tensor traces of the stage's own step (bench/memory_trace.py; 1.3B and 14B at
# 480x832x81), shifted by the traces' offset on the all-resident step, rounded up:
K_FLOOR = 68.0  # bytes per token per unit of width: one block's peak however many FFN chunks (attention)
FP8_STREAM_TRANSIENT = 0.83  # the fp8 transient factor when blocks swap or inputs are offloaded
SECONDS_PER_FLOP_H200 = 1.945e-15  # ~514 TFLOP/s effective
SECONDS_PER_LAYER_H200 = 0.0247  # per-layer overhead (norms, modulation, launches) at 32,760 tokens
FP8_TIME = 0.945  # 13.25 / 14.02


@dataclass(frozen=True)
class ModelSize:
    num_layers: int
    dim: int
    ffn_dim: int
    base_params: int  # every non-LoRA parameter
    block_linear_params: int  # of those, the Linear weights inside the blocks (what fp8 storage shrinks)
    lora_params: int
    block_params: int | None = None  # the non-LoRA parameters of one block (None: the block's Linear weights)

    @classmethod
    def of(cls, transformer) -> ModelSize:
        """Counts from a built ``WanTransformer3DModel`` (with or without the LoRA adapter; any device, meta too)."""
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
        block = sum(p.numel() for n, p in transformer.blocks[0].named_parameters() if "lora_" not in n)
        return cls(cfg.num_layers, cfg.num_attention_heads * cfg.attention_head_dim, cfg.ffn_dim, base, block_linear,
                   lora, block)

    def block_bytes(self, storage: str) -> float:
        """Bytes of one block's frozen weights as stored (fp8: the Linear weights at 1 byte)."""
        per_block = self.block_params if self.block_params is not None else self.block_linear_params / self.num_layers
        out = per_block * BYTES[storage]
        if storage == "fp8":
            out -= self.block_linear_params / self.num_layers
        return out

    def nonblock_bytes(self, storage: str) -> float:
        """Bytes of everything outside the blocks (embeddings, time projection, head): never swapped."""
        return self.base_params * BYTES[storage] - (self.block_linear_params if storage == "fp8" else 0) \
            - self.num_layers * self.block_bytes(storage)


BYTES = {"bf16": 2, "fp8": 2, "fp32": 4}  # per base parameter (fp8: see ModelSize.block_bytes)
SWAP_SLOTS = 2  # device slots the swapped blocks take turns in (one computing, one loading)
OFFLOAD_IN_FLIGHT = 3  # offloaded block inputs on the device at once (in use, prefetched, the one being copied out)
COPY_OVERHEAD_S = 0.0003  # per copy: event waits and Python hooks


@dataclass(frozen=True)
class MemoryPlan:
    """How the train stage fits the model: blocks whose weights stream from host memory, block
    inputs kept in host memory, the FFN over token chunks."""

    blocks_to_swap: int = 0
    offload_activations: bool = False
    ffn_chunks: int = 1

    @property
    def streams(self) -> bool:
        """Whether anything moves between host and device during a step."""
        return self.blocks_to_swap > 0 or self.offload_activations

    def describe(self, num_layers: int | None = None) -> str:
        parts = []
        if self.blocks_to_swap:
            of = f" of {num_layers}" if num_layers else ""
            parts.append(f"{self.blocks_to_swap}{of} blocks swapped")
        if self.offload_activations:
            parts.append("activations offloaded")
        if self.ffn_chunks > 1:
            parts.append(f"FFN in {self.ffn_chunks} chunks")
        return ", ".join(parts) or "everything resident"


NO_PLAN = MemoryPlan()


@dataclass(frozen=True)
class Estimate:
    peak_gib: float
    step_s: float
    weights_gib: float
    lora_gib: float
    activations_gib: float
    tokens: int
    gpu: str
    plan: MemoryPlan = NO_PLAN
    transfer_s: float = 0.0  # of step_s: copies not hidden behind compute
    host_gib: float = 0.0  # host memory the plan holds (swapped weights, offloaded inputs)

    def describe(self) -> str:
        text = (f"estimated peak {self.peak_gib:.1f} GiB (weights {self.weights_gib:.1f}, LoRA + optimizer "
                f"{self.lora_gib:.2f}, activations {self.activations_gib:.1f}) and {self.step_s:.2f} s/step "
                f"on {self.gpu} for {self.tokens:,} tokens a step")
        if self.plan.streams or self.plan.ffn_chunks > 1:
            text += f"; {self.plan.describe()}, {self.host_gib:.1f} GiB of host memory"
        return text


@dataclass(frozen=True)
class GpuSpec:
    name: str
    tflops: float  # dense bf16
    memory_gib: float | None  # None: not known from the name
    link_gbs: float  # host <-> device copies, GB/s (pinned memory)


# Dense bf16 peak TFLOP/s, memory (GiB) and host link (GB/s) of common cards. Order matters: the
# first key found in a device name wins ("4090 D" before "4090", "A100 80" before "A100").
PCIE4, PCIE5 = 25.0, 50.0
GPUS: dict[str, tuple[float, float | None, float]] = {
    "H200": (989.0, 141.0, PCIE5), "GH200": (989.0, 96.0, 400.0), "H100": (989.0, 80.0, PCIE5),
    "H800": (989.0, 80.0, PCIE5), "B200": (2250.0, 180.0, PCIE5), "A100-SXM4-40GB": (312.0, 40.0, PCIE4),
    "A100 40": (312.0, 40.0, PCIE4), "A100": (312.0, 80.0, PCIE4), "A800": (312.0, 80.0, PCIE4),
    "L40S": (362.0, 48.0, PCIE4), "L40": (181.0, 48.0, PCIE4), "L4": (121.0, 24.0, PCIE4),
    "A6000": (155.0, 48.0, PCIE4), "A10": (125.0, 24.0, PCIE4), "5090": (210.0, 32.0, PCIE5),
    "5080": (113.0, 16.0, PCIE5), "5070 Ti": (88.0, 16.0, PCIE5), "4090": (165.0, 24.0, PCIE4),
    "4080": (97.0, 16.0, PCIE4), "4070 Ti SUPER": (88.0, 16.0, PCIE4), "4070": (58.0, 12.0, PCIE4),
    "4060 Ti": (44.0, 16.0, PCIE4), "3090": (71.0, 24.0, PCIE4), "3080": (59.0, 10.0, PCIE4),
    "3060": (25.0, 12.0, PCIE4), "V100": (125.0, 32.0, 12.0), "T4": (65.0, 16.0, 12.0),
}
H200_BF16_TFLOPS = 989.0


def gpu_spec(name: str | None) -> GpuSpec:
    """What is known of a card from its name (case-insensitive, e.g. 'RTX 4090' or torch's device name).
    None or an unknown card: an H200's compute over a PCIe 4.0 link, memory unknown."""
    if name:
        for key, (tflops, mem, link) in GPUS.items():
            if key.lower() in name.lower():
                return GpuSpec(name, tflops, mem, link)
        return GpuSpec(f"{name} (scaled as an H200)", H200_BF16_TFLOPS, None, PCIE4)
    return GpuSpec("an H200", H200_BF16_TFLOPS, None, PCIE4)


def gpu_scale(name: str | None) -> tuple[str, float]:
    """(label, time factor vs the H200) for a CUDA device name; unknown cards are treated as an H200."""
    spec = gpu_spec(name)
    return spec.name, H200_BF16_TFLOPS / spec.tflops


def video_tokens(latent_shape: list[int] | tuple[int, ...], patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    """Transformer tokens of one latent [C, F, H, W]."""
    _, f, h, w = latent_shape
    return (f // patch[0]) * (h // patch[1]) * (w // patch[2])


def estimate_step(size: ModelSize, tokens: int, text_tokens: int = 512, batch_size: int = 1,
                  storage: str = "bf16", checkpointing: bool = True, optimizer_8bit: bool = False,
                  gpu: str | None = None, plan: MemoryPlan = NO_PLAN) -> Estimate:
    """Peak memory and step time of one optimizer step over ``batch_size`` samples of ``tokens`` tokens."""
    if storage not in BYTES:
        raise ValueError(f"storage must be bf16, fp8 or fp32, got '{storage}'")
    L, d, f = size.num_layers, size.dim, size.ffn_dim
    if not 0 <= plan.blocks_to_swap <= L:
        raise ValueError(f"blocks_to_swap {plan.blocks_to_swap} is not between 0 and the model's {L} blocks")
    if plan.streams and not checkpointing:
        raise ValueError("block swap and activation offload need gradient checkpointing")
    swapped = plan.blocks_to_swap
    block = size.block_bytes(storage)
    weights = size.nonblock_bytes(storage) + (L - swapped + min(swapped, SWAP_SLOTS)) * block
    lora = size.lora_params * (4 + 4 + (2 if optimizer_8bit else 8))
    act_bytes = 2 if storage != "fp32" else 4
    n = tokens * batch_size
    block_input = n * d * act_bytes
    saved_inputs = block_input * (min(L, OFFLOAD_IN_FLIGHT) if plan.offload_activations else L)
    transient = n * max(K_DIM * d + K_FFN * f / plan.ffn_chunks, K_FLOOR * d) * act_bytes / 2
    if storage == "fp8":
        transient *= FP8_STREAM_TRANSIENT if plan.streams else FP8_TRANSIENT
    activations = saved_inputs + transient if checkpointing else transient * L
    peak = weights + lora + activations

    linear = 2 * n * (6 * d * d + 2 * d * f) + 2 * batch_size * text_tokens * 2 * d * d
    attention = 4 * batch_size * tokens * tokens * d + 4 * n * text_tokens * d
    passes = 4 if checkpointing else 3
    spec = gpu_spec(gpu)
    scale = H200_BF16_TFLOPS / spec.tflops
    step = (passes * L * (linear + attention) * SECONDS_PER_FLOP_H200 + L * SECONDS_PER_LAYER_H200 * n / 32760) * scale
    if storage == "fp8":
        step *= FP8_TIME
    layer_s = step / (passes * L)  # one block's forward: what a copy can hide behind
    if plan.ffn_chunks > 1:  # each chunk is recomputed once more in the backward
        step += L * 2 * n * 2 * d * f * SECONDS_PER_FLOP_H200 * scale
    transfer = _transfer_seconds(L, swapped, plan.offload_activations, block, block_input, layer_s, spec.link_gbs)
    host = swapped * block + (L * block_input if plan.offload_activations else 0)
    return Estimate(peak / GIB, step + transfer, weights / GIB, lora / GIB, activations / GIB, n, spec.name, plan,
                    transfer, host / GIB)


def _transfer_seconds(layers: int, swapped: int, offload: bool, block_bytes: float, input_bytes: float,
                      layer_s: float, link_gbs: float) -> float:
    """Copy time not hidden behind compute, over one step. Forward: block i's weights upload while
    block i-1 computes (one forward-equivalent) and block i's input downloads alongside (the other
    direction of the link). Backward: block i-1's weights and input upload while block i
    recomputes and back-propagates (three forward-equivalents)."""
    if not swapped and not offload:
        return 0.0
    rate = link_gbs * 1e9
    total = 0.0
    for i in range(layers):
        up = block_bytes / rate if i >= layers - swapped else 0.0
        down = input_bytes / rate if offload else 0.0
        copies = (up > 0) + (down > 0)
        total += max(0.0, max(up, down) - layer_s) + max(0.0, up + down - 3 * layer_s)
        total += 2 * copies * COPY_OVERHEAD_S
    return total
