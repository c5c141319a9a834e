import argparse
import logging
import re
import shutil
import subprocess
import sys

import polars as pl
import pytest

import pipeline
from pipeline.cli import build_parser, commands, main, subparsers
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
    assert set(clips["path"]) == {(raw / "carphone.mp4").as_posix()}  # spans of the source: no clip file
    assert len(list((tmp_path / "out" / "clips" / ".measure").iterdir())) == 1
    assert (tmp_path / "out" / "raw.listing.json").exists() and (tmp_path / "out" / "sources.parquet").exists()


# In-process: pipeline.cli.main([...]) with capsys (fast). main() sets up logging on the captured
# stderr; the fixture puts the root logger back so later tests do not write to a closed stream.

class Vlp:
    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *args) -> tuple[int, str, str]:
        """``vlp ARGS``: (exit code, stdout, stderr)."""
        code = main([str(a) for a in args])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def err(self) -> str:
        """stderr since the last read."""
        return self.capsys.readouterr().err


@pytest.fixture
def vlp(capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Vlp(capsys)
    root.handlers[:] = handlers
    root.setLevel(level)


def one_line_error(err: str) -> bool:
    return err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err


def every_parser(ap=None):
    """(argv prefix, parser) of every command and nested subcommand (vlp cache verify, vlp caption edit)."""
    ap = ap or build_parser()
    for name, sp in subparsers(ap).items():
        yield [name], sp
        for sub, nested in subparsers(sp).items():
            yield [name, sub], nested


def test_version_prints_the_package_version(vlp):
    code, out, err = vlp("--version")
    assert code == 0 and out == f"vlp {pipeline.__version__}\n"


def test_bare_vlp_prints_the_help_and_exits_2(vlp):
    code, out, err = vlp()
    assert code == 2 and err.startswith("usage: vlp") and "COMMAND" in err and "score" in err and out == ""


def test_every_command_help_lists_its_options_each_with_a_help_text(vlp):
    names = []
    for argv, parser in every_parser():
        code, out, _ = vlp(*argv, "--help")
        assert code == 0, argv
        options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        nested = subparsers(parser)
        assert options or nested, f"vlp {' '.join(argv)} has no options"
        for action in options:
            assert action.option_strings[-1] in out.split("options:")[1], (argv, action.option_strings)
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert action.help, f"vlp {' '.join(argv)}: {action.dest} has no help text"
        for sub in nested.values():  # vlp cache --help lists the options of verify and gc
            for action in sub._actions:
                if action.option_strings and not isinstance(action, argparse._HelpAction):
                    assert action.option_strings[-1] in out, (argv, action.option_strings)
        names.append(" ".join(argv))
    assert {"caption", "caption edit", "cache", "cache verify", "cache gc", "train", "encode"} <= set(names)
    code, out, _ = vlp("cache", "--help")
    assert "--store" in out and "--delete-bad" in out and "--keep" in out


@pytest.mark.parametrize("argv, says", [
    (["score", "--bogus"], "vlp score: unrecognized arguments: --bogus"),
    (["nope"], "invalid choice: 'nope'"),
    (["train-estimate", "--frames", "x"], "vlp train-estimate: argument --frames: invalid int value: 'x'"),
    (["caption", "edit"], "vlp caption edit: the following arguments are required: CLIP_ID, TEXT"),
    (["cache"], "vlp cache: the following arguments are required"),
    (["-q", "-v", "score"], "not allowed with argument"),
])
def test_a_bad_argument_is_one_line_and_exit_2(vlp, argv, says):
    code, out, err = vlp(*argv)
    assert code == 2 and one_line_error(err) and says in err, err


def test_a_params_error_is_one_line_and_exit_2(vlp, tmp_path):
    code, _, err = vlp("score", "--data", tmp_path, "-S", "score.short_side=-3")
    assert code == 2 and one_line_error(err) and "score.short_side" in err and err.startswith("vlp score: ")
    code, _, err = vlp("score", "--data", tmp_path, "-S", "nokey")
    assert code == 2 and one_line_error(err) and "GROUP.KEY=VALUE" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("score:\n  short_side: [16\n")
    code, _, err = vlp("score", "--data", tmp_path, "--params", broken)
    assert code == 2 and one_line_error(err) and f"{broken}: not valid YAML" in err and "line " in err
    code, _, err = vlp("score", "--data", tmp_path, "--params", tmp_path / "missing.yaml")
    assert code == 2 and one_line_error(err) and "missing.yaml: no such file" in err


def test_verify_of_a_missing_store_is_a_one_line_failure(vlp, tmp_path):
    code, out, err = vlp("cache", "verify", "--store", tmp_path / "nonexistent")
    assert code == 1 and one_line_error(err) and "nonexistent: no such cache folder" in err
    assert "entries" not in out  # not "0 entries, 0 bad"


def test_a_failure_is_one_line_and_with_v_a_traceback(vlp, tmp_path):
    code, _, err = vlp("score", "--data", tmp_path)
    assert code == 1 and one_line_error(err) and "clips.parquet" in err
    code, _, err = vlp("-v", "score", "--data", tmp_path)
    assert code == 1 and "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("vlp score: ") and "clips.parquet" in err.splitlines()[-1]


def test_log_lines_carry_a_timestamp_and_follow_q_and_vlp_log(vlp, tmp_path, monkeypatch):
    stamp = re.compile(r"^\d\d:\d\d:\d\d (INFO|DEBUG|WARNING) \w+: ")
    monkeypatch.delenv("VLP_LOG", raising=False)
    vlp("filter", "--data", tmp_path)  # fails (no scores), after setting up logging
    logging.getLogger("encode").info("hello")
    line = vlp.err()
    assert stamp.match(line) and line.endswith("INFO encode: hello\n"), line
    vlp("-q", "filter", "--data", tmp_path)
    logging.getLogger("encode").info("hidden")
    logging.getLogger("encode").warning("shown")
    quiet = vlp.err()
    assert quiet.endswith("WARNING encode: shown\n") and "hidden" not in quiet
    monkeypatch.setenv("VLP_LOG", "debug")  # any case
    vlp("filter", "--data", tmp_path)
    logging.getLogger("encode").debug("detail")
    assert "DEBUG encode: detail" in vlp.err()
    monkeypatch.setenv("VLP_LOG", "loud")
    code, _, err = vlp("filter", "--data", tmp_path)
    assert code == 2 and one_line_error(err) and "VLP_LOG='LOUD': not a log level" in err


def test_the_train_summary_is_an_aligned_table():
    from pipeline.train.stage import summary_table

    table = summary_table({"steps": 3, "eval_loss_final": 0.123456789, "vram_budget_gib": None,
                           "experts": {"high": {"steps": 2}}})
    lines = table.splitlines()
    assert "{" not in table and len(lines) == 4
    assert lines[0].split() == ["steps", "3"] and lines[1].split() == ["eval_loss_final", "0.123457"]
    assert lines[2].split() == ["vram_budget_gib", "-"] and lines[3].split() == ["experts.high.steps", "2"]
    assert len({line.index(line.split()[1], len(line.split()[0]) + 2) for line in lines}) == 1  # one value column
