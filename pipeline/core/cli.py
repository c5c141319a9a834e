"""What every ``vlp`` command shares: the options of a stage command and how it runs its stage.

A stage command (``vlp split``, ``vlp caption``, ``vlp encode`` ...) runs the same runner as the
DVC stage (``pipeline.core.stage``) on ``--data DIR`` (default ``data``) with ``--params FILE``
(default ``params.yaml``; missing: the defaults), and ``-S group.key=VALUE`` overrides a value as
``dvc exp run -S`` does (VALUE parsed as YAML).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import ParamsError
from pipeline.core.layout import Layout
from pipeline.core.params import DEFAULT_PARAMS, load_params


class CommandError(Exception):
    """A command cannot do what it was asked; the message is one line (exit 1)."""


class UsageError(CommandError):
    """The command was called wrongly (exit 2, as argparse exits for a bad argument)."""


def add_stage_options(p: argparse.ArgumentParser, data_help: str = "folder of the tables (default data)") -> None:
    p.add_argument("--data", default="data", metavar="DIR", help=data_help)
    p.add_argument("--params", default=None, metavar="FILE",
                   help="params file (default params.yaml, or the defaults where there is none)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="GROUP.KEY=VALUE",
                   help="override a param, as `dvc exp run -S` does (VALUE parsed as YAML); repeatable")


# params that are one value, not a group: ``-S engine=ray``
TOP_LEVEL_VALUES = ("engine",)


def set_value(params: dict, item: str) -> None:
    """Apply one ``group.key[.sub]=value`` (or ``engine=value``) override to ``params``."""
    key, sep, raw = item.partition("=")
    parts = key.split(".")
    if not sep or (len(parts) < 2 and key not in TOP_LEVEL_VALUES) or not all(parts):
        raise ParamsError(f"-S {item!r}: expected GROUP.KEY=VALUE, e.g. split.max_s=6 (or engine=ray)")
    node: Any = params
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"-S {item!r}: {part} is not a group")
    node[parts[-1]] = yaml.safe_load(raw)


def stage_params(args: argparse.Namespace) -> dict:
    """The params file (or nothing) with the ``-S`` overrides applied. A ``--params`` file that is
    not there is a usage error; a missing ``params.yaml`` (the default) means the defaults."""
    path = Path(args.params or DEFAULT_PARAMS)
    if args.params and not path.is_file():
        raise UsageError(f"--params {args.params}: no such file")
    params = load_params(None, path) if path.exists() else {}
    for item in args.set:
        set_value(params, item)
    return params


def layout(args: argparse.Namespace) -> Layout:
    return Layout.of(args.data)
