"""Per-item functions for the Ray engine's tests, in a module of their own: a Ray worker imports the
module of each function it runs, and this one imports nothing heavy (no torch, no stage)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def dies_once(item: tuple[str, int]) -> tuple[str, int, int]:
    """(working directory, pid, item); kills its own worker process the first time it meets item 3
    (a marker file remembers), as a lost node would."""
    marker, x = item
    if x == 3 and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getcwd(), os.getpid(), x


class DiesOnce:
    """The same in an actor: built once, then called on each item."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, x: int) -> tuple[str, int, int]:
        return dies_once((self.marker, x))
