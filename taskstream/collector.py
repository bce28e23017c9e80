"""Python's cyclic garbage collector, tuned for a long-running worker.

A worker keeps hundreds of thousands of long-lived objects (the decoded users
of its partitions) and allocates a few dozen short-lived ones per event. With
Python's default thresholds (700, 10, 10) the collector runs a young pass
every 700 allocations and, as survivors pile up, full passes over every
long-lived object: ~20 % of the batch step's CPU (BENCHMARKS "batchcore").
The fold's garbage holds no reference cycles, so reference counting frees it
at once whatever the collector does; a larger young threshold only makes the
passes rarer. Objects alive once start-up is done (modules, the catalog,
faust's services) are moved out of the collector's sight with `gc.freeze()`,
as long-running CPython services commonly do.

This is process-wide, so only the command's entry points call it, never an
import.
"""

from __future__ import annotations

import gc

_PYTHON_DEFAULT = 700


def tune_collector(threshold: int) -> str:
    """Apply TASKSTREAM_GC_THRESHOLD (0: Python's default) and freeze what is
    alive now; return the line the worker logs about it."""
    _, older, oldest = gc.get_threshold()
    young = threshold or _PYTHON_DEFAULT
    gc.set_threshold(young, older, oldest)
    gc.collect()
    gc.freeze()
    return (
        f"garbage collector: a young pass every {young:,} allocations "
        f"(TASKSTREAM_GC_THRESHOLD), {gc.get_freeze_count():,} start-up objects frozen"
    )
