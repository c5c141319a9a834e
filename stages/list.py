"""DVC stage 'list' (see dvc.yaml): the listing `vlp probe` also makes before it probes."""

import sys

from pipeline.core.stage import stage_main
from pipeline.curate.probe.stage import run_list

if __name__ == "__main__":
    sys.exit(stage_main("list", run_list))
