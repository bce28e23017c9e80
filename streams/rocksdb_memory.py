"""One memory budget for every RocksDB database of a process.

faust opens one RocksDB database per table partition (8 partitions x 2
tables = 16 in a worker) and gives each its own block cache and its own
memtables. Whatever the sizes, the worker's memory then grows with the
number of databases, and each database fills its own cache before it
evicts anything: with faust's defaults (2 GiB cache and three 64 MiB
memtables per database) the worker's RSS climbed ~1.3 MiB/s for minutes
of live load, and with per-database 32 MiB caches still ~0.2 MiB/s after
10 minutes (BENCHMARKS "soak").

Here, as Kafka Streams' `BoundedMemoryRocksDBConfig` does, every database
of the process shares one `MemoryBudget` (the app's, `WorkerApp.rocksdb_budget`,
built from the settings with the app; the render API process builds its
own for its read-only views):

- one LRU block cache of `TASKSTREAM_ROCKSDB_MEMORY_MB` (default 64 MiB);
- one write-buffer manager that charges the memtables to that same cache
  (so the cache's usage is data blocks + memtables) and flushes the largest
  memtable once they together reach half the budget;
- index and filter blocks kept in the cache too (level 0's pinned there),
  instead of in table readers nothing bounds.

So the RocksDB part of a worker's memory is the budget plus small
per-database overheads, whatever its partition count. The budget's usage
is exported as `taskstream_rocksdb_memory_bytes` (streams.monitor.metrics).

`BoundedStore` is faust's RocksDB store with these options
(streams.fenced_store builds the worker's store on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions, Store

MIB = 1024**2
DEFAULT_MEMORY_MIB = 64
# Memtables may take this share of the budget before the largest is flushed.
MEMTABLE_SHARE = 0.5
# A secondary instance (the render API's) replays the primary's WAL into
# memtables of its own; it never flushes them, so they stay small.
SECONDARY_WRITE_BUFFER = 4 * MIB


@dataclass(frozen=True)
class MemoryUsage:
    """What the shared budget holds now, in bytes."""

    limit: int
    cache: int  # everything charged to the cache: data, index and filter blocks, memtables
    pinned: int  # the part in use by readers (cannot be evicted now)
    memtables: int  # the write-buffer manager's count, included in `cache`


class MemoryBudget:
    """The shared cache and write-buffer manager of one process."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 2 * MIB:
            raise ValueError(f"a RocksDB memory budget of {limit_bytes} bytes is too small")
        self.limit = limit_bytes
        self.cache = rocksdict.Cache(limit_bytes)
        # allow_stall False: writers are not stopped at the limit; RocksDB
        # flushes sooner instead (a stalled writer would stall the event loop).
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            int(limit_bytes * MEMTABLE_SHARE), False, self.cache
        )

    def usage(self) -> MemoryUsage:
        return MemoryUsage(
            limit=self.limit,
            cache=self.cache.get_usage(),
            pinned=self.cache.get_pinned_usage(),
            memtables=self.write_buffers.get_usage(),
        )

    def options(
        self, write_buffer_size: int, max_write_buffer_number: int, bloom_bits: int = 10
    ) -> rocksdict.Options:
        """Options of one database in this budget (raw keys and values)."""
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        # One memtable is never larger than an eighth of the memtables' share,
        # or a few databases' memtables would take it all before any flushed.
        options.set_write_buffer_size(min(write_buffer_size, int(self.limit * MEMTABLE_SHARE / 8)))
        options.set_max_write_buffer_number(max_write_buffer_number)
        options.set_write_buffer_manager(self.write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_bloom_filter(bloom_bits, True)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


def budget_of(app: Any) -> MemoryBudget:
    """The budget of the app whose tables open here (`WorkerApp.rocksdb_budget`,
    built from the settings with the app, streams/app.py)."""
    found = getattr(app, "rocksdb_budget", None)
    if not isinstance(found, MemoryBudget):
        raise RuntimeError(
            "the app has no RocksDB memory budget: set app.rocksdb_budget "
            "(streams.rocksdb_memory.MemoryBudget) before its tables open"
        )
    return found


class BoundedOptions(RocksDBOptions):
    """faust's options object, opening databases in one budget (`budget`)."""

    budget: MemoryBudget

    def as_options(self) -> rocksdict.Options:
        if not self.use_rocksdict:
            raise ValueError("the bounded RocksDB store needs the rocksdict driver")
        options = self.budget.options(
            self.write_buffer_size, self.max_write_buffer_number, self.bloom_filter_size
        )
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_target_file_size_base(self.target_file_size_base)
        return options


class BoundedStore(Store):
    """faust's RocksDB store (rocksdict driver) in its app's memory budget."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        given = self.rocksdb_options
        bounded = BoundedOptions(use_rocksdict=self.use_rocksdict, ttl=given.ttl)
        bounded.__dict__.update(given.__dict__)  # every size faust or the table set
        bounded.budget = budget_of(self.app)
        self.rocksdb_options = bounded
