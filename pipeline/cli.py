"""``vlp``: the pipeline's command line. Each command lives in its own module and is imported
only when it runs, so ``vlp --help`` stays fast."""

from __future__ import annotations

import importlib
import sys

from pipeline.logs import setup_logging

# name -> ("module:function", one-line help). The function takes the remaining argv.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-samples": ("pipeline.samples:main", "copy the bundled sample videos and photos into data/raw"),
    "probe": ("pipeline.curate_cli:probe_main", "probe videos and images, print a table"),
    "split": ("pipeline.curate_cli:split_main", "split videos into clips: DIR/clips.parquet + clip files"),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: vlp COMMAND [ARGS...]", "", "Curate, caption, cache and train Wan LoRAs from raw video.", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'vlp COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vlp: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    setup_logging()
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
