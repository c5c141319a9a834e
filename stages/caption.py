"""DVC stage 'caption' (see dvc.yaml): the same runner as `vlp caption`."""

import sys

from pipeline.caption.stage import run
from pipeline.core.stage import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("caption", run))
