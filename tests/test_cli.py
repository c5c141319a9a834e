import subprocess
import sys

import polars as pl

from pipeline import schemas
from pipeline.cli import COMMANDS


def run_vlp(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def test_help_lists_every_command():
    out = run_vlp("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout
        assert run_vlp(name, "--help").returncode == 0, name


def test_unknown_command():
    out = run_vlp("nope")
    assert out.returncode == 2 and "unknown command" in out.stderr


def test_probe_and_split_commands(tmp_path, carphone):
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    out = run_vlp("probe", carphone, bad)
    assert out.returncode == 0, out.stderr
    assert "carphone_pristine.mp4" in out.stdout and "rejected" in out.stdout
    out = run_vlp("split", carphone, "--out", tmp_path / "out", "--max-s", "2")
    assert out.returncode == 0, out.stderr
    clips = schemas.read_table(tmp_path / "out" / "clips.parquet", "clips")
    assert clips.height == 2 and clips.filter(pl.col("status") == "ok").height == 2
    for p in clips["path"]:
        assert (tmp_path / "out" / p.split("/")[-1]).exists()
