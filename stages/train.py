"""DVC stage 'train' (see dvc.yaml): the same runner as `vlp train`."""

from pipeline.core.exit import exit_process
from pipeline.core.stage import stage_main
from pipeline.train.stage import run

if __name__ == "__main__":
    exit_process(stage_main("train", run))
