"""The worker's metrics are an object (streams.monitor.metrics.WorkerMetrics),
not module state: two workers in one process (or two tests) share nothing."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from streams.config import Settings
from streams.monitor.metrics import WorkerMetrics, counter_total
from streams.partition_state import PartitionRecord
from streams.processor import BatchStats

SETTINGS = Settings.from_env({})


def _metrics() -> WorkerMetrics:
    app = SimpleNamespace(rebalancing=False, in_recovery=False, consumer_generation_id=1)
    return WorkerMetrics(app, SETTINGS, (), catalog_ready=lambda: True)


def _batch(partition: int, accepted: int) -> SimpleNamespace:
    stats = BatchStats()
    stats.accepted = accepted
    return SimpleNamespace(record=PartitionRecord(partition), stats=stats)


def test_two_workers_metrics_share_no_counter_and_no_record() -> None:
    first, second = _metrics(), _metrics()
    assert first.registry is not second.registry
    first.observe_batch(3, _batch(3, accepted=7), 0.01)  # type: ignore[arg-type]
    assert counter_total(first.input_messages, outcome="accepted") == 7
    assert counter_total(second.input_messages, outcome="accepted") == 0
    assert set(first.records) == {3}
    assert second.records == {}


def test_a_revoke_drops_the_partitions_records_and_masters() -> None:
    metrics = _metrics()
    metrics.observe_batch(3, _batch(3, accepted=1), 0.01)  # type: ignore[arg-type]
    metrics.observe_batch(4, _batch(4, accepted=1), 0.01)  # type: ignore[arg-type]
    metrics.masters[3] = {}
    metrics.forget([TP(SETTINGS.topic("orders"), 3), TP(SETTINGS.topic("budget-requests"), 3)])
    assert set(metrics.records) == {4}
    assert metrics.masters == {}
