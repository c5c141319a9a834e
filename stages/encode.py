"""DVC stage 'encode' (see dvc.yaml): the same runner as `vlp encode`."""

from pipeline.core.exit import exit_process
from pipeline.core.stage import stage_main
from pipeline.encode.stage import run

if __name__ == "__main__":
    exit_process(stage_main("encode", run))
