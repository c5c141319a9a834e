"""Logging set-up shared by the stages and the CLI."""

from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # 12:34:56 INFO encode: ...
DATEFMT = "%H:%M:%S"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Libraries whose debug lines are about themselves (PIL's PNG chunks, pydot's start-up): at most
# INFO even under ``-v`` / ``VLP_LOG=DEBUG``, so the debug output is about the pipeline's work.
CHATTY = ("PIL", "pydot", "matplotlib", "fsspec", "filelock", "asyncio")


def quiet_libraries(record: logging.LogRecord) -> bool:
    """Drop PySceneDetect's INFO lines ("Detecting scenes...", one a video): importing scenedetect
    sets its logger to INFO again, after any level set here, so this is a filter on the handler."""
    return record.levelno >= logging.WARNING or not record.name.startswith("pyscenedetect")


class TqdmHandler(logging.StreamHandler):
    """Writes records through ``tqdm.write``: a log line goes above an active progress bar, never into it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - as logging.Handler does
            self.handleError(record)


def log_level(level: str | int | None = None) -> int:
    """``level``, else ``VLP_LOG`` (any case), else INFO, as a logging level; ValueError (one line
    naming the value) for a name that is not one of DEBUG, INFO, WARNING, ERROR."""
    if isinstance(level, int):
        return level
    name = (level or os.environ.get("VLP_LOG") or "INFO").strip().upper()
    if name not in LEVELS:
        source = "VLP_LOG" if not level else "log level"
        raise ValueError(f"{source}={name!r}: not a log level (one of {', '.join(LEVELS)})")
    return logging.getLevelNamesMapping()[name]


def setup_logging(level: str | int | None = None) -> None:
    """One timestamped line a record on stderr, at ``level``, else ``VLP_LOG`` (e.g. DEBUG), else INFO."""
    value = log_level(level)
    handler = TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handler.addFilter(quiet_libraries)  # PySceneDetect logs a line per video; keep the output about our work
    logging.basicConfig(level=value, handlers=[handler], force=True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(value, logging.INFO))
