"""streams.worker.state_store on a real RocksDB (faust's FencedStore), with a
producer that records what it is given: the changelog records carry the
writer's epoch and come in the batch's order, the local copy gets the whole
batch, and acknowledgements advance the recovery point once per batch or
distrust the copy on a gap."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from streams.fenced_store import DISTRUSTED_KEY, FencedStore, FencedTable
from streams.fencing import EPOCH_HEADER
from streams.kafka.producer import Delivered, producer_config
from streams.rocksdb_memory import MIB, MemoryBudget
from streams.worker.state_store import PartitionStateStore


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None, Any]] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        self.sent.append((topic, key, value, partition, headers))

    def send_all(self, records: Iterable[tuple[str, Any, Any, Any]], headers: Any = None) -> None:
        for topic, key, value, partition in records:
            self.send(topic, key, value, partition, headers)


@pytest.fixture
def table(tmp_path: Path) -> Iterator[Any]:
    app = faust.App("store-test", datadir=str(tmp_path), Table=FencedTable, store="memory://")
    app.rocksdb_budget = MemoryBudget(8 * MIB)  # type: ignore[attr-defined]
    made = app.Table("state", key_type=bytes, value_type=bytes, partitions=4)
    store = FencedStore("rocksdb://", app, made, options={"driver": "rocksdict"})
    store.range_reader = None
    made._data = store  # the table's store, as faust would have opened it
    app.consumer_generation_id = 3
    yield made
    for db in store._dbs.values():
        db.close()


def test_a_batch_goes_to_the_changelog_in_order_with_the_epoch_and_to_rocksdb_at_once(
    table: Any,
) -> None:
    producer = RecordingProducer()
    store = PartitionStateStore(table, producer)  # type: ignore[arg-type]
    store.write(2, [(b"r:2", b"redo"), (b"u:a", b"A"), (b"u:b", None), (b"p:2", b"rec")])
    assert [(key, value, partition) for _, key, value, partition, _ in producer.sent] == [
        (b"r:2", b"redo", 2),
        (b"u:a", b"A", 2),
        (b"u:b", None, 2),
        (b"p:2", b"rec", 2),
    ]
    assert {topic for topic, *_ in producer.sent} == {"store-test-state-changelog"}
    assert all(headers == [(EPOCH_HEADER, b"3")] for *_, headers in producer.sent)
    assert store.get(2, b"u:a") == b"A"
    assert store.get(2, b"u:b") is None
    assert store.get(1, b"u:a") is None  # another partition's database
    store.write(2, [(b"u:c", b"C")])
    assert list(store.items_from(2, b"u:")) == [(b"u:a", b"A"), (b"u:c", b"C")]


def test_acknowledgements_advance_the_recovery_point_once_per_batch(table: Any) -> None:
    store = PartitionStateStore(table, RecordingProducer())  # type: ignore[arg-type]
    store.write(1, [(b"u:a", b"A")])  # opens the partition's database
    changelog = store.changelog
    store.acknowledge(
        [Delivered(changelog, 1, o) for o in (10, 11, 12)] + [Delivered("outputs", 1, 99)]
    )
    fenced: FencedStore = table.data
    assert fenced.persisted_offset(TP(changelog, 1)) == 12
    store.acknowledge([Delivered(changelog, 1, 13), Delivered(changelog, 1, 17)])  # 14-16: not ours
    assert fenced.persisted_offset(TP(changelog, 1)) == 13  # never past a write it lacks
    assert fenced._db_for_partition(1).get(DISTRUSTED_KEY) == b"1"
    assert fenced.gaps == 1


def test_contiguous_acknowledgements_take_the_short_way_with_the_same_result(table: Any) -> None:
    """A batch of acknowledgements that follow on from the last (the usual
    case) advances in one step; anything else still goes offset by offset."""
    store = PartitionStateStore(table, RecordingProducer())  # type: ignore[arg-type]
    store.write(3, [(b"u:a", b"A")])
    changelog, fenced = store.changelog, table.data
    tp = TP(changelog, 3)
    store.acknowledge([Delivered(changelog, 3, 40)])  # the first: compared with the database
    store.acknowledge([Delivered(changelog, 3, o) for o in range(41, 1041)])
    assert fenced.persisted_offset(tp) == 1040
    store.acknowledge([Delivered(changelog, 3, o) for o in (1039, 1040)])  # read back: covered
    assert fenced.persisted_offset(tp) == 1040
    assert fenced.gaps == 0
    # Starts where expected and has the right length, but skips one: a gap.
    store.acknowledge([Delivered(changelog, 3, o) for o in (1041, 1042, 1044)])
    assert fenced.persisted_offset(tp) == 1042
    assert fenced.gaps == 1


def test_outputs_are_partitioned_as_kafkas_own_clients_do() -> None:
    """librdkafka's default partitioner (CRC32) would put a user's outputs
    where readers using Kafka's murmur2 (Java clients, aiokafka, ours) do not look."""
    config = producer_config({"bootstrap.servers": "x:1"}, 1024)
    assert config["partitioner"] == "murmur2_random"
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is True
