"""Ctrl-C and SIGTERM during training: finish the step, write a checkpoint, then stop."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    _Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM while the training loop runs. The handler only records the signal;
    the loop, once its current step is done, checkpoints it and raises :meth:`exception`
    (KeyboardInterrupt, or SystemExit(128 + 15) for SIGTERM). A second signal stops at once.
    Installed only from the main thread (Python allows no other); the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, _Handler] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise self.exception(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def exception(self, signum: int | None = None) -> BaseException:
        signum = self.signum if signum is None else signum
        assert signum is not None, "exception() before any signal"
        return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + int(signum))
