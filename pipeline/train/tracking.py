"""Live logging of a run beside the DVC plots: TensorBoard event files (``train.log_with:
tensorboard``) in ``<run>/tensorboard/`` with the train loss, eval loss, learning rate, seconds
per step and peak memory, so a long run can be followed in ``tensorboard --logdir data/lora``.
With two experts trained in turn each writes its own sub-folder (``high``, ``low``) on one step
axis. ``none`` writes nothing."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("train")

LOG_WITH = ("none", "tensorboard")


class Tracker:
    def __init__(self, log_with: str, out_dir: Path, expert: str = ""):
        self.writer = None
        if log_with == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            folder = Path(out_dir) / "tensorboard" / (expert or "")
            self.writer = SummaryWriter(log_dir=str(folder))
            log.info("TensorBoard event files -> %s (tensorboard --logdir %s)", folder, Path(out_dir).parent)

    def log(self, step: int, **values: float | None) -> None:
        """``train/<name>`` scalars at ``step`` (None values are left out)."""
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
