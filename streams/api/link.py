"""The worker keeps its render API process informed and running (streams.api.routing).

Imported by `taskstream worker`. A 0.25 s timer writes the routing file when
the assignment or readiness changed: a few dict operations on the worker's
loop, against the API's whole request handling before. The databases' paths
are asked of faust once per partition: its `partition_path` reads settings
through several layers (~0.1 ms each), and 16 of them 4 times a second were
a quarter of an idle worker's main thread.
"""

from __future__ import annotations

import os
from typing import Any

from faust.types import TP

from streams.api.routing import RoutingWriter, not_ready, routing_path
from streams.app import allocator_table, app, settings, state


def worker_url() -> str:
    """This worker's advertised URL: its API process's (faust's canonical_url)."""
    return str(app.conf.canonical_url)


writer = RoutingWriter(routing_path(settings.data_dir))


class StorePaths:
    """Each table partition's database path, as faust's RocksDB store names
    it: fixed for the process (the data dir, the table, the partition)."""

    def __init__(self) -> None:
        self._paths: dict[tuple[str, int], str] = {}

    @staticmethod
    def known(table: Any) -> bool:
        return hasattr(table.data, "partition_path")  # a RocksDB store (not memory://)

    def of(self, table: Any, partition: int) -> str:
        key = (table.name, partition)
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = str(table.data.partition_path(partition))
        return path


paths = StorePaths()


def reset() -> None:
    """Before the worker joins: the API process answers 503 until the first snapshot."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    writer.update(not_ready(worker_url()))


def snapshot() -> dict[str, Any]:
    changelog = state.changelog_topic.get_topic_name()
    tables: Any = app.tables  # `recovery` is on TableManager, not on TableManagerT
    owners = {
        str(partition): str(url)
        for url, topics in app.assignor.tables_metadata().items()
        for partition in topics.get(changelog, ())
    }
    actives = app.assignor.assigned_actives()
    active = {
        str(partition): paths.of(state, partition)
        for partition in range(settings.partitions)
        if TP(changelog, partition) in actives and paths.known(state)
    }
    allocator_changelog = allocator_table.changelog_topic.get_topic_name()
    allocator = {
        str(partition): paths.of(allocator_table, partition)
        for partition in range(settings.partitions)
        if TP(allocator_changelog, partition) in actives and paths.known(allocator_table)
    }
    ready = (
        app.consumer_generation_id > 0
        and not app.rebalancing
        and not app.in_recovery
        and tables.recovery.completed.is_set()
    )
    return {
        "worker": worker_url(),
        "pid": os.getpid(),
        "generation": app.consumer_generation_id,
        "ready": bool(ready),
        "owners": owners,
        "active": active if ready else {},
        "allocator": allocator if ready else {},
    }


@app.timer(0.25)  # type: ignore[untyped-decorator]
async def publish_routing() -> None:
    writer.update(snapshot())
