"""Putting a memory plan into effect on a transformer that is set up for LoRA training.

``apply_memory_plan`` takes the model with its LoRA adapter (and fp8 casting) still in host
memory, parks the frozen weights of the last ``blocks_to_swap`` blocks in (pinned) host buffers,
moves everything else to the device, and installs the checkpointing that streams them (with
activation offload if planned) and the FFN chunking. Without a swap or an offload it keeps
diffusers' own gradient checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.train.block_swap import BlockSwap
from pipeline.train.estimate import SWAP_SLOTS, MemoryPlan
from pipeline.train.ffn_chunks import chunk_feed_forward
from pipeline.train.movers import Mover, mover_for
from pipeline.train.streaming import ActivationOffload, StreamedCheckpoint


@dataclass
class MemoryRuntime:
    plan: MemoryPlan
    num_layers: int
    swap: BlockSwap | None = None
    activations: ActivationOffload | None = None

    def stats(self) -> dict:
        """Host memory held and bytes moved so far (for metrics.json)."""
        out: dict = {"host_memory_gib": round(self.host_bytes() / 2**30, 6)}
        if self.swap is not None:
            s = self.swap.stats
            out.update(swap_uploads=s.uploads, swap_gib_uploaded=round(s.bytes_uploaded / 2**30, 6),
                       swap_max_resident=s.max_resident)
        if self.activations is not None:
            a = self.activations
            out.update(offload_gib_down=round(a.bytes_down / 2**30, 6), offload_gib_up=round(a.bytes_up / 2**30, 6))
        return out

    def host_bytes(self) -> int:
        return (self.swap.host_bytes() if self.swap else 0) + (self.activations.host_bytes() if self.activations else 0)


def swapped_blocks(num_layers: int, n: int) -> list[int]:
    """The blocks whose weights stream: the last ``n`` (the first ones the backward needs are then
    still in their slots when the forward ends)."""
    return list(range(num_layers - n, num_layers))


def _move_rest(model: torch.nn.Module, device: torch.device, parked: set[int]) -> None:
    """Move every parameter and buffer to ``device`` except the parked ones."""
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in parked and p.device != device:
                p.data = p.data.to(device)
        for module in model.modules():
            for name, buf in module._buffers.items():
                if buf is not None and buf.device != device:
                    module._buffers[name] = buf.to(device)


def apply_memory_plan(model, plan: MemoryPlan, device: torch.device, gradient_checkpointing: bool = True,
                      mover: Mover | None = None) -> MemoryRuntime:
    """Put ``plan`` into effect on ``model`` (a ``WanTransformer3DModel`` with its LoRA adapter);
    the model ends on ``device`` but for the swapped blocks' frozen weights."""
    n_blocks = len(model.blocks)
    if not 0 <= plan.blocks_to_swap <= n_blocks:
        raise ValueError(f"train.blocks_to_swap: {plan.blocks_to_swap} is not between 0 and the model's {n_blocks} blocks")
    if plan.streams and not gradient_checkpointing:
        raise ValueError("train.blocks_to_swap / train.offload_activations need train.gradient_checkpointing: true")
    runtime = MemoryRuntime(plan, n_blocks)
    mover = mover or mover_for(device)
    if plan.blocks_to_swap:
        runtime.swap = BlockSwap(model.blocks, swapped_blocks(n_blocks, plan.blocks_to_swap), mover, SWAP_SLOTS)
    parked = {id(p) for b in (runtime.swap.info.values() if runtime.swap else ()) for p in b.params}
    _move_rest(model, device, parked)
    if plan.offload_activations:
        runtime.activations = ActivationOffload(mover)
    if plan.streams:
        model.enable_gradient_checkpointing(StreamedCheckpoint(model.blocks, runtime.swap, runtime.activations))
    elif gradient_checkpointing:
        model.enable_gradient_checkpointing()
    for block in model.blocks:
        chunk_feed_forward(block.ffn, plan.ffn_chunks)
    return runtime
