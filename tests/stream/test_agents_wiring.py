"""The wiring in streams.agents: which object takes which topic's fetches,
and what runs the pools' allocator."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP

from streams.agents import _forget_revoked, allocate_budgets, allocator, close_all, worker
from streams.app import app, budget_requests, inputs_channel


def test_the_allocator_and_the_worker_take_their_topics_fetches() -> None:
    sink = app.batch_sink
    assert sink is not None
    assert sink.sink.sinks == (allocator, worker)  # type: ignore[attr-defined]
    assert sink.topics == allocator.topics | worker.topics
    assert budget_requests.get_topic_name() in sink.topics
    # Subscribed as an agent's topic would be: nothing else reads them.
    assert budget_requests in app.topics
    assert inputs_channel in app.topics


def test_the_allocators_loop_runs_as_an_app_task() -> None:
    assert allocate_budgets in app._app_tasks


def test_a_revoke_reaches_the_allocator() -> None:
    """Its partition caches go with the partitions (app.on_partitions_revoked)."""
    allocator.caches[3] = object()  # type: ignore[assignment]
    asyncio.run(_forget_revoked(app, {TP(allocator.topic, 3)}))
    assert 3 not in allocator.caches


def test_shutdown_closes_every_part_even_after_one_fails(caplog: Any) -> None:
    """A producer whose close raises must not leave the next one unflushed."""
    closed: list[str] = []

    def failing() -> None:
        closed.append("worker's producer")
        raise RuntimeError("flush failed")

    close_all(
        ("the allocator", lambda: closed.append("allocator")),
        ("the worker's producer", failing),
        ("the allocator's producer", lambda: closed.append("allocator's producer")),
    )
    assert closed == ["allocator", "worker's producer", "allocator's producer"]
    assert "closing the worker's producer failed" in caplog.text


def test_the_app_carries_the_rocksdb_memory_budget_its_settings_ask_for() -> None:
    from streams.app import settings
    from streams.rocksdb_memory import MIB, budget_of

    assert budget_of(app).limit == settings.rocksdb_memory_mb * MIB
