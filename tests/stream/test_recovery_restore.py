"""streams.kafka.recovery.Recovery.restore on a real RocksDB, without a
broker: a changelog partition's fetches applied whole, with faust's rules
for what was already seen, the buffer size, the fencing of a zombie's late
write, and the end of the recovery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from streams.fenced_store import FencedStore, FencedTable
from streams.fencing import EPOCH_HEADER
from streams.kafka import recovery, transport
from streams.rocksdb_memory import MIB, MemoryBudget

CHANGELOG = TP("restore-test-t-changelog", 1)
OTHER = TP("restore-test-t-changelog", 0)


class _Record:
    """What aiokafka's fetch hands over (ConsumerRecord's fields we read)."""

    def __init__(self, offset: int, key: bytes, value: bytes | None, epoch: int = 1) -> None:
        self.offset, self.key, self.value = offset, key, value
        self.headers = [(EPOCH_HEADER, str(epoch).encode())]


@pytest.fixture
def app(tmp_path: Path) -> faust.App:
    return transport.BatchApp(
        "restore-test",
        broker=f"{transport.register()}://127.0.0.1:1",
        datadir=str(tmp_path),
        TableManager="streams.kafka.recovery:TableManager",
        Table=FencedTable,
        store="memory://",
    )


@pytest.fixture
def store(app: faust.App) -> Iterator[FencedStore]:
    table = app.Table("t", key_type=bytes, value_type=bytes, partitions=2)
    app.rocksdb_budget = MemoryBudget(8 * MIB)  # type: ignore[attr-defined]
    made = FencedStore("rocksdb://", app, table, options={"driver": "rocksdict"})
    made.range_reader = None
    table._data = made
    yield made
    for db in made._dbs.values():
        db.close()


def _recovering(app: faust.App, store: FencedStore, seen: int | None, highwater: int) -> Any:
    """The app's recovery mid-way through CHANGELOG (and OTHER, caught up)."""
    rec = app.tables.recovery
    assert isinstance(rec, recovery.Recovery)
    table = store.table
    rec.tp_to_table.update({CHANGELOG: table, OTHER: table})
    rec.active_tps = {CHANGELOG, OTHER}
    rec.active_offsets.update({CHANGELOG: seen, OTHER: 5})
    rec.active_highwaters.update({CHANGELOG: highwater, OTHER: 5})
    rec._set_recovery_started()
    return rec


def _value(store: FencedStore, key: bytes) -> bytes | None:
    raw = store._db_for_partition(CHANGELOG.partition).get(key)
    return None if raw is None else bytes(raw)


def test_fetches_are_applied_past_what_was_seen_and_the_end_is_signalled(
    app: faust.App, store: FencedStore
) -> None:
    rec = _recovering(app, store, seen=1, highwater=7)
    table = store.table
    table.recovery_buffer_size = 3
    assert rec.takes(CHANGELOG)
    first = [_Record(0, b"u:a", b"a0"), _Record(1, b"u:b", b"b1"), _Record(2, b"u:a", b"a2")]
    assert rec.restore(CHANGELOG, first) == 1  # offsets 0 and 1 were seen
    assert rec.active_offsets[CHANGELOG] == 2
    assert _value(store, b"u:a") is None  # buffered: 1 of 3
    second = [_Record(3, b"u:c", b"c3"), _Record(4, b"u:b", None)]  # a delete
    assert rec.restore(CHANGELOG, second) == 2
    assert (_value(store, b"u:a"), _value(store, b"u:c")) == (b"a2", b"c3")  # 3 of 3: applied
    third = [
        _Record(5, b"u:a", b"a5 by a zombie", epoch=0),  # older epoch, after newer writes
        _Record(6, b"u:d", b"d6"),
    ]
    assert rec.restore(CHANGELOG, third) == 2
    assert _value(store, b"u:d") is None  # buffered: 2 of 3
    assert (rec.in_recovery, app.in_recovery, rec.signal_recovery_end.is_set()) == (
        True,
        True,
        False,
    )
    assert rec.restore(CHANGELOG, [_Record(7, b"u:e", b"e7")]) == 1
    # Nothing left anywhere: the rest applied, the recovery over, as faust ends it.
    assert (rec.in_recovery, app.in_recovery, rec.signal_recovery_end.is_set()) == (
        False,
        False,
        True,
    )
    assert [_value(store, k) for k in (b"u:a", b"u:b", b"u:c", b"u:d", b"u:e")] == [
        b"a2",
        None,
        b"c3",
        b"d6",
        b"e7",
    ]
    assert store.skipped_writes == 1
    assert store.persisted_offset(CHANGELOG) == 7
    assert not rec.buffers[table]


def test_a_fetch_of_nothing_new_changes_nothing(app: faust.App, store: FencedStore) -> None:
    rec = _recovering(app, store, seen=4, highwater=9)
    assert rec.restore(CHANGELOG, [_Record(3, b"u:a", b"a3"), _Record(4, b"u:a", b"a4")]) == 0
    assert rec.active_offsets[CHANGELOG] == 4
    assert not rec.buffers[store.table]
    assert rec.in_recovery


def test_standbys_and_tables_with_a_changelog_callback_go_fausts_way(
    app: faust.App, store: FencedStore
) -> None:
    rec = _recovering(app, store, seen=None, highwater=3)
    assert rec.takes(CHANGELOG)
    assert not rec.takes(TP("restore-test-t-changelog", 9))  # not an active partition here

    async def callback(event: Any) -> None:
        return None

    store.table._on_changelog_event = callback
    assert not rec.takes(CHANGELOG)


def test_a_recovery_starting_soon_after_the_last_one_waits_for_its_own_end(
    app: faust.App, store: FencedStore
) -> None:
    """`restore` signals the end of a recovery outside faust's changelog loop,
    which clears that signal only when it next wakes (every 5 s when no
    record comes its way). A recovery started before then must not find the
    last one's signal still set: it would be done at once, reading nothing."""
    rec = _recovering(app, store, seen=1, highwater=2)
    rec.restore(CHANGELOG, [_Record(2, b"u:a", b"a2")])
    assert rec.signal_recovery_end.is_set()  # the first recovery is over
    assert not rec.in_recovery
    # The next assignment needs CHANGELOG up to offset 9: a new recovery.
    rec.active_highwaters[CHANGELOG] = 9
    assert rec.need_recovery()
    rec._set_recovery_started()
    assert not rec.signal_recovery_end.is_set()  # waits for its own end
    rec.restore(CHANGELOG, [_Record(o, b"u:a", b"a%d" % o) for o in range(3, 10)])
    assert rec.signal_recovery_end.is_set()
    assert _value(store, b"u:a") == b"a9"
