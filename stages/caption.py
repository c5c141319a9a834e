"""DVC stage 'caption' (see dvc.yaml): the same runner as `vlp caption`."""

from pipeline.caption.stage import run
from pipeline.core.exit import exit_process
from pipeline.core.stage import stage_main

if __name__ == "__main__":
    exit_process(stage_main("caption", run))
