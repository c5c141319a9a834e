"""A small TOML writer for the dataset configs we export (tables, arrays of tables, scalars, lists).

Strings are written as TOML basic strings through ``json.dumps`` (its escapes are a subset of
TOML's); floats always carry a decimal point, because musubi-tuner reads ``source_fps = 30``
as an int and asks for ``30.0``.
"""

from __future__ import annotations

import json
import math
import re

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if BARE_KEY.match(k) else json.dumps(k)


def value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML: {v!r}")


def dumps(doc: dict, header: str = "") -> str:
    """``doc``: top-level scalars, then ``{name: dict}`` tables and ``{name: [dict, ...]}`` arrays of tables.

    ``None`` values are left out (TOML has no null). ``header`` lines become ``#`` comments.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    scalars = {k: v for k, v in doc.items() if v is not None and not isinstance(v, dict) and not _is_table_array(v)}
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{_key(k)}]"] + [f"{_key(kk)} = {value(vv)}" for kk, vv in v.items() if vv is not None]
        elif _is_table_array(v):
            for table in v:
                lines += ["", f"[[{_key(k)}]]"] + [f"{_key(kk)} = {value(vv)}" for kk, vv in table.items() if vv is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table_array(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
