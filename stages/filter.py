"""DVC stage 'filter' (see dvc.yaml): the same runner as `vlp filter`."""

import sys

from pipeline.core.stage import stage_main
from pipeline.curate.filter.stage import run

if __name__ == "__main__":
    sys.exit(stage_main("filter", run))
