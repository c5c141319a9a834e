"""The device-mover interface: every copy between host memory and the training device goes
through one of these, so block swap and activation offload are the same code on a GPU and in a
CPU test.

- ``CudaMover``: pinned host buffers, host-to-device copies on one side stream and
  device-to-host copies on another, ordered against the compute stream with CUDA events, so
  copies overlap compute.
- ``HostMover``: synchronous copies on the CPU (the training device is the CPU). A test
  subclass can record every copy and park non-resident weights where any use fails loudly.

A copy returns an *event*: something the compute stream can wait for (``wait``) before it
reads the copy; ``compute_point`` is an event marking "everything the compute stream has
queued so far", which a copy into a reused buffer waits for.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

ALIGN = 512  # bytes: every tensor packed into a flat buffer starts on this boundary


class Mover(Protocol):
    device: torch.device

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """A uint8 buffer in host memory (pinned where that makes copies asynchronous)."""

    def device_buffer(self, nbytes: int) -> torch.Tensor:
        """A uint8 buffer on the training device."""

    def upload(self, dst: torch.Tensor, src: torch.Tensor, after: Any = None) -> Any:
        """Copy host ``src`` into device ``dst`` once ``after`` (an event or None) has happened; an event."""

    def upload_new(self, src: torch.Tensor, after: Any = None) -> tuple[torch.Tensor, Any]:
        """A new device tensor holding host ``src`` (copied once ``after`` has happened), and its event."""

    def download(self, dst: torch.Tensor, src: torch.Tensor, after: Any = None) -> Any:
        """Copy device ``src`` into host ``dst`` once the compute stream's work so far (and ``after``) is done; an event."""

    def wait(self, event: Any, tensor: torch.Tensor | None = None) -> None:
        """Make the compute stream wait for ``event`` before it uses ``tensor`` (from ``upload_new``)."""

    def compute_point(self) -> Any:
        """An event after everything the compute stream has queued so far."""

    def park(self, host_view: torch.Tensor) -> torch.Tensor:
        """What a swapped-out parameter's ``.data`` becomes while its block is not resident."""


class HostMover:
    """Copies on the CPU, synchronously; events are None."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8)

    def device_buffer(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def upload(self, dst: torch.Tensor, src: torch.Tensor, after: Any = None) -> Any:
        dst.copy_(src)
        return None

    def upload_new(self, src: torch.Tensor, after: Any = None) -> tuple[torch.Tensor, Any]:
        return src.to(self.device, copy=True), None

    def download(self, dst: torch.Tensor, src: torch.Tensor, after: Any = None) -> Any:
        dst.copy_(src)
        return None

    def wait(self, event: Any, tensor: torch.Tensor | None = None) -> None:
        pass

    def compute_point(self) -> Any:
        return None

    def park(self, host_view: torch.Tensor) -> torch.Tensor:
        return host_view


class CudaMover:
    """Pinned host memory; uploads and downloads on their own streams, ordered with events."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.up = torch.cuda.Stream(self.device)
        self.down = torch.cuda.Stream(self.device)

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def device_buffer(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    def _record(self, stream: torch.cuda.Stream) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def upload(self, dst: torch.Tensor, src: torch.Tensor, after: Any = None) -> Any:
        with torch.cuda.stream(self.up):
            if after is not None:
                self.up.wait_event(after)
            dst.copy_(src, non_blocking=True)
            return self._record(self.up)

    def upload_new(self, src: torch.Tensor, after: Any = None) -> tuple[torch.Tensor, Any]:
        with torch.cuda.stream(self.up):  # allocated from the upload stream's pool: no race with queued compute
            if after is not None:
                self.up.wait_event(after)
            dst = torch.empty(src.shape, dtype=src.dtype, device=self.device)
            dst.copy_(src, non_blocking=True)
            return dst, self._record(self.up)

    def download(self, dst: torch.Tensor, src: torch.Tensor, after: Any = None) -> Any:
        self.down.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.down):
            if after is not None:
                self.down.wait_event(after)
            dst.copy_(src, non_blocking=True)
            src.record_stream(self.down)  # the allocator keeps ``src`` until the copy is done
            return self._record(self.down)

    def wait(self, event: Any, tensor: torch.Tensor | None = None) -> None:
        stream = torch.cuda.current_stream(self.device)
        if event is not None:
            stream.wait_event(event)
        if tensor is not None:
            tensor.record_stream(stream)  # freed only after the compute stream is done with it

    def compute_point(self) -> Any:
        return self._record(torch.cuda.current_stream(self.device))

    def park(self, host_view: torch.Tensor) -> torch.Tensor:
        return host_view


def mover_for(device: torch.device) -> Mover:
    return CudaMover(device) if device.type == "cuda" else HostMover(device)


def aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def typed_view(buffer: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """A view of ``buffer`` (uint8) at byte ``offset`` with ``like``'s dtype and shape."""
    nbytes = like.numel() * like.element_size()
    return buffer[offset:offset + nbytes].view(like.dtype).view(like.shape)
