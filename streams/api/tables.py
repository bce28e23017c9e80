"""What the render API process knows of its worker: the routing file and the tables.

`RoutingView` follows the worker's routing file (streams.api.routing),
re-reading it when its modification time changes (checked at most every
`recheck` seconds); a file older than STALE_AFTER_SECONDS reads as a silent
worker: not ready, no active partition. `SecondaryTables` reads the
worker's RocksDB state databases as RocksDB *secondary instances*:
read-only opens of the live database that see the worker's writes after
`try_catch_up_with_primary` (which reads its MANIFEST and write-ahead log:
~1 ms, so it runs at most every `max_staleness` seconds per partition, or
on demand for a claim).
Only partitions the routing file lists as active here are opened; all are
closed and reopened when the group generation changes, so a database that
moved away (or was rebuilt by recovery) is never read from an old handle.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from rocksdict import AccessType, Rdict

from streams import rocksdb_memory
from streams.api.routing import STALE_AFTER_SECONDS

log = logging.getLogger("taskstream.api")

Clock = Callable[[], float]


@dataclass(frozen=True)
class Routing:
    """One snapshot of the routing file."""

    worker: str = ""
    generation: int = 0
    ready: bool = False
    owners: dict[int, str] = field(default_factory=dict)
    active: dict[int, Path] = field(default_factory=dict)
    # This worker's partitions of the allocator table (the pools' masters).
    allocator: dict[int, Path] = field(default_factory=dict)
    # > 0: the worker has not touched the file for this long (stopped,
    # blocked or gone); then `ready` is False and `active` empty.
    silent_for: float = 0.0

    @classmethod
    def parse(cls, raw: bytes) -> Routing:
        doc: Any = orjson.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("the routing file is not a JSON object")
        return cls(
            worker=str(doc.get("worker", "")),
            generation=int(doc.get("generation", 0)),
            ready=bool(doc.get("ready", False)),
            owners={int(p): str(url) for p, url in dict(doc.get("owners", {})).items()},
            active={int(p): Path(path) for p, path in dict(doc.get("active", {})).items()},
            allocator={int(p): Path(path) for p, path in dict(doc.get("allocator", {})).items()},
        )


class RoutingView:
    """The latest routing snapshot the worker wrote."""

    def __init__(
        self,
        path: Path,
        recheck: float = 0.1,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        stale_after: float = STALE_AFTER_SECONDS,
    ) -> None:
        self.path = path
        self._recheck = recheck
        self._clock = clock
        self._wall = wall  # file times are wall-clock times
        self._stale_after = stale_after
        self._checked_at: float | None = None
        self._mtime: int | None = None
        self._routing = Routing()  # as the worker wrote it
        self._current = self._routing  # what the API acts on (silent: not ready)

    def current(self) -> Routing:
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self._recheck:
            return self._current
        self._checked_at = now
        try:
            mtime = self.path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._routing = Routing.parse(self.path.read_bytes())
                self._mtime = mtime
        except FileNotFoundError:
            self._routing, self._mtime = Routing(), None
        except (OSError, ValueError, TypeError) as exc:
            # Written atomically, so this is a foreign file: keep the last good one.
            log.warning("routing file %s unreadable: %s", self.path, exc)
        was_silent = self._current.silent_for > 0
        self._current = self._routing
        if self._mtime is not None and self._routing.worker:
            age = self._wall() - self._mtime / 1e9
            if age > self._stale_after:
                self._current = replace(
                    self._routing, ready=False, active={}, allocator={}, silent_for=age
                )
        if self._current.silent_for > 0 and not was_silent:
            log.warning(
                "worker %s silent for %.1f s (stopped or blocked): serving none of its partitions",
                self._routing.worker,
                self._current.silent_for,
            )
        elif was_silent and not self._current.silent_for:
            log.info("worker %s heard from again", self._routing.worker)
        return self._current


def state_paths(routing: Routing) -> dict[int, Path]:
    return routing.active


def allocator_paths(routing: Routing) -> dict[int, Path]:
    return routing.allocator


class SecondaryTables:
    """Read-only views of one of the worker's per-partition tables (by default
    the state table; `paths` picks another from the routing file)."""

    def __init__(
        self,
        scratch: Path,
        max_staleness: float = 0.1,
        clock: Clock = time.monotonic,
        paths: Callable[[Routing], dict[int, Path]] = state_paths,
        budget: rocksdb_memory.MemoryBudget | None = None,
    ) -> None:
        self._paths = paths
        # Every view of the process in one RocksDB memory budget (the API
        # process's, `serve`); one of its own when none is given.
        self.budget = budget or rocksdb_memory.MemoryBudget(
            rocksdb_memory.DEFAULT_MEMORY_MIB * rocksdb_memory.MIB
        )
        # A secondary instance keeps its own info log here (nothing else).
        self._scratch = scratch
        shutil.rmtree(scratch, ignore_errors=True)
        self._max_staleness = max_staleness
        self._clock = clock
        self._generation: int | None = None
        self._open: dict[int, tuple[Path, Rdict]] = {}
        self._caught_up_at: dict[int, float] = {}

    def get(
        self, routing: Routing, partition: int, key: bytes, fresh: bool = False
    ) -> bytes | None:
        """The value of `key` in an active partition of this worker (None: absent).

        `fresh`: catch up with the worker first even if it did recently.
        Raises KeyError when the partition is not active here."""
        db = self._caught_up(routing, partition, fresh)
        try:
            value = db.get(key)
        except Exception:
            self._close_one(partition)
            raise
        return None if value is None else bytes(value)

    def scan(
        self, routing: Routing, partition: int, prefix: bytes, fresh: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """Every key starting with `prefix` in an active partition, with its value."""
        db = self._caught_up(routing, partition, fresh)
        found = []
        try:
            for key, value in db.items(from_key=prefix):
                if not isinstance(key, bytes) or not key.startswith(prefix):
                    break
                if not isinstance(value, bytes):
                    raise TypeError(f"{key!r}: not a raw bytes value (not a worker's table?)")
                found.append((key, value))
        except Exception:
            self._close_one(partition)
            raise
        return found

    def _caught_up(self, routing: Routing, partition: int, fresh: bool) -> Rdict:
        db = self._db(routing, partition)
        now = self._clock()
        last = self._caught_up_at.get(partition)
        try:
            if fresh or last is None or now - last >= self._max_staleness:
                db.try_catch_up_with_primary()
                self._caught_up_at[partition] = now
        except Exception:
            # An I/O error (say a file the worker compacted away between two
            # catch-ups): drop the handle, the next read opens it afresh.
            self._close_one(partition)
            raise
        return db

    def _close_one(self, partition: int) -> None:
        opened = self._open.pop(partition, None)
        self._caught_up_at.pop(partition, None)
        if opened is not None:
            opened[1].close()

    def close(self) -> None:
        for _, db in self._open.values():
            db.close()
        self._open.clear()
        self._caught_up_at.clear()

    def _db(self, routing: Routing, partition: int) -> Rdict:
        if routing.generation != self._generation:
            self.close()  # a rebalance: partitions may have moved or been rebuilt
            self._generation = routing.generation
        path = self._paths(routing).get(partition)
        if path is None:
            raise KeyError(partition)
        opened = self._open.get(partition)
        if opened is not None and opened[0] == path:
            return opened[1]
        if opened is not None:
            opened[1].close()
        # In the process's RocksDB memory budget, like the worker's own (one
        # cache for every partition read here); raw bytes keys and values.
        options = self.budget.options(
            rocksdb_memory.SECONDARY_WRITE_BUFFER, max_write_buffer_number=2
        )
        options.set_max_open_files(-1)  # RocksDB's advice for secondary instances
        secondary = self._scratch / f"{path.name}-{partition}"
        secondary.mkdir(parents=True, exist_ok=True)
        db = Rdict(str(path), options, access_type=AccessType.secondary(str(secondary)))
        self._open[partition] = (path, db)
        self._caught_up_at[partition] = self._clock()  # opening reads the latest state
        return db
