"""The worker's garbage-collector tuning (taskstream/collector.py) and its setting."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator

import pytest

from streams.config import Settings
from taskstream.collector import tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_the_threshold_is_applied_and_start_up_objects_are_frozen(
    restored_collector: None,
) -> None:
    _, older, oldest = gc.get_threshold()
    line = tune_collector(50_000)
    assert gc.get_threshold() == (50_000, older, oldest)
    assert "every 50,000 allocations" in line
    found = re.search(r"([\d,]+) start-up objects frozen", line)
    assert found is not None, line
    frozen_then = int(found.group(1).replace(",", ""))
    # Frozen objects freed since (another thread's, a finaliser's) leave the
    # count, so it can only have fallen since the line was written.
    assert frozen_then >= gc.get_freeze_count() > 1_000  # pytest's and our modules
    assert frozen_then - gc.get_freeze_count() < 1_000


def test_zero_means_pythons_own_threshold(restored_collector: None) -> None:
    tune_collector(0)
    assert gc.get_threshold()[0] == 700


def test_the_setting_reads_its_variable() -> None:
    assert Settings.from_env({}).gc_threshold == 50_000
    assert Settings.from_env({"TASKSTREAM_GC_THRESHOLD": "0"}).gc_threshold == 0
    assert Settings.from_env({"TASKSTREAM_GC_THRESHOLD": "120000"}).gc_threshold == 120_000
    with pytest.raises(ValueError, match="TASKSTREAM_GC_THRESHOLD"):
        Settings.from_env({"TASKSTREAM_GC_THRESHOLD": "-1"})


def test_cyclic_garbage_is_still_collected(restored_collector: None) -> None:
    """A larger threshold makes passes rarer, not absent."""
    tune_collector(1_000)

    import weakref

    class Node:
        def __init__(self) -> None:
            self.me = self

    refs = [weakref.ref(Node()) for _ in range(100)]
    # Live container allocations drive the young passes (one freed at once
    # gives its count back).
    kept = [[] for _ in range(5_000)]
    assert len(kept) == 5_000
    assert all(ref() is None for ref in refs)
