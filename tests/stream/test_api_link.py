"""The worker's routing snapshot for its render API process (streams.api.link)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from streams.api.link import StorePaths


class _RocksStore:
    def __init__(self) -> None:
        self.asked = 0

    def partition_path(self, partition: int) -> Path:
        self.asked += 1
        return Path(f"/data/v1/tables/state-{partition}.db")


def test_a_partition_path_is_asked_of_faust_once() -> None:
    """faust's `partition_path` reads settings through several layers; the
    0.25 s routing timer asked it 16 times a round (a quarter of an idle
    worker's main thread)."""
    store = _RocksStore()
    table = SimpleNamespace(name="state", data=store)
    paths = StorePaths()
    assert paths.known(table)
    assert paths.of(table, 3) == "/data/v1/tables/state-3.db"
    assert paths.of(table, 3) == "/data/v1/tables/state-3.db"
    assert paths.of(table, 4) == "/data/v1/tables/state-4.db"
    assert store.asked == 2
    other = SimpleNamespace(name="allocator", data=_RocksStore())
    assert paths.of(other, 3) == "/data/v1/tables/state-3.db"  # its own entry
    assert other.data.asked == 1


def test_a_store_without_databases_has_no_paths() -> None:
    assert not StorePaths.known(SimpleNamespace(name="state", data=object()))  # memory://
