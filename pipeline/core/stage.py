"""Running a stage: what ``stages/<stage>.py`` (DVC) and ``vlp <stage>`` share.

A stage runner is ``run(params, layout)``: ``params`` the whole params file (a runner
reads its own groups), ``layout`` where its tables live; what it returns (mostly a dict of counts)
is for its ``vlp`` command, the DVC stage ignores it. :func:`stage_main` runs one as a DVC
stage: logging set up, ``params.yaml`` read, a bad params value or a missing input table is one
line on stderr and a non-zero exit, never a traceback (``VLP_LOG=DEBUG`` shows it).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pipeline.core.config import ParamsError
from pipeline.core.errors import one_line
from pipeline.core.layout import Layout
from pipeline.core.logs import setup_logging
from pipeline.core.params import load_params

Runner = Callable[[dict, Layout], object]  # the return value is not used here
EXIT_USAGE = 2  # a params error, as argparse exits for a bad argument
EXIT_FAILURE = 1


def stage_main(name: str, run: Runner, params_path: str = "params.yaml", data: str = "data") -> int:
    """Run stage ``name``'s runner as DVC runs it; the process exit code."""
    try:
        setup_logging()
    except ValueError as e:  # VLP_LOG names no level
        print(f"{name}: {e}", file=sys.stderr)
        return EXIT_USAGE
    log = logging.getLogger(name)
    try:
        run(load_params(None, params_path), Layout.of(data))
    except ParamsError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        log.debug("traceback", exc_info=True)
        print(f"{name}: {one_line(e, with_type=not isinstance(e, (FileNotFoundError, ValueError)))}", file=sys.stderr)
        return EXIT_FAILURE
    return 0
