"""DVC stage 'train' (see dvc.yaml): the same runner as `vlp train`."""

import sys

from pipeline.core.stage import stage_main
from pipeline.train.stage import run

if __name__ == "__main__":
    sys.exit(stage_main("train", run))
