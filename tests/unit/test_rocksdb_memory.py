"""One RocksDB memory budget for all of a process's databases (streams.rocksdb_memory)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from types import SimpleNamespace

import faust.stores
import pytest
from rocksdict import Rdict

from streams import fenced_store
from streams.config import Settings
from streams.rocksdb_memory import MIB, BoundedOptions, BoundedStore, MemoryBudget, budget_of

VALUE = bytes(range(256)) * 2  # 512 bytes, not compressible to nothing


def _fill(budget: MemoryBudget, root: Path, databases: int, mib_each: int) -> list[Rdict]:
    dbs = []
    for n in range(databases):
        db = Rdict(str(root / f"db{n}"), budget.options(8 * MIB, 3))
        for i in range(mib_each * MIB // len(VALUE)):
            db[b"%d-%08d" % (n, i)] = VALUE
        dbs.append(db)
    return dbs


def _settle(db: Rdict) -> None:
    """Wait for the background flushes RocksDB has scheduled."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        db.property_int_value("rocksdb.num-running-flushes")
        or db.property_int_value("rocksdb.mem-table-flush-pending")
    ):
        time.sleep(0.05)


def test_many_databases_stay_in_one_budget(tmp_path: Path) -> None:
    budget = MemoryBudget(8 * MIB)
    dbs = _fill(budget, tmp_path, databases=6, mib_each=6)  # 36 MiB written
    try:
        for db in dbs:
            _settle(db)
        rng = random.Random(7)
        peak = 0
        for _ in range(20_000):  # reads pull data blocks into the cache
            n = rng.randrange(len(dbs))
            assert dbs[n][b"%d-%08d" % (n, rng.randrange(6 * MIB // len(VALUE)))] == VALUE
            peak = max(peak, budget.usage().cache)
        usage = budget.usage()
        # Memtables are charged to the cache and flushed at half the budget;
        # six private caches and 3 x 8 MiB memtables each would hold far more.
        assert 0 < usage.memtables <= 4 * MIB * 1.1
        assert peak <= 8 * MIB * 1.1
        # ... and the data blocks read are in that same cache (it filled up).
        assert usage.cache - usage.memtables > 4 * MIB
    finally:
        for db in dbs:
            db.close()


def test_memtables_are_capped_below_an_eighth_of_their_share(tmp_path: Path) -> None:
    budget = MemoryBudget(16 * MIB)
    db = Rdict(str(tmp_path / "db"), budget.options(64 * MIB, 3))
    try:
        for i in range(3 * MIB // len(VALUE)):
            db[b"%08d" % i] = VALUE
        # One memtable is at most 16 MiB * 0.5 / 8 = 1 MiB (not the 64 MiB
        # asked for), so 3 MiB written were flushed to level 0 at least twice.
        _settle(db)
        assert (db.property_int_value("rocksdb.num-files-at-level0") or 0) >= 2
    finally:
        db.close()


def test_rocksdb_urls_open_the_fenced_store_in_the_budget() -> None:
    fenced_store.install()
    store = faust.stores.by_url("rocksdb://")
    assert store is fenced_store.FencedStore
    assert issubclass(store, BoundedStore)


def test_bounded_options_keep_the_tables_sizes(tmp_path: Path) -> None:
    options = BoundedOptions(write_buffer_size=2 * MIB, max_write_buffer_number=2)
    options.budget = MemoryBudget(8 * MIB)
    db = Rdict(str(tmp_path / "db"), options.as_options())
    try:
        db[b"k"] = b"v"
        assert db[b"k"] == b"v"
        assert options.budget.usage().memtables > 0  # charged to that budget
    finally:
        db.close()


def test_a_store_opens_in_its_apps_budget_and_an_app_without_one_is_refused() -> None:
    small, large = MemoryBudget(8 * MIB), MemoryBudget(16 * MIB)
    assert budget_of(SimpleNamespace(rocksdb_budget=small)) is small
    assert budget_of(SimpleNamespace(rocksdb_budget=large)) is large
    with pytest.raises(RuntimeError, match="no RocksDB memory budget"):
        budget_of(SimpleNamespace())


def test_a_tiny_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        MemoryBudget(MIB)


def test_settings_read_the_budget() -> None:
    assert Settings.from_env({}).rocksdb_memory_mb == 64
    assert Settings.from_env({"TASKSTREAM_ROCKSDB_MEMORY_MB": "256"}).rocksdb_memory_mb == 256
    with pytest.raises(ValueError, match="TASKSTREAM_ROCKSDB_MEMORY_MB must be an integer >= 8"):
        Settings.from_env({"TASKSTREAM_ROCKSDB_MEMORY_MB": "4"})
