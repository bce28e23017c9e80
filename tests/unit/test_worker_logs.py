"""The worker keeps the root logger at the level asked for (taskstream/worker_logs.py)."""

from __future__ import annotations

import io
import logging

import faust.worker
from faust.utils import terminal

from taskstream.worker_logs import Worker


def _set_up_root(cls: type[faust.worker.Worker], level: int) -> int:
    """What the class's root-logger hook leaves the logger's level at, with
    the spinner faust's __init__ would have made."""
    worker = cls.__new__(cls)
    worker.spinner = terminal.Spinner(file=io.StringIO())
    logger = logging.Logger("root-under-test", level)
    logger.addHandler(logging.StreamHandler(io.StringIO()))
    worker.on_setup_root_logger(logger, level)
    return logger.level


def test_faust_still_lowers_the_root_logger_to_debug_at_warning() -> None:
    # When a faust upgrade stops doing this, the subclass can go.
    assert _set_up_root(faust.worker.Worker, logging.WARNING) == logging.DEBUG


def test_our_worker_keeps_the_level_asked_for() -> None:
    for level in (logging.WARNING, logging.ERROR, logging.INFO):
        assert _set_up_root(Worker, level) == level
