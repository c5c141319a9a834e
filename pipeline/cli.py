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
    "score": ("pipeline.score_cli:score_main", "score the clips of DIR/clips.parquet: DIR/scores.parquet"),
    "filter": ("pipeline.score_cli:filter_main", "filter scored clips: DIR/dataset.parquet, DIR/rejected.parquet with reasons"),
    "caption": ("pipeline.caption.cli:main", "caption clips with a VLM (run TABLE --out DIR), or set a human caption (edit CLIP_ID TEXT)"),
    "train": ("pipeline.train.cli:train_main", "train a Wan LoRA from the cache alone: DATA/lora/<run>/ (the train stage)"),
    "train-estimate": ("pipeline.train.cli:estimate_main", "estimate peak GPU memory and s/step of LoRA training for a model and clip shape"),
    "cache": ("pipeline.cache_cli:main", "cache store: verify entries, gc unreferenced ones"),
    "audit": ("pipeline.audit_cli:main", "which clips made a LoRA; which LoRAs used a source or clip; diff two LoRAs"),
    "report": ("pipeline.report:main", "write the static dataset report data/report/index.html"),
    "export": ("pipeline.export:main", "export kept clips + captions + dataset TOML for musubi-tuner / diffusion-pipe"),
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
