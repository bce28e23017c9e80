"""The allocator's batch step (streams.allocation) and the masters' bytes."""

from __future__ import annotations

from dataclasses import replace

import orjson
from engine_builders import catalog, template

from app.bucketing import Waiting, allocate, master_partition, new_master
from schemas.codec import encode
from schemas.records import BucketReturned, PoolCommand, RefillRequested, Tick
from streams.allocation import (
    BUDGET_GRANTS,
    AllocatorCache,
    AllocatorRecord,
    allocation_writes,
    decode_allocator,
    decode_master,
    encode_master,
    master_key,
    process_requests,
)
from streams.processor import BUDGET_REQUESTS, DEAD_LETTERS, InMessage

PARTITIONS = 4
CATALOG = catalog(
    template(reward={"mode": "cumulative", "amount_cents": 500, "pool_id": "cash"}),
    pools=[{"pool_id": "cash", "total": 100_000, "unit": "cents"}],
)
OWNER = master_partition("cash", PARTITIONS)


def _pool_at_owner(prefix: str) -> str:
    """A pool id (not in the catalog) whose master would be OWNER's."""
    return next(
        f"{prefix}{n}" for n in range(1000) if master_partition(f"{prefix}{n}", PARTITIONS) == OWNER
    )


NOPE, FRESH = _pool_at_owner("nope"), _pool_at_owner("fresh")


def _msg(offset: int, record: object, partition: int = OWNER) -> InMessage:
    return InMessage(
        BUDGET_REQUESTS, "ts.budget-requests", partition, offset, b"cash", encode(record)
    )  # type: ignore[arg-type]


def _run(messages, record=None, masters=None, cache=None):
    stored = masters if masters is not None else {}
    return process_requests(
        record or AllocatorRecord(OWNER),
        messages,
        pools=CATALOG.pools,
        partitions=PARTITIONS,
        load_master=stored.get,
        cache=cache or AllocatorCache(),
    )


def test_a_request_gets_a_grant_addressed_to_its_partition() -> None:
    result = _run([_msg(0, RefillRequested("r1", "cash", 2, 1, 500, 0, 0, 0, 0, 0))])
    assert [(o.role, o.partition) for o in result.outputs] == [(BUDGET_GRANTS, 2)]
    grant = orjson.loads(result.outputs[0].value)
    assert grant["type"] == "bucket_granted"
    assert grant["units"] >= 500
    master = result.masters["cash"]
    assert master.master == 100_000 - grant["units"]
    assert result.record == AllocatorRecord(OWNER, 1, 1)
    keys = [k for k, _ in allocation_writes(result)]
    assert keys == [master_key("cash"), b"a:%d" % OWNER]  # the record last


def test_offsets_are_accepted_once_and_a_gap_rewinds() -> None:
    cache = AllocatorCache()
    first = _run([_msg(0, RefillRequested("r1", "cash", 2, 1, 0, 0, 0, 0, 0, 0))], cache=cache)
    again = _run(
        [_msg(0, RefillRequested("r1", "cash", 2, 1, 0, 0, 0, 0, 0, 0))],
        record=first.record,
        masters=dict(first.masters),
        cache=cache,
    )
    assert again.stats.redelivered == 1
    assert again.outputs == ()
    gap = _run(
        [_msg(5, RefillRequested("r2", "cash", 2, 2, 0, 0, 0, 0, 0, 0))],
        record=first.record,
        masters=dict(first.masters),
        cache=cache,
    )
    assert gap.rewind == 1
    assert gap.outputs == ()


def test_a_first_request_skipped_at_a_rebalance_is_noticed() -> None:
    """The topic starts at 0: a first message at offset 3 means 0-2 were skipped."""
    result = _run([_msg(3, RefillRequested("r", "cash", 1, 1, 0, 0, 0, 0, 0, 0))])
    assert result.rewind == 0


def test_bad_messages_are_dead_letters() -> None:
    other = next(p for p in range(PARTITIONS) if p != OWNER)
    result = _run(
        [
            _msg(0, Tick("t", 0)),
            _msg(1, PoolCommand("cmd", NOPE, "open", 0)),
            _msg(2, RefillRequested("r", "cash", 1, 1, 0, 0, 0, 0, 0, 0), partition=other),
            _msg(3, RefillRequested("r", "cash", 9, 1, 0, 0, 0, 0, 0, 0)),
        ]
    )
    reasons = [orjson.loads(o.value)["reason"] for o in result.outputs]
    assert [o.role for o in result.outputs] == [DEAD_LETTERS] * 4
    assert "does not belong on the budget-requests topic" in reasons[0]
    assert f"unknown pool {NOPE!r}" in reasons[1]  # an operator's typo
    assert f"belongs to partition {OWNER}" in reasons[2]
    assert "has 4 partitions" in reasons[3]
    assert result.record.next_offset == 4


def test_a_request_for_a_pool_not_published_here_yet_waits_for_the_catalog() -> None:
    cache = AllocatorCache()
    early = _msg(0, RefillRequested("r", FRESH, 1, 1, 100, 0, 0, 0, 0, 0))
    result = _run(
        [early, _msg(1, RefillRequested("s", "cash", 1, 1, 0, 0, 0, 0, 0, 0))], cache=cache
    )
    assert result.waiting_for_pool == FRESH
    assert result.rewind == 0
    assert result.outputs == ()
    assert result.record.next_offset == 0  # fetched again, nothing skipped


def test_a_master_survives_its_bytes() -> None:
    master = new_master("cash", 100_000, PARTITIONS)
    master, _ = allocate(master, PoolCommand("cmd-1", "cash", "open", 0))
    master, _ = allocate(master, RefillRequested("r", "cash", 1, 1, 99_000, 0, 0, 0, 0, 0))
    master, _ = allocate(master, BucketReturned("b", "cash", 2, 1, 0, master.round))
    master = replace(master, queue=(Waiting(3, 4, 500, 10, 20, 30, 40),))
    assert decode_master(encode_master(master)) == master
    # Format 1 (before requests carried the worker's clock) is still read.
    old = orjson.loads(encode_master(master))
    old[0], old[13] = 1, [w[:6] for w in old[13]]
    assert decode_master(orjson.dumps(old)).queue == (Waiting(3, 4, 500, 10, 20, 30, 0),)
    assert decode_allocator(b"[1,2,3,null]") == AllocatorRecord(2, 3, None)
