"""Logging set-up shared by the stages and the CLI."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | int | None = None) -> None:
    """One-line records on stderr; ``VLP_LOG`` (e.g. DEBUG) overrides the level."""
    level = level or os.environ.get("VLP_LOG", "INFO")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    # PySceneDetect logs a line per video; keep the stage output about our own work.
    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)
