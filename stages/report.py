"""DVC stage 'report' (see dvc.yaml): the same runner as `vlp report`."""

from pipeline.core.exit import exit_process
from pipeline.core.stage import stage_main
from pipeline.report.stage import run

if __name__ == "__main__":
    exit_process(stage_main("report", run))
