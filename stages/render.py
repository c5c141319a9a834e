"""DVC stage 'render' (see dvc.yaml): the same runner as `vlp render`."""

import sys

from pipeline.core.stage import stage_main
from pipeline.render.stage import run

if __name__ == "__main__":
    sys.exit(stage_main("render", run))
