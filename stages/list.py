"""DVC stage 'list' (see dvc.yaml): the listing `vlp probe` also makes before it probes."""

from pipeline.core.exit import exit_process
from pipeline.core.stage import stage_main
from pipeline.curate.probe.stage import run_list

if __name__ == "__main__":
    exit_process(stage_main("list", run_list))
