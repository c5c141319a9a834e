"""DVC stage 'render' (see dvc.yaml): the same runner as `vlp render`."""

from pipeline.core.exit import exit_process
from pipeline.core.stage import stage_main
from pipeline.render.stage import run

if __name__ == "__main__":
    exit_process(stage_main("render", run))
