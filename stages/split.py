"""DVC stage 'split' (see dvc.yaml): the same runner as `vlp split`."""

from pipeline.core.exit import exit_process
from pipeline.core.stage import stage_main
from pipeline.curate.split.stage import run

if __name__ == "__main__":
    exit_process(stage_main("split", run))
