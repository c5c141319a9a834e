"""DVC stage 'report' (see dvc.yaml): the same runner as `vlp report`."""

import sys

from pipeline.core.stage import stage_main
from pipeline.report.stage import run

if __name__ == "__main__":
    sys.exit(stage_main("report", run))
