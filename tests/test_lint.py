"""ruff and mypy, as configured in pyproject.toml, report nothing: run by the README's test command
(and so by .ci/run)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing():
    out = _run("ruff", "check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_finds_nothing():
    out = _run("mypy")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr
