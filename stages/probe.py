"""DVC stage 'probe' (see dvc.yaml): the same runner as `vlp probe`."""

import sys

from pipeline.core.stage import stage_main
from pipeline.curate.probe.stage import run_probe

if __name__ == "__main__":
    sys.exit(stage_main("probe", run_probe))
