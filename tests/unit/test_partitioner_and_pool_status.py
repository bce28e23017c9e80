"""Kafka's partitioner in Python, and `pools status`'s reading of the changelogs."""

from __future__ import annotations

import pytest

from app.bucketing import Bucket, allocate, new_master
from schemas.records import RefillRequested
from streams.allocation import encode_master, master_key
from streams.kafka.partitioner import murmur2, partition_for
from streams.partition_state import (
    Output,
    PartitionRecord,
    Redo,
    encode_partition,
    encode_redo,
    partition_key,
    redo_key,
)
from taskstream.pools import _masters, _partition_records


@pytest.mark.parametrize(
    ("key", "expected"),
    [  # org.apache.kafka.common.utils.UtilsTest#testMurmur2
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_for_is_positive_modulo() -> None:
    assert {partition_for(f"u{n}".encode(), 8) for n in range(200)} == set(range(8))


def _record(partition: int, seq: int, issued: int) -> bytes:
    bucket = Bucket("cash", partition, received=1_000, issued=issued)
    return encode_partition(PartitionRecord(partition, seq, {}, {}, {}, {"cash": bucket}))


def test_status_prefers_a_newer_redo_record_to_the_stored_partition_record() -> None:
    cut_short = Redo(8, ((b"u:x", b"..."), (partition_key(1), _record(1, 8, 700))), ())
    older = Redo(3, ((partition_key(2), _record(2, 3, 100)),), (Output("rewards", b"x", b"{}"),))
    latest = {
        partition_key(1): _record(1, 7, 600),  # the crash hit before this was rewritten
        redo_key(1): encode_redo(cut_short),
        partition_key(2): _record(2, 5, 200),
        redo_key(2): encode_redo(older),
    }
    records = _partition_records(latest)
    assert sorted(r["cash"].issued for r in records) == [200, 700]


def test_status_reads_the_masters() -> None:
    master, _ = allocate(
        new_master("cash", 5_000, 2), RefillRequested("r", "cash", 1, 1, 0, 0, 0, 0, 0, 0)
    )
    latest = {master_key("cash"): encode_master(master), b"a:0": b"[1,0,4,9]"}
    assert _masters(latest) == {"cash": master}
