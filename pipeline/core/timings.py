"""Figures that vary from one machine or run to the next (seconds, throughput, peak memory, the
device's name) are kept out of the metrics DVC tracks: a fresh clone's ``dvc repro`` then leaves
``dvc.lock`` and the committed metrics as they are wherever it runs, and ``dvc exp show``
compares what the data and settings change. They go to ``data/timings/<name>.json`` instead, a
file DVC does not track and git ignores: what this machine measured, for the report and for you.
"""

from __future__ import annotations


def split_timings(metrics: dict, keys: frozenset[str] | set[str]) -> tuple[dict, dict]:
    """(metrics without ``keys``, the ``keys``' values), nested dicts (per expert) split alike."""
    stable: dict = {}
    timing: dict = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            s, t = split_timings(v, keys)
            stable[k] = s
            if t:
                timing[k] = t
        elif k in keys:
            timing[k] = v
        else:
            stable[k] = v
    return stable, timing

