"""Logging set-up shared by the stages and the CLI."""

from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


class TqdmHandler(logging.StreamHandler):
    """Writes records through ``tqdm.write``: a log line goes above an active progress bar, never into it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - as logging.Handler does
            self.handleError(record)


def setup_logging(level: str | int | None = None) -> None:
    """One timestamped line a record on stderr, at ``level``, else ``VLP_LOG`` (e.g. DEBUG), else INFO."""
    level = level or os.environ.get("VLP_LOG", "INFO")
    handler = TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # PySceneDetect logs a line per video; keep the stage output about our own work.
    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)
