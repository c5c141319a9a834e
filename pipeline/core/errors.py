"""Errors as one line: what a row's ``reason``, a log line or a refusal on stderr says."""

from __future__ import annotations


def one_line(exc: BaseException, with_type: bool = True) -> str:
    """The first line of ``exc``'s message, after its type name (``OSError: broken data``); the
    type name alone when the message is empty."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]


def first_line(text: str, default: str = "") -> str:
    """The first non-empty line of ``text`` (e.g. a subprocess's stderr), or ``default``."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else default


def last_line(text: str, default: str = "") -> str:
    """The last non-empty line of ``text`` (ffmpeg's error is its last line)."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else default
