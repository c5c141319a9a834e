"""DVC stage 'filter' (see dvc.yaml): the same runner as `vlp filter`."""

from pipeline.core.exit import exit_process
from pipeline.core.stage import stage_main
from pipeline.curate.filter.stage import run

if __name__ == "__main__":
    exit_process(stage_main("filter", run))
