"""``vlp``: the pipeline's command line.

Every package registers its commands from its own ``cli`` module (``register(subparsers)``), so
``vlp --help`` lists them all and ``vlp COMMAND --help`` lists each one's options; the heavy
imports (torch, diffusers) happen inside the commands, so ``vlp --help`` stays fast.

Conventions: ``vlp --version``; ``-q`` (warnings only) / ``-v`` (debug, and a traceback on an
error) before the command, else the level ``VLP_LOG`` names (DEBUG, INFO, WARNING; default INFO);
log lines carry a timestamp. A failure is one line on stderr and exit 1; a bad argument or a bad
params value (``ParamsError``) exit 2; bare ``vlp`` prints the help and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from pipeline import __version__
from pipeline.core.cli import CommandError, UsageError
from pipeline.core.config import ParamsError
from pipeline.core.errors import one_line
from pipeline.core.exit import exit_process
from pipeline.core.logs import setup_logging

# packages whose cli module registers commands, in the order the help lists them
COMMAND_MODULES = (
    "pipeline.core.samples", "pipeline.curate.cli", "pipeline.caption.cli", "pipeline.encode.cli",
    "pipeline.train.cli", "pipeline.render.cli", "pipeline.report.cli", "pipeline.cache.cli", "pipeline.lineage.cli", "pipeline.export.cli",
)
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage error is one line on stderr (exit 2) naming the command, not
    argparse's usage block; every subparser is one too (argparse makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")

    def format_help(self) -> str:
        """The help; a command with subcommands (``vlp cache``) also lists each one's arguments."""
        text = super().format_help()
        if self.prog == "vlp":  # the top level lists commands; 'vlp COMMAND --help' their options
            return text
        for sub in subparsers(self).values():
            f = sub._get_formatter()
            f.start_section(f"{sub.prog} arguments")
            f.add_arguments([a for a in sub._actions if not isinstance(a, argparse._HelpAction)])
            f.end_section()
            text += "\n" + f.format_help()
        return text


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="vlp", description="Curate, caption, cache and train Wan LoRAs from raw video.",
        epilog="Logging: -q, -v, or VLP_LOG=DEBUG|INFO|WARNING|ERROR. Run 'vlp COMMAND --help' for a command's options.")
    ap.add_argument("--version", action="version", version=f"vlp {__version__}")
    level = ap.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    level.add_argument("-v", "--verbose", action="store_true", help="debug logging; a traceback on an error")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return ap


def subparsers(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``ap``'s subcommands by name ({} when it has none)."""
    action = next((a for a in ap._actions if isinstance(a, argparse._SubParsersAction)), None)
    return dict(action.choices) if action else {}


def commands() -> list[str]:
    """Every top-level command name."""
    return list(subparsers(build_parser()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    if not argv:
        ap.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        args, extra = ap.parse_known_args(argv)
        nested = getattr(args, f"{args.command}_command", None)  # vlp caption edit, vlp cache verify ...
        label = "vlp" + (f" {args.command}" if args.command else "") + (f" {nested}" if nested else "")
        if extra:  # argparse would name only 'vlp'; name the command the arguments were given to
            Parser(prog=label).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # argparse: --help / --version exit 0, a bad argument exits 2
        return int(e.code or 0)
    if not getattr(args, "run", None):  # bare 'vlp -v', or a command that needs a subcommand
        (subparsers(ap)[args.command] if args.command else ap).print_help(sys.stderr)
        return EXIT_USAGE
    try:
        setup_logging("WARNING" if args.quiet else "DEBUG" if args.verbose else None)
    except ValueError as e:  # VLP_LOG names no level
        print(f"{label}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ParamsError, UsageError) as e:
        if args.verbose:
            logging.getLogger("vlp").exception("%s: usage error", label)
        print(f"{label}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - every failure is one line (a traceback with -v)
        if args.verbose:
            logging.getLogger("vlp").exception("%s failed", label)
        message = str(e) if isinstance(e, (CommandError, FileNotFoundError)) and str(e) else one_line(e)
        print(f"{label}: {message}", file=sys.stderr)
        return EXIT_FAILURE


def run() -> NoReturn:
    """The ``vlp`` command (its console script): :func:`main`, then the process ends."""
    exit_process(main())


if __name__ == "__main__":
    run()
