"""DVC stage 'probe' (see dvc.yaml): the same runner as `vlp probe`."""

from pipeline.core.exit import exit_process
from pipeline.core.stage import stage_main
from pipeline.curate.probe.stage import run_probe

if __name__ == "__main__":
    exit_process(stage_main("probe", run_probe))
