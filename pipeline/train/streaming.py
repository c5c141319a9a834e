"""Gradient checkpointing that streams: block weights (``block_swap``) and each block's saved
input (activation offload) move between host and device around the block's forward, recompute
and backward, overlapped with compute.

``StreamedCheckpoint`` replaces diffusers' gradient-checkpointing function of the transformer
(``enable_gradient_checkpointing(gradient_checkpointing_func=...)``). For block ``i`` it runs an
autograd function that

- forward: runs the block without keeping its internals (no grad), and keeps its input either on
  the device or, with activation offload, in host memory (copied on the download stream);
- backward: brings the input back (prefetched while block ``i + 1`` ran its backward), holds
  the block's weights resident (prefetching block ``i - 1``'s), re-runs the block with grad
  under the autocast and RNG state of the forward, back-propagates through it (the LoRA
  gradients accumulate in their ``.grad``), and returns the input's gradient.

This is the "reentrant" checkpoint of ``torch.utils.checkpoint``, written out because the
moments of the recompute and of the backward are where the copies must go. The result is
bitwise the same as diffusers' default checkpointing: the same kernels on the same values.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from pipeline.train.block_swap import BlockSwap
from pipeline.train.movers import Mover, typed_view


class ActivationOffload:
    """Block inputs kept in host memory between the forward and the backward pass."""

    def __init__(self, mover: Mover):
        self.mover = mover
        self.host: dict[int, torch.Tensor] = {}  # one buffer per block, grown to the largest input seen
        self.saved: dict[int, tuple[torch.Tensor, object]] = {}  # block -> (host view, download event)
        self.fetched: dict[int, tuple[torch.Tensor, object]] = {}  # block -> (device tensor, upload event)
        self.reusable: dict[int, object] = {}  # block -> event after which its host buffer may be overwritten
        self.bytes_down = self.bytes_up = 0
        self.max_on_device = 0

    def save(self, i: int, x: torch.Tensor) -> None:
        nbytes = x.numel() * x.element_size()
        buf = self.host.get(i)
        if buf is None or buf.numel() < nbytes:
            buf = self.host[i] = self.mover.host_buffer(nbytes)
        view = typed_view(buf, 0, x)
        self.saved[i] = (view, self.mover.download(view, x.detach(), after=self.reusable.pop(i, None)))
        self.bytes_down += nbytes

    def prefetch(self, i: int) -> None:
        if i in self.saved and i not in self.fetched:
            view, event = self.saved[i]
            tensor, up = self.mover.upload_new(view, after=event)
            self.fetched[i] = (tensor, up)
            self.reusable[i] = up
            self.bytes_up += view.numel() * view.element_size()
            self.max_on_device = max(self.max_on_device, len(self.fetched))

    def load(self, i: int) -> torch.Tensor:
        self.prefetch(i)
        tensor, event = self.fetched.pop(i)
        del self.saved[i]
        self.mover.wait(event, tensor)
        return tensor

    def host_bytes(self) -> int:
        return sum(b.numel() for b in self.host.values())


def _autocast_state(device_type: str) -> dict:
    return {"device_type": device_type, "enabled": torch.is_autocast_enabled(device_type),
            "dtype": torch.get_autocast_dtype(device_type), "cache_enabled": torch.is_autocast_cache_enabled()}


class _Checkpoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, runner: StreamedCheckpoint, i: int, anchor: torch.Tensor, hidden: torch.Tensor, *args):
        ctx.runner, ctx.i = runner, i
        ctx.autocast = _autocast_state(hidden.device.type)
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device) if hidden.device.type == "cuda" else None
        ctx.template = [None if isinstance(a, torch.Tensor) else a for a in args]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        with torch.no_grad():
            out = runner.blocks[i](hidden, *args)
        if runner.activations is not None:
            runner.activations.save(i, hidden)
            ctx.save_for_backward(*tensors)
        else:
            ctx.save_for_backward(hidden, *tensors)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        runner, i = ctx.runner, ctx.i
        saved = list(ctx.saved_tensors)
        if runner.activations is not None:
            hidden = runner.activations.load(i)
            runner.activations.prefetch(runner.previous(i))
        else:
            hidden = saved.pop(0)
        it = iter(saved)
        args = [next(it) if a is None else a for a in ctx.template]
        hidden = hidden.detach().requires_grad_(ctx.needs_input_grad[3])
        device = hidden.device
        with runner.swap.hold(i) if runner.swap is not None else nullcontext():
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
                torch.set_rng_state(ctx.cpu_rng)
                if ctx.cuda_rng is not None:
                    torch.cuda.set_rng_state(ctx.cuda_rng, device)
                with torch.enable_grad(), torch.autocast(**ctx.autocast):
                    out = runner.blocks[i](hidden, *args)
            if out.requires_grad:
                torch.autograd.backward(out, grad_out)
        grad_in = hidden.grad if ctx.needs_input_grad[3] else None
        return (None, None, None, grad_in, *([None] * len(ctx.template)))


class StreamedCheckpoint:
    """The transformer's gradient-checkpointing function, with optional block swap and activation offload."""

    def __init__(self, blocks, swap: BlockSwap | None = None, activations: ActivationOffload | None = None):
        self.blocks = list(blocks)
        self.index = {id(b): i for i, b in enumerate(self.blocks)}
        self.swap = swap
        self.activations = activations
        # an input that requires grad, so the output of a block whose input does not (block 0)
        # still has a backward: the LoRA inside it needs its gradients
        self.anchor = torch.empty(0, requires_grad=True)

    def previous(self, i: int) -> int:
        return i - 1

    def __call__(self, block: torch.nn.Module, hidden: torch.Tensor, *args):
        return _Checkpoint.apply(self, self.index[id(block)], self.anchor, hidden, *args)
