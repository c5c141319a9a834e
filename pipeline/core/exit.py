"""Ending a stage's or ``vlp``'s process without the interpreter's last pass over every object.

When a Python process ends, CPython runs its garbage collector over every object still tracked,
including everything the imports made: numpy's, polars', OpenCV's, PyAV's, onnxruntime's and
PySceneDetect's modules and tables. For a curation stage that is about 0.2 s spent after the work
is done, in every stage process ``dvc repro`` starts. :func:`exit_process` freezes those objects
first (``gc.freeze``: the collector leaves them alone), so only the ones made since are looked at.
Nothing else is skipped: atexit handlers (logging's flush, multiprocessing's and the temp folders'
clean-up) run, and the memory goes back to the system with the process, as it would anyway. Only
for the end of a process: a test calling a stage's ``main`` in-process must not freeze its objects.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn


def exit_process(code: int | None) -> NoReturn:
    """``sys.exit(code)``, with every object alive now frozen for the collector."""
    gc.freeze()
    sys.exit(code)
