"""streams.fenced_store on a real RocksDB, without a broker: the replay of
a changelog with a zombie's late writes, own acknowledgements with a gap,
the owner's rewrite of the keys written late (the changelog read is a
fake), and the rebuild of a distrusted copy at the next assignment."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP

from streams.changelog_reader import Written
from streams.fenced_store import DISTRUSTED_KEY, EPOCH_KEY, FencedStore, FencedTable
from streams.fencing import EPOCH_HEADER
from streams.rocksdb_memory import MIB, MemoryBudget

CHANGELOG = "fence-test-t-changelog"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FencedStore]:
    app = faust.App("fence-test", datadir=str(tmp_path), Table=FencedTable, store="memory://")
    app.rocksdb_budget = MemoryBudget(8 * MIB)  # type: ignore[attr-defined]
    table = app.Table("t", key_type=bytes, value_type=bytes, partitions=2)
    made = FencedStore("rocksdb://", app, table, options={"driver": "rocksdict"})
    made.range_reader = None  # no broker here; the repair tests give a fake
    yield made
    for db in made._dbs.values():
        db.close()


def _message(offset: int, key: bytes, value: bytes | None, epoch: int | None) -> Any:
    headers = [] if epoch is None else [(EPOCH_HEADER, str(epoch).encode())]
    return SimpleNamespace(
        message=SimpleNamespace(
            tp=TP(CHANGELOG, 1),
            partition=1,
            offset=offset,
            key=key,
            value=value,
            headers=headers,
        )
    )


def _replay(store: FencedStore, log: list[Any]) -> None:
    store.apply_changelog_batch(log, to_key=lambda k: k, to_value=lambda v: v)


def test_a_replay_skips_a_zombies_writes_after_a_newer_owners(store: FencedStore) -> None:
    _replay(
        store,
        [
            _message(0, b"u:a", b"a by 5", 5),
            _message(1, b"u:b", b"b by 5", 5),
            _message(2, b"u:a", b"a by 6", 6),  # the new owner
            _message(3, b"u:a", b"a by 5, late", 5),  # the frozen one's queued sends
            _message(4, b"u:c", b"c by 5, late", 5),
            _message(5, b"u:b", None, 6),
            _message(6, b"u:d", b"d, before fencing", None),
        ],
    )
    db = store._db_for_partition(1)
    assert db.get(b"u:a") == b"a by 6"
    assert db.get(b"u:b") is None
    assert db.get(b"u:c") is None
    assert db.get(b"u:d") == b"d, before fencing"
    assert db.get(EPOCH_KEY) == b"6"
    assert store.skipped_writes == 2
    assert store.persisted_offset(TP(CHANGELOG, 1)) == 6  # skipped ones are read too


def test_the_highest_epoch_survives_a_reopen(store: FencedStore) -> None:
    _replay(store, [_message(0, b"u:a", b"x", 9)])
    store._highest.clear()  # as after a restart
    _replay(store, [_message(1, b"u:a", b"late", 8)])
    assert store._db_for_partition(1).get(b"u:a") == b"x"


def test_own_writes_write_down_their_epoch(store: FencedStore) -> None:
    store.app.consumer_generation_id = 12
    _replay(store, [_message(0, b"u:a", b"x", 4)])
    assert store.epoch_for(1) == 12
    assert store._db_for_partition(1).get(EPOCH_KEY) == b"12"
    store._highest.clear()
    _replay(store, [_message(1, b"u:a", b"by 4, late", 4)])  # after our own writes
    assert store._db_for_partition(1).get(b"u:a") == b"x"


def test_contiguous_acknowledgements_advance_the_recorded_offset(store: FencedStore) -> None:
    tp = TP(CHANGELOG, 1)
    _replay(store, [_message(0, b"u:a", b"x", 1), _message(1, b"u:b", b"y", 1)])
    for offset in (2, 3, 4):
        store.set_persisted_offset(tp, offset)
    assert store.persisted_offset(tp) == 4
    assert store._db_for_partition(1).get(DISTRUSTED_KEY) is None


async def test_a_gap_distrusts_the_copy_and_the_next_assignment_rebuilds_it(
    store: FencedStore,
) -> None:
    tp = TP(CHANGELOG, 1)
    _replay(store, [_message(0, b"u:a", b"x", 5)])
    store.set_persisted_offset(tp, 1)  # own write right after
    store.set_persisted_offset(tp, 7)  # offsets 2-6: another worker's
    store.set_persisted_offset(tp, 8)
    db = store._db_for_partition(1)
    assert store.persisted_offset(tp) == 1  # this copy lacks 2-6: never past them
    assert db.get(DISTRUSTED_KEY) == b"1"
    assert store.gaps == 1

    store.app.consumer_generation_id = 7
    # Kept across the rebalance: faust's recovery remembers where it read to.
    store.app.tables.recovery.active_offsets[tp] = 0
    await store.on_rebalance({tp}, set(), set(), generation_id=7)
    db = store._db_for_partition(1)
    assert list(db.keys()) == []  # recovery reads the whole changelog
    assert store.rebuilds == 1
    assert store.persisted_offset(tp) is None
    assert tp not in store.app.tables.recovery.active_offsets  # ... from its start
    store.set_persisted_offset(tp, 0)  # and a fresh copy trusts its writes again
    assert store.persisted_offset(tp) == 0


async def test_a_trusted_copy_is_kept_at_a_rebalance(store: FencedStore) -> None:
    tp = TP(CHANGELOG, 1)
    _replay(store, [_message(0, b"u:a", b"x", 5)])
    await store.on_rebalance({tp}, set(), set(), generation_id=6)
    assert store._db_for_partition(1).get(b"u:a") == b"x"
    assert store.persisted_offset(tp) == 0


def _gap_after_own_writes(store: FencedStore) -> None:
    tp = TP(CHANGELOG, 1)
    _replay(store, [_message(0, b"u:a", b"a by 5", 5)])
    store.app.consumer_generation_id = 6
    store._db_for_partition(1)[b"u:a"] = b"a by 6, now"  # the agent's own write
    assert store.epoch_for(1) == 6
    store.set_persisted_offset(tp, 1)
    store.set_persisted_offset(tp, 5)  # 2-4: another worker's


async def test_the_owner_rewrites_what_an_earlier_owner_wrote_late(
    store: FencedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[tuple[str, int, int, int]] = []

    def reader(topic: str, partition: int, start: int, end: int) -> list[Written]:
        read.append((topic, partition, start, end))
        return [Written(2, b"u:a", 5), Written(3, b"u:gone", 5), Written(4, b"u:a", None)]

    sent: list[tuple[int | None, bytes, bytes | None]] = []
    monkeypatch.setattr(store, "range_reader", reader)
    monkeypatch.setattr(store, "_still_owns", lambda tp: True)
    monkeypatch.setattr(
        store.table,
        "send_changelog",
        lambda partition, key, value: sent.append((partition, key, value)),
    )
    _gap_after_own_writes(store)
    await asyncio.wait_for(asyncio.gather(*store._repairs), 5)
    assert read == [(CHANGELOG, 1, 2, 5)]
    # Our current values, last in the log again (compaction keeps the last):
    # a tombstone for a key this copy does not hold.
    assert sent == [(1, b"u:a", b"a by 6, now"), (1, b"u:gone", None)]
    assert store.rewritten_keys == 2


async def test_an_earlier_owner_does_not_rewrite_a_newer_owners_keys(
    store: FencedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bytes] = []
    monkeypatch.setattr(store, "range_reader", lambda *_: [Written(2, b"u:a", 7)])
    monkeypatch.setattr(store, "_still_owns", lambda tp: True)
    monkeypatch.setattr(store.table, "send_changelog", lambda p, key, v: sent.append(key))
    _gap_after_own_writes(store)  # this worker writes with epoch 6; the gap holds 7
    await asyncio.wait_for(asyncio.gather(*store._repairs), 5)
    assert sent == []
    assert store._db_for_partition(1).get(DISTRUSTED_KEY) == b"1"  # rebuilt when next assigned
