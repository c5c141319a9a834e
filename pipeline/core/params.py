"""Reading params.yaml: each stage reads its own group."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


def load_params(group: str | None = None, path: str | os.PathLike = DEFAULT_PARAMS) -> dict[str, Any]:
    """Return the whole params file, or one group of it, as a dict."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    if group is None:
        return params
    if group not in params:
        raise KeyError(f"{path}: no '{group}' group")
    return dict(params[group] or {})


def resolve_jobs(jobs: int | None) -> int:
    """``jobs`` param: 0 or None means all cores."""
    if not jobs or jobs <= 0:
        return os.cpu_count() or 1
    return int(jobs)
