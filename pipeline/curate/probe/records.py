"""Source records: who owns each raw file, under what licence, and whether the people in it agreed.

Two places hold records, both optional, both read by the probe stage:

- ``<raw>/sources.yaml``: a mapping from a path (relative to the raw folder) or a glob to a record::

      photos/astronaut.png:
        owner: NASA
        licence: public domain
        consent: unknown
        subject: Eileen Collins
        notes: NASA Great Images database
      "people/alice/**":          # quote a glob that starts with '*'
        owner: Alice Example
        licence: CC-BY-4.0
        consent: "yes"

  In a glob ``*`` and ``?`` stay inside one folder, ``**`` crosses folders and ``[...]`` is a set.
- ``<raw>/<file>.yaml`` beside a source (``alice.mp4.yaml`` for ``alice.mp4``): one record, the keys
  at the top level.

A record's keys are :data:`FIELDS`: ``owner``, ``licence`` (an SPDX id or free text), ``consent``
(``yes`` / ``no`` / ``unknown`` / ``withdrawn``), ``subject`` (who appears), ``notes``, and what
``vlp withdraw`` writes: ``withdrawn_on`` (a date), ``withdrawn_reason`` and ``source_id`` (the sha256
of the file's bytes: the record then also follows the bytes to another name). Every record that
matches a source applies, key by key, the more specific one last: globs in file order, then the
source's own path (or its ``source_id``), then its sidecar. A withdrawal wins whatever comes after
it: a source is ``withdrawn`` when any record that matches it says so. A source no record names has
consent ``unknown``.

A malformed record never stops the probe: it is one line naming the file and line (an unknown
key, a consent that is not one of the four, a value that is not text, a path or glob that matches
no file, invalid YAML), logged as an error, and the record is left out (for invalid YAML, the whole
file). Nothing here opens a file that is not a regular file (a FIFO would block).
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from pipeline.core.consent import CONSENT_VALUES, UNKNOWN, WITHDRAWN

log = logging.getLogger(__name__)

RECORDS_FILE = "sources.yaml"
SIDECAR_SUFFIX = ".yaml"
FIELDS = ("owner", "licence", "consent", "subject", "notes", "withdrawn_on", "withdrawn_reason", "source_id")
# The sources table's columns a record fills ("record" says where it came from).
COLUMNS = ("owner", "licence", "consent", "subject", "notes", "withdrawn_on", "withdrawn_reason", "record")
MAX_BYTES = 1 << 20  # a records file larger than this is refused (one line), not read
SHA256 = re.compile(r"^[0-9a-f]{64}$")
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class RecordError:
    """A malformed record: ``file:line: message`` (line 0: the file as a whole)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass(frozen=True)
class Record:
    """One record: ``pattern`` (a path or glob under the raw folder; the source's path for a sidecar)
    and its ``fields`` (text), with the file and line it was written at."""

    pattern: str
    fields: dict[str, str]
    file: str
    line: int
    sidecar: bool = False
    key_line: dict[str, int] = field(default_factory=dict, compare=False)  # the line of each field

    @property
    def is_glob(self) -> bool:
        return not self.sidecar and bool(GLOB_CHARS & set(self.pattern))

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(glob_regex(self.pattern)) if self.is_glob else re.compile(re.escape(self.pattern) + r"\Z")

    def matches(self, rel: str, source_id: str = "") -> bool:
        if source_id and self.fields.get("source_id") == source_id:
            return True
        return bool(self.regex.match(rel))

    @property
    def where(self) -> str:
        return f"{Path(self.file).name}:{self.line}"

    @property
    def rank(self) -> int:
        """Which records apply later (win): globs 0, a path or source_id 1, a sidecar 2."""
        return 2 if self.sidecar else 0 if self.is_glob else 1


def glob_regex(pattern: str) -> str:
    """A regex for a glob over paths with forward slashes: ``*`` and ``?`` inside one folder, ``**``
    across folders (``a/**/b`` also matches ``a/b``), ``[...]`` a set of characters."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (j := pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)) > 0:
            body = pattern[i + 1:j]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out) + r"\Z"


def read_small_text(path: Path, label: str) -> tuple[str | None, RecordError | None]:
    """The text of a records file: (None, None) when there is none; (None, error) when it cannot be read
    (not a regular file, too large, not UTF-8) — checked before it is opened, so a FIFO never blocks."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, RecordError(label, 0, f"cannot read ({e.strerror or e})")
    if not stat.S_ISREG(st.st_mode):
        return None, RecordError(label, 0, "not a regular file; no record read from it")
    if st.st_size > MAX_BYTES:
        return None, RecordError(label, 0, f"{st.st_size} bytes, more than a records file may hold ({MAX_BYTES}); not read")
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, RecordError(label, 0, f"cannot read ({e.strerror or e})")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, RecordError(label, data[:e.start].count(b"\n") + 1, "not UTF-8 text; no record read from this file")


def _compose(text: str, label: str) -> tuple[yaml.Node | None, RecordError | None]:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        hint = ""
        if mark and text.splitlines()[mark.line:mark.line + 1] and text.splitlines()[mark.line].lstrip().startswith("*"):
            hint = ' (quote a glob that starts with "*": "*.mp4":)'
        return None, RecordError(label, line, f"invalid YAML: {problem}{hint}; no record read from this file")
    except yaml.YAMLError as e:
        return None, RecordError(label, 1, f"invalid YAML: {' '.join(str(e).split())}; no record read from this file")


def _scalar(node: yaml.Node) -> object:
    """The value of a scalar node as YAML 1.1 reads it (``yes`` is True, a date is a date)."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _kind(node: yaml.Node) -> str:
    return {"MappingNode": "a mapping", "SequenceNode": "a list"}.get(type(node).__name__, "a value")


def _fields(node: yaml.Node, label: str, what: str) -> tuple[dict[str, str] | None, dict[str, int], list[RecordError]]:
    """A record's fields from its mapping node: (fields, line of each field, errors). Any error leaves
    the whole record out (None), so a half-understood record never applies."""
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        return None, {}, [RecordError(label, line, f"{what}: expected a mapping of {', '.join(FIELDS[:5])}, got {_kind(node)}")]
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    errors: list[RecordError] = []
    for key_node, value_node in node.value:
        kline = key_node.start_mark.line + 1
        key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str) or key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            errors.append(RecordError(label, kline, f"{what}: unknown key {key!r}"
                                      + (f" (did you mean {close[0]!r}?)" if close else "") + f"; known keys: {', '.join(FIELDS)}"))
            continue
        if key in out:
            errors.append(RecordError(label, kline, f"{what}: key {key!r} given twice (first at line {lines[key]})"))
            continue
        if not isinstance(value_node, yaml.ScalarNode):
            errors.append(RecordError(label, kline, f"{what}: {key} must be text, got {_kind(value_node)}"))
            continue
        value = _scalar(value_node)
        if key == "consent":
            text = _text(value).lower()  # YAML 1.1 reads yes / no as booleans
            if text not in CONSENT_VALUES:
                errors.append(RecordError(label, kline, f"{what}: consent {text or '(empty)'!r} is not one of "
                                                        f"{', '.join(CONSENT_VALUES)}"))
                continue
            value = text
        elif key == "source_id":
            if not (isinstance(value, str) and SHA256.match(value.strip().lower())):
                errors.append(RecordError(label, kline, f"{what}: source_id {value!r} is not a sha256 (64 hex digits)"))
                continue
            value = value.strip().lower()
        out[key] = _text(value)
        lines[key] = kline
    return (None if errors else out), lines, errors


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).strip()


def parse_records(text: str, label: str) -> tuple[list[Record], list[RecordError]]:
    """The records of a ``sources.yaml`` text (``label``: the file's name in errors)."""
    root, err = _compose(text, label)
    if err:
        return [], [err]
    if root is None:  # empty file, or comments only
        return [], []
    if not isinstance(root, yaml.MappingNode):
        return [], [RecordError(label, root.start_mark.line + 1,
                                f"expected a mapping of path or glob -> record, got {_kind(root)}; no record read from this file")]
    records: list[Record] = []
    errors: list[RecordError] = []
    seen: dict[str, int] = {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str) or not key.strip():
            errors.append(RecordError(label, line, f"expected a path or glob as the key, got {key!r}"))
            continue
        pattern = key.strip().replace("\\", "/").removeprefix("./")
        if pattern in seen:
            errors.append(RecordError(label, line, f"{pattern!r} repeats the record at line {seen[pattern]}; this one is left out"))
            continue
        seen[pattern] = line
        fields, lines, errs = _fields(value_node, label, repr(pattern))
        errors += errs
        if fields is not None:
            records.append(Record(pattern, fields, label, line, key_line=lines))
    return records, errors


def parse_sidecar(text: str, label: str, rel: str) -> tuple[Record | None, list[RecordError]]:
    """The record of a sidecar ``<file>.yaml`` of the source ``rel``."""
    root, err = _compose(text, label)
    if err:
        return None, [err]
    if root is None:
        return None, []
    fields, lines, errors = _fields(root, label, "sidecar")
    if fields is None:
        return None, errors
    return Record(rel, fields, label, root.start_mark.line + 1, sidecar=True, key_line=lines), errors


def load_records(root: str | os.PathLike, rels: list[str]) -> tuple[list[Record], list[RecordError]]:
    """``root``'s ``sources.yaml`` and the sidecars of the sources ``rels`` (paths relative to ``root``)."""
    root = Path(root)
    records: list[Record] = []
    errors: list[RecordError] = []
    text, err = read_small_text(root / RECORDS_FILE, str(root / RECORDS_FILE))
    if err:
        errors.append(err)
    if text is not None:
        found, errs = parse_records(text, str(root / RECORDS_FILE))
        records += found
        errors += errs
    for rel in rels:
        path = root / (rel + SIDECAR_SUFFIX)
        text, err = read_small_text(path, str(path))
        if err:
            errors.append(err)
        if text is None:
            continue
        rec, errs = parse_sidecar(text, str(path), rel)
        errors += errs
        if rec is not None:
            records.append(rec)
    return records, errors


def resolve(records: list[Record], rel: str, source_id: str = "") -> dict[str, str]:
    """The record columns (:data:`COLUMNS`) of one source: every matching record applied in order
    (:attr:`Record.rank`, then file order); withdrawn when any of them says so."""
    matched = sorted((r for r in records if (r.sidecar and r.pattern == rel) or (not r.sidecar and r.matches(rel, source_id))),
                     key=lambda r: r.rank)
    out = dict.fromkeys(COLUMNS, "")
    for r in matched:
        out.update({k: v for k, v in r.fields.items() if k in out})
    withdrawals = [r for r in matched if r.fields.get("consent") == WITHDRAWN]
    if withdrawals:
        last = withdrawals[-1].fields
        out.update(consent=WITHDRAWN, withdrawn_on=last.get("withdrawn_on", out["withdrawn_on"]),
                   withdrawn_reason=last.get("withdrawn_reason", out["withdrawn_reason"]))
    out["consent"] = out["consent"] or UNKNOWN
    out["record"] = ", ".join(r.where for r in matched)
    return out


def unmatched(records: list[Record], sources: list[tuple[str, str]], root: str | os.PathLike) -> list[RecordError]:
    """One error per ``sources.yaml`` record that matches none of ``sources`` ((path, source_id) pairs):
    a glob that matches nothing, a path that names no file. A withdrawn source's record is kept
    after its file is deleted, so a withdrawal naming no file is not an error."""
    out = []
    for r in records:
        if r.sidecar or any(r.matches(rel, sid) for rel, sid in sources):
            continue
        if r.is_glob:
            out.append(RecordError(r.file, r.line, f"glob {r.pattern!r} matches no file under {root}; record left unused"))
        elif r.fields.get("consent") != WITHDRAWN:
            out.append(RecordError(r.file, r.line, f"{r.pattern!r} names no file under {root}; record left unused"))
    return out


def apply_records(rows: list[dict], root: str | os.PathLike) -> tuple[list[dict], list[RecordError]]:
    """Fill the record columns of ``sources`` rows (``path`` relative to ``root``, ``source_id``) from
    ``root``'s records; returns the rows and every malformed record (already logged, one line each)."""
    records, errors = load_records(root, [r["path"] for r in rows])
    errors += unmatched(records, [(r["path"], r.get("source_id") or "") for r in rows], root)
    for row in rows:
        row.update(resolve(records, row["path"], row.get("source_id") or ""))
    for e in errors:
        log.error("%s", e)
    named = sum(1 for r in rows if r["record"])
    if records or errors:
        log.info("records: %d of %d sources have one; %d withdrawn; %d malformed record(s) left out", named, len(rows),
                 sum(r["consent"] == WITHDRAWN for r in rows), len(errors))
    return rows, errors


def record_files(root: str | os.PathLike, rels: list[str]) -> list[dict]:
    """What the listing records about the records files (``sources.yaml`` and the sidecars of ``rels``)
    so that the probe stage re-runs when one changes: path, size, mtime and the sha256 of the bytes."""
    from pipeline.core.fs import sha256_file

    root = Path(root)
    out = []
    for rel in [RECORDS_FILE] + [r + SIDECAR_SUFFIX for r in rels]:
        path = root / rel
        try:
            st = os.stat(path)
        except OSError:
            continue
        entry: dict = {"rel": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_BYTES:
            entry["sha256"] = sha256_file(path)
        out.append(entry)
    return out


# ---------------------------------------------------------------- writing a record (vlp withdraw)


def _dump(pattern: str, fields: dict[str, str]) -> str:
    return yaml.safe_dump({pattern: fields}, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)


def _entry_span(text: str, key_node: yaml.Node, value_node: yaml.Node) -> tuple[int, int]:
    """The characters of one top-level entry: from its key to the end of its last line with content
    (not the blank lines and comments before the next entry)."""
    start = text.rfind("\n", 0, key_node.start_mark.index) + 1
    end = value_node.end_mark.index
    lines = text[start:end].splitlines(keepends=True)
    while len(lines) > 1 and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
        lines.pop()
    end = start + sum(len(line) for line in lines)
    if not text[start:end].endswith("\n"):
        nl = text.find("\n", end)
        end = len(text) if nl < 0 else nl + 1
    return start, end


def set_record(text: str, pattern: str, fields: dict[str, str], label: str = RECORDS_FILE) -> str:
    """``text`` of a ``sources.yaml`` with the record of ``pattern`` set to ``fields``: the entry is
    rewritten in place (its own comments are not kept) or appended; the rest of the file is left as
    it was, comments included. A file that cannot be edited in place (flow style, or invalid) is
    rewritten whole from what it says (comments lost; a warning says so)."""
    root, err = _compose(text, label) if text.strip() else (None, None)
    if err:
        raise ValueError(str(err))
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise ValueError(f"{label}: expected a mapping of path or glob -> record; not changed")
    entry = _dump(pattern, fields)
    new, replaced = None, None
    if root is not None:
        for key_node, value_node in root.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value.strip().replace("\\", "/").removeprefix("./") == pattern:
                start, end = _entry_span(text, key_node, value_node)
                new, replaced = text[:start] + entry + text[end:], key_node.value
                break
    if new is None:
        new = text + ("" if not text or text.endswith("\n") else "\n") + entry
    want = {**{k: v for k, v in _records_of(text).items() if k != replaced}, pattern: fields}
    if _records_of(new) != want:
        log.warning("%s: could not edit the record of %s in place; the file is rewritten whole and its comments are lost",
                    label, pattern)
        new = yaml.safe_dump(want, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
    return new


def _records_of(text: str) -> dict:
    data = yaml.safe_load(text) if text.strip() else None
    return dict(data) if isinstance(data, dict) else {}
