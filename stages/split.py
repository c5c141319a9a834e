"""DVC stage 'split' (see dvc.yaml): the same runner as `vlp split`."""

import sys

from pipeline.core.stage import stage_main
from pipeline.curate.split.stage import run

if __name__ == "__main__":
    sys.exit(stage_main("split", run))
