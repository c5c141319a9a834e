"""Block swap: the frozen base weights of some transformer blocks live in host memory and are
copied to the device just before each block runs.

Each swapped block's frozen parameters (the base Linear weights and biases, norms, the
modulation table; in their storage dtype, so fp8-stored weights travel as fp8) are packed into
one host buffer (pinned on a GPU) and the parameters' ``.data`` point into it ("parked").
``slots`` device buffers, each the size of one block, take the blocks in turn: when block ``i``
runs, its weights are copied into a free slot (unless they are already there) and the
parameters point into the slot; meanwhile the next swapped block in the direction of travel is
copied into another slot on the mover's upload stream, so the copy overlaps block ``i``'s
compute. A slot is only overwritten after an event recorded when its last block finished.

LoRA weights (trainable) are never swapped: they and the optimizer state stay on the device.

Who calls what:
- forward (training, evaluation, sampling): a forward pre-hook on every block acquires it
  (and prefetches the next swapped block), a forward hook releases it;
- backward: the checkpoint function (``streaming``) re-runs block ``i`` inside ``hold(i)``, so
  the block stays resident through its recompute *and* its backward, and the prefetch goes
  towards block ``i - 1``.

Swapped weights are frozen, so they are never copied back. The swap requires gradient
checkpointing: without it autograd would keep references into slots that are reused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from pipeline.train.movers import Mover, aligned, typed_view


@dataclass
class SwapStats:
    uploads: int = 0  # block copies host -> device
    bytes_uploaded: int = 0
    hits: int = 0  # acquisitions that found the block already in a slot
    max_resident: int = 0  # most swapped blocks on the device at one time


@dataclass
class _Block:
    params: list[torch.nn.Parameter]
    offsets: list[int]
    nbytes: int
    host: torch.Tensor
    host_views: list[torch.Tensor] = field(default_factory=list)
    index: dict[int, int] = field(default_factory=dict)  # id(param) -> its position in ``params``


class BlockSwap:
    def __init__(self, blocks: Sequence[torch.nn.Module], swapped: Sequence[int], mover: Mover, slots: int = 2):
        if slots < 2:
            raise ValueError("block swap needs at least 2 slots (one computing, one loading)")
        self.blocks = list(blocks)
        self.order = sorted(set(swapped))
        if self.order and not 0 <= self.order[0] <= self.order[-1] < len(self.blocks):
            raise ValueError(f"swapped blocks {self.order} out of range for {len(self.blocks)} blocks")
        self.mover = mover
        self.stats = SwapStats()
        self.info = {i: self._pack(i) for i in self.order}
        n_slots = min(slots, len(self.order))
        slot_bytes = max((b.nbytes for b in self.info.values()), default=0)
        self.slot_buffers = [mover.device_buffer(slot_bytes) for _ in range(n_slots)]
        self.occupant: list[int | None] = [None] * n_slots
        self.ready: list = [None] * n_slots  # event: the slot's copy is done
        self.free_after: list = [None] * n_slots  # event: the slot's last block is done with it
        self.touched = [0] * n_slots
        self.slot_of: dict[int, int] = {}
        self.resident: set[int] = set()
        self.slot_views: dict[int, list[torch.Tensor]] = {}  # resident block -> its parameters' views into its slot
        self.held: set[int] = set()
        self._clock = 0
        self.handles = []
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(lambda m, a, i=i: self.acquire(i)))
            self.handles.append(block.register_forward_hook(lambda m, a, o, i=i: self._after_forward(i)))
        for i in self.order:  # see _repoint
            for module in self.blocks[i].modules():
                if any(not p.requires_grad for p in module.parameters(recurse=False)):
                    self.handles.append(module.register_forward_hook(lambda m, a, o, i=i: self._repoint(i, m)))

    # -- set-up ---------------------------------------------------------------------------------
    def _pack(self, i: int) -> _Block:
        """Copy block ``i``'s frozen parameters into one host buffer and park them there."""
        params = [p for p in self.blocks[i].parameters() if not p.requires_grad]
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += aligned(p.numel() * p.element_size())
        host = self.mover.host_buffer(total)
        block = _Block(params, offsets, total, host, index={id(p): j for j, p in enumerate(params)})
        with torch.no_grad():
            for p, off in zip(params, offsets):
                view = typed_view(host, off, p.data)
                view.copy_(p.data)
                block.host_views.append(view)
                p.data = self.mover.park(view)
        return block

    def host_bytes(self) -> int:
        return sum(b.nbytes for b in self.info.values())

    def slot_bytes(self) -> int:
        return sum(b.numel() for b in self.slot_buffers)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    # -- residency ------------------------------------------------------------------------------
    def acquire(self, i: int) -> None:
        """Block ``i`` is about to run: make its weights resident, then prefetch the next one."""
        if i in self.info and i not in self.resident:
            s = self._load(i)
            self.mover.wait(self.ready[s])
            buffer = self.slot_buffers[s]
            block = self.info[i]
            views = [typed_view(buffer, off, view) for off, view in zip(block.offsets, block.host_views)]
            for p, view in zip(block.params, views):
                p.data = view
            self.slot_views[i] = views
            self.resident.add(i)
            self.stats.max_resident = max(self.stats.max_resident, len(self.resident))
        self._prefetch(i, -1 if i in self.held else 1)

    def release(self, i: int) -> None:
        """Block ``i`` is done (its kernels are queued): park its weights; its slot may be reused
        once the compute stream has passed this point."""
        if i not in self.resident:
            return
        s = self.slot_of[i]
        self.free_after[s] = self.mover.compute_point()
        self._clock += 1
        self.touched[s] = self._clock
        block = self.info[i]
        for p, view in zip(block.params, block.host_views):
            p.data = self.mover.park(view)
        self.resident.discard(i)
        del self.slot_views[i]

    @contextmanager
    def hold(self, i: int) -> Iterator[None]:
        """Keep block ``i`` resident across a recompute and its backward; prefetch towards block 0."""
        self.held.add(i)
        try:
            yield
        finally:
            self.held.discard(i)
            self.release(i)

    def _repoint(self, i: int, module: torch.nn.Module) -> None:
        """After a layer of a resident swapped block ran, point its weights back into the slot: diffusers'
        fp8 layerwise casting casts them back to fp8 into new tensors after each layer, which would
        otherwise hold a second copy of the block beside its slot until the block is released."""
        views = self.slot_views.get(i)
        if views is None:
            return
        index = self.info[i].index
        for p in module.parameters(recurse=False):
            j = index.get(id(p))
            if j is not None:
                p.data = views[j]

    def _after_forward(self, i: int) -> None:
        if i not in self.held:
            self.release(i)

    def _prefetch(self, i: int, direction: int) -> None:
        ahead = [j for j in (self.order if direction > 0 else reversed(self.order)) if (j - i) * direction > 0]
        for j in ahead[: len(self.slot_buffers) - 1]:
            if j in self.slot_of:
                continue
            if self._free_slot() is None:
                return
            self._load(j)

    def _free_slot(self) -> int | None:
        """A slot whose block is not resident: empty first, then the least recently used."""
        candidates = [s for s, b in enumerate(self.occupant) if b is None or b not in self.resident]
        if not candidates:
            return None
        empty = [s for s in candidates if self.occupant[s] is None]
        return empty[0] if empty else min(candidates, key=lambda s: self.touched[s])

    def _load(self, j: int) -> int:
        """The slot holding block ``j``, copying it there first if needed."""
        if j in self.slot_of:
            self.stats.hits += 1
            return self.slot_of[j]
        s = self._free_slot()
        if s is None:
            raise RuntimeError(f"block swap: no free slot for block {j} (resident: {sorted(self.resident)})")
        previous = self.occupant[s]
        if previous is not None:
            del self.slot_of[previous]
        block = self.info[j]
        self.ready[s] = self.mover.upload(self.slot_buffers[s][: block.nbytes], block.host, after=self.free_after[s])
        self.occupant[s], self.slot_of[j] = j, s
        self.stats.uploads += 1
        self.stats.bytes_uploaded += block.nbytes
        return s
