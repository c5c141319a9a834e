"""pipeline.core.logs: timestamped one-line records, VLP_LOG, and library noise kept out."""

import io
import logging
import re

import pytest
from tqdm import tqdm

from pipeline.core import logs


@pytest.fixture
def start(monkeypatch):
    """``start(VLP_LOG)``: setup_logging on a fresh stderr (returned); the root logger put back afterwards.
    (sys.stderr is patched in the test itself: pytest's capture sets it again between set-up and call.)"""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def start(env: str | None = None) -> io.StringIO:
        if env is None:
            monkeypatch.delenv("VLP_LOG", raising=False)
        else:
            monkeypatch.setenv("VLP_LOG", env)
        stream = io.StringIO()
        monkeypatch.setattr(logs.sys, "stderr", stream)
        logs.setup_logging()
        return stream

    yield start
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in logs.CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_a_record_is_one_timestamped_line(start):
    stderr = start()
    logging.getLogger("encode").info("encoding %d latents", 3)
    logging.getLogger("encode").debug("not at INFO")
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO encode: encoding 3 latents\n", stderr.getvalue()), stderr.getvalue()


def test_a_log_line_goes_above_a_progress_bar_not_into_it(start):
    stderr = start()
    with tqdm(total=3, desc="encode latents", file=stderr) as bar:
        bar.update(1)
        logging.getLogger("encode").info("in the middle")
    # tqdm.write clears the bar's line first: the record starts a line of its own
    assert re.search(r"(^|\r|\n)\d\d:\d\d:\d\d INFO encode: in the middle\n", stderr.getvalue()), stderr.getvalue()


@pytest.mark.parametrize("env, shown, hidden", [
    ("DEBUG", ["DEBUG"], []), ("debug", ["DEBUG"], []), ("warning", ["WARNING"], ["INFO"]), ("", ["INFO"], ["DEBUG"]),
])
def test_vlp_log_sets_the_level(start, env, shown, hidden):
    stderr = start(env)
    for level in ("DEBUG", "INFO", "WARNING"):
        logging.getLogger("train").log(logging.getLevelNamesMapping()[level], "x")
    for level in shown:
        assert f"{level} train: x" in stderr.getvalue()
    for level in hidden:
        assert f"{level} train: x" not in stderr.getvalue()


def test_an_unknown_vlp_log_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("VLP_LOG", "loud")
    with pytest.raises(ValueError, match=r"^VLP_LOG='LOUD': not a log level \(one of DEBUG, INFO, WARNING, ERROR\)$"):
        logs.log_level()
    assert logs.log_level("WARNING") == logging.WARNING  # an explicit level wins over VLP_LOG


def test_library_chatter_stays_out_even_when_imported_after_setup(start):
    stderr = start("DEBUG")
    import scenedetect  # noqa: F401 - its import sets the pyscenedetect logger back to INFO

    logging.getLogger("pyscenedetect").setLevel(logging.INFO)  # as that import does (once a process)
    logging.getLogger("pyscenedetect").info("Detecting scenes...")
    logging.getLogger("pyscenedetect").warning("a real problem")
    logging.getLogger("PIL.PngImagePlugin").debug("STREAM b'IHDR'")
    logging.getLogger("split").debug("ours")
    out = stderr.getvalue()
    assert "Detecting scenes" not in out and "STREAM" not in out
    assert "WARNING pyscenedetect: a real problem" in out and "DEBUG split: ours" in out
