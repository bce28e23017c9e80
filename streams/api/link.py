"""The worker keeps its render API process informed and running (streams.api.routing).

Imported by `taskstream worker`. A 0.25 s timer writes the routing file when
the assignment or readiness changed: a few dict operations on the worker's
loop, against the API's whole request handling before.
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
    store: Any = state.data
    active = {
        str(partition): str(store.partition_path(partition))
        for partition in range(settings.partitions)
        if TP(changelog, partition) in actives and hasattr(store, "partition_path")
    }
    allocator_changelog = allocator_table.changelog_topic.get_topic_name()
    allocator_store: Any = allocator_table.data
    allocator = {
        str(partition): str(allocator_store.partition_path(partition))
        for partition in range(settings.partitions)
        if TP(allocator_changelog, partition) in actives
        and hasattr(allocator_store, "partition_path")
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
