"""DVC stage 'score' (see dvc.yaml): the same runner as `vlp score`."""

import sys

from pipeline.core.stage import stage_main
from pipeline.curate.score.stage import run

if __name__ == "__main__":
    sys.exit(stage_main("score", run))
