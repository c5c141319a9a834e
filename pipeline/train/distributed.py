"""Data-parallel training on several GPUs (or CPU processes), launched by ``torchrun`` (or
``accelerate launch``, which sets the same variables): ``WORLD_SIZE`` processes, each with its
``RANK`` and ``LOCAL_RANK`` (its GPU).

A step is ``train.grad_accum`` batches of ``train.batch_size`` (the global batch), the same
batches in the same order whatever the number of processes: batch ``i`` of the plan goes to rank
``i % WORLD_SIZE``, so each rank reads its share of every step's batches from the cache, each
batch with its own seeded noise and timesteps as in a single process. The LoRA gradients
(small: the base weights are frozen) are summed over the ranks with one ``all_reduce`` before
the optimizer step, so every rank takes the same step and holds the same LoRA. Rank 0 alone
evaluates, writes checkpoints, LoRA files, the manifest, metrics and sample videos; a checkpoint
holds no rank state, so a run resumes on another number of processes with the same global batch.

The gradient sum differs from a single process's only in the order of float additions. The
memory plan (block swap, activation offload) applies on each rank to its own GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("train")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """The launcher's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (one process when unset)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL on GPUs, gloo on CPUs) and return this rank's device."""
        if not self.active:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if self.main:
            log.info("data-parallel training on %d processes (%s)", self.world, dist.get_backend())
        return device

    def share(self, grad_accum: int) -> int:
        """How many of a step's ``grad_accum`` batches this rank trains."""
        if grad_accum % self.world:
            raise ValueError(f"train.grad_accum ({grad_accum}) must be a multiple of the number of processes "
                             f"({self.world}): a step's batches are shared out evenly (global batch = batch_size x "
                             "grad_accum)")
        return grad_accum // self.world

    def mine(self, batch_index: int) -> bool:
        return batch_index % self.world == self.rank

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over the ranks."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        return self.sum([float(flag)], device)[0] > 0

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the LoRA gradients over the ranks (one flat ``all_reduce``); a rank with no gradient
        for a parameter (every batch of its share skipped) adds zeros."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).clone()
            offset += n

    def barrier(self) -> None:
        if self.active:
            dist.barrier()
