"""Reading params.yaml: each stage reads its own group."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import ParamsError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(group: str | None = None, path: str | os.PathLike = DEFAULT_PARAMS) -> dict[str, Any]:
    """Return the whole params file, or one group of it, as a dict."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            params = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:  # one line: where and what, not the parser's multi-line report
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ParamsError(f"{path}: not valid YAML: {problem}{where}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of params groups, got {type(params).__name__}")
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
