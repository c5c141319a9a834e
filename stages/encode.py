"""DVC stage 'encode' (see dvc.yaml): the same runner as `vlp encode`."""

import sys

from pipeline.core.stage import stage_main
from pipeline.encode.stage import run

if __name__ == "__main__":
    sys.exit(stage_main("encode", run))
