import shutil
import subprocess
import sys

import polars as pl

from pipeline.cli import commands
from pipeline.core import schemas


def run_vlp(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def test_help_lists_every_command_and_each_command_its_options():
    out = run_vlp("--help")
    assert out.returncode == 0
    for name in commands():
        assert name in out.stdout
        sub = run_vlp(name, "--help")
        assert sub.returncode == 0 and "options:" in sub.stdout and "--" in sub.stdout.split("options:")[1], name
    assert "--delete-bad" in run_vlp("cache", "verify", "--help").stdout
    assert "--data" in run_vlp("caption", "--help").stdout


def test_conventions_version_bare_unknown_and_errors(tmp_path):
    assert run_vlp("--version").stdout.startswith("vlp ")
    bare = run_vlp()
    assert bare.returncode == 2 and "COMMAND" in bare.stderr
    unknown = run_vlp("nope")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    # a failure is one line on stderr, exit 1, no traceback (unless -v)
    missing = run_vlp("cache", "verify", "--store", tmp_path / "nothing")
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0 and "no such cache folder" in missing.stderr
    assert "Traceback" not in run_vlp("score", "--data", tmp_path).stderr
    assert run_vlp("score", "--data", tmp_path).returncode == 1
    # a bad params value is a usage error (exit 2), one line naming the key
    bad = run_vlp("score", "--data", tmp_path, "-S", "score.short_side=-3")
    assert bad.returncode == 2 and "score.short_side" in bad.stderr and bad.stderr.strip().count("\n") == 0


def test_probe_and_split_commands_run_the_stage_runners(tmp_path, carphone):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "carphone.mp4")
    (raw / "bad.mp4").write_text("nope")
    out = run_vlp("probe", raw, "--data", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    assert "carphone.mp4" in out.stdout and "rejected" in out.stdout
    out = run_vlp("split", raw, "--data", tmp_path / "out", "-S", "split.max_s=2")
    assert out.returncode == 0, out.stderr
    clips = schemas.read_table(tmp_path / "out" / "clips.parquet", "clips")
    assert clips.height == 2 and clips.filter(pl.col("status") == "ok").height == 2
    for p in clips["path"]:
        assert (tmp_path / "out" / "clips" / p.split("/")[-1]).exists()
    assert (tmp_path / "out" / "raw.listing.json").exists() and (tmp_path / "out" / "sources.parquet").exists()
