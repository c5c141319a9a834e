"""A circuit breaker for a caption server that is down: after a number of consecutive transport
failures every remaining request fails at once instead of waiting for its retries."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("caption")


class CircuitBreaker:
    """Stops sending to a server that is down.

    ``threshold`` consecutive transport failures (connection refused, DNS failure, reset,
    timeout) open the circuit: :meth:`open_reason` is then the one-line reason every remaining
    request fails with, without being sent. Any answer from the server closes it again.
    ``threshold`` 0 never opens it. Safe to share between threads.
    """

    def __init__(self, threshold: int):
        self.threshold = max(0, int(threshold))
        self._lock = threading.Lock()
        self._failures = 0
        self._last = ""
        self._opened = threading.Event()

    def open_reason(self) -> str:
        """Empty while requests may go out; else why they fail."""
        with self._lock:
            if not self._opened.is_set():
                return ""
            return (f"caption server unreachable (circuit open after {self.threshold} consecutive failures): "
                    f"{self._last}")

    def record_failure(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            self._last = reason
            opening = self.threshold > 0 and self._failures >= self.threshold and not self._opened.is_set()
            if opening:
                self._opened.set()
        if opening:
            log.warning("caption server unreachable after %d consecutive failures (%s): the remaining clips fail "
                        "without being sent", self.threshold, reason)

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened.clear()

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (a retry's back-off), waking early when the circuit opens."""
        self._opened.wait(seconds)
