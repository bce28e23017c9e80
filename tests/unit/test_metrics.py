"""The pure half of the worker's metrics (streams.monitor.metrics_core) and the
processor's tallies it reads (streams.processor.BatchStats).

The dead-letter reasons come from the real code paths (processor and
allocator), so a reworded message that falls out of its class fails here.
"""

from __future__ import annotations

from collections import Counter

import orjson
from engine_builders import catalog, claim, order, refund, t, template, tick
from hypothesis import given
from hypothesis import strategies as st
from support.partition_sim import PartitionSim

from app.bucketing import master_partition
from schemas.codec import encode
from schemas.records import PoolCommand, Record, RefillRequested
from streams.allocation import AllocatorCache, AllocatorRecord, process_requests
from streams.monitor.metrics_core import (
    REASON_CLASSES,
    TYPE_OF_ROLE,
    BulkHistogram,
    allocator_dead_reasons,
    event_lag_histogram,
    input_lag,
    readiness,
    reason_class,
    reward_outcome,
)
from streams.processor import BUDGET_REQUESTS, CLAIMS, ORDERS, REFUNDS, TICKS, InMessage

CAUGHT_UP: dict[str, int | None] = {CLAIMS: 0, ORDERS: 0, REFUNDS: 0, TICKS: 0}


def _message(role: str, offset: int, record: Record, key: bytes | None = b"u1") -> InMessage:
    return InMessage(role, f"ts.{role}", 0, offset, key, encode(record))


def _raw(role: str, offset: int, value: bytes | None, key: bytes | None = b"u1") -> InMessage:
    return InMessage(role, f"ts.{role}", 0, offset, key, value)


# ------------------------------------------------------------ reason classes


def test_the_processors_dead_letter_reasons_fall_into_their_classes() -> None:
    good = orjson.loads(encode(order("o1", at=t(3))))
    bad = [
        (_raw(ORDERS, 0, b'{"type":"order_paid","v":1,"amou'), "malformed_json"),
        (_raw(ORDERS, 1, b"\xff\xfe\x00garbage"), "malformed_json"),
        (_raw(ORDERS, 2, None), "malformed_json"),
        (_raw(ORDERS, 3, b"[1, 2]"), "malformed_json"),
        (_raw(ORDERS, 4, orjson.dumps({**good, "type": "order_cancelled"})), "unknown_type"),
        (_raw(ORDERS, 5, orjson.dumps({**good, "type": "task_claimed"})), "unknown_type"),
        (_raw(ORDERS, 6, orjson.dumps({**good, "v": 99})), "unsupported_version"),
        (_message(ORDERS, 7, claim(at=t(2))), "wrong_topic"),
        (_message(ORDERS, 8, order("o2", at=t(3)), key=b"someone-else"), "wrong_key"),
        (_raw(ORDERS, 9, orjson.dumps({**good, "amount_cents": -500})), "schema"),
        (_raw(ORDERS, 10, orjson.dumps({**good, "amount_cents": "12.50"})), "schema"),
        (_raw(ORDERS, 11, orjson.dumps({**good, "at": "yesterday"})), "schema"),
        (_raw(ORDERS, 12, orjson.dumps({k: v for k, v in good.items() if k != "v"})), "schema"),
    ]
    sim = PartitionSim(catalog())
    result = sim.run([m for m, _ in bad], {**CAUGHT_UP, ORDERS: len(bad)})
    assert result.stats.dead == len(bad)
    assert [reason_class(r) for r in result.stats.dead_reasons] == [c for _, c in bad]
    # The tally holds the very reasons the dead letters carry.
    letters = [orjson.loads(o.value) for o in result.outputs]
    assert [x["reason"] for x in letters] == result.stats.dead_reasons


def test_the_allocators_dead_letter_reasons_fall_into_their_classes() -> None:
    partitions = 4
    owner = master_partition("cash", partitions)
    other = next(p for p in range(partitions) if p != owner)
    nope = next(
        f"nope{n}" for n in range(1000) if master_partition(f"nope{n}", partitions) == owner
    )

    def msg(offset: int, record: Record, partition: int = owner) -> InMessage:
        key = getattr(record, "pool_id", "x").encode()
        return InMessage(
            BUDGET_REQUESTS, "ts.budget-requests", partition, offset, key, encode(record)
        )

    messages = [
        msg(0, tick(t(2))),
        msg(1, PoolCommand("cmd", nope, "open", 0)),
        msg(2, RefillRequested("r", "cash", 1, 1, 0, 0, 0, 0, 0, 0), partition=other),
        msg(3, RefillRequested("r", "cash", 9, 1, 0, 0, 0, 0, 0, 0)),  # no partition 9 of 4
        InMessage(BUDGET_REQUESTS, "ts.budget-requests", owner, 4, b"cash", b"{nope"),
    ]
    result = process_requests(
        AllocatorRecord(owner),
        messages,
        pools=catalog(
            template(), pools=[{"pool_id": "cash", "total": 1000, "unit": "cents"}]
        ).pools,
        partitions=partitions,
        load_master=lambda pool_id: None,
        cache=AllocatorCache(),
    )
    reasons = allocator_dead_reasons(result.notes)
    assert reasons == [orjson.loads(o.value)["reason"] for o in result.outputs]
    assert [reason_class(r) for r in reasons] == [
        "wrong_topic",
        "unknown_pool",
        "wrong_partition",
        "budget_message",
        "malformed_json",
    ]


def test_an_engine_error_is_classed_as_such_whatever_the_exception_says() -> None:
    assert reason_class("engine error: SchemaError('type: unknown')") == "engine_error"
    assert reason_class("engine error: KeyError('does not belong on the')") == "engine_error"


def test_notes_that_are_not_dead_letters_are_not_reasons() -> None:
    notes = ["pool 'x' is not in this worker's catalog yet", "dead letter ts.a/0@1: why: this"]
    assert allocator_dead_reasons(notes) == ["why: this"]


@given(st.text(max_size=200))
def test_any_reason_maps_to_one_of_a_few_classes(reason: str) -> None:
    assert reason_class(reason) in REASON_CLASSES


# ----------------------------------------------------- the processor's tallies


def test_the_batch_tallies_agree_with_the_outputs() -> None:
    paid = template(
        template_id="paid",
        target=2,
        reward={"mode": "per_order", "per_order_cents": [100, 250], "pool_id": None},
    )
    once = template(template_id="once", target=1, reward={"mode": "cumulative", "amount_cents": 70})
    sim = PartitionSim(catalog(paid, once))
    inputs = [
        _message(CLAIMS, 0, claim("paid", at=t(2))),
        _message(CLAIMS, 1, claim("once", at=t(2, 13))),
        _message(ORDERS, 0, order("o1", at=t(3))),
        _message(ORDERS, 1, order("o2", at=t(4))),
        _message(REFUNDS, 0, refund("r2", "o2", 2000, at=t(5))),
        _message(TICKS, 0, tick(t(20)), key=None),
        _raw(ORDERS, 2, b"{broken"),
    ]
    result = sim.run(inputs, {CLAIMS: 2, ORDERS: 3, REFUNDS: 1, TICKS: 1})
    stats = result.stats
    docs = [orjson.loads(o.value) for o in result.outputs]
    assert stats.outputs_by_type == Counter(d["type"] for d in docs if d["type"] != "dead_letter")
    expected: dict[tuple[str, str, str], list[int]] = {}
    for d in docs:
        if d["type"].startswith("reward_"):
            tally = expected.setdefault((d["type"], d["template_id"], d["pool_id"] or ""), [0, 0])
            tally[0] += 1
            tally[1] += d["amount_cents"]
    assert stats.rewards == expected
    assert ("reward_revoked", "paid", "") in expected  # the refund took one back
    applied = {TYPE_OF_ROLE[role]: n for role, n in stats.applied_by_role.items()}
    assert applied == {"task_claim": 2, "order_paid": 2, "order_refunded": 1, "tick": 1}
    assert sum(applied.values()) == stats.applied == len(stats.applied_at)
    assert sorted(stats.applied_at) == [t(2), t(2, 13), t(3), t(4), t(5), t(20)]
    assert [reason_class(r) for r in stats.dead_reasons] == ["malformed_json"]


def test_budget_messages_are_tallied_by_type_and_pool() -> None:
    pooled = template(reward={"mode": "cumulative", "amount_cents": 500, "pool_id": "cash"})
    sim = PartitionSim(
        catalog(pooled, pools=[{"pool_id": "cash", "total": 10_000, "unit": "cents"}])
    )
    result = sim.run(
        [_message(CLAIMS, 0, claim(at=t(2)))]
        + [_message(ORDERS, n, order(f"o{n}", at=t(3 + n))) for n in range(3)],
        {CLAIMS: 1, ORDERS: 3, REFUNDS: 0, TICKS: 0},
    )
    sent = Counter(
        (orjson.loads(o.value)["type"], orjson.loads(o.value)["pool_id"])
        for o in result.outputs
        if o.role == BUDGET_REQUESTS
    )
    assert sent  # the empty bucket asked its master for a refill
    assert result.stats.budget_by_type == sent


def test_reward_outcome_labels() -> None:
    assert [reward_outcome(k) for k in ("reward_granted", "reward_revoked", "reward_rejected")] == [
        "granted",
        "revoked",
        "rejected",
    ]


# ---------------------------------------------------------- lag and readiness


def test_input_lag() -> None:
    assert input_lag(5, None) is None  # no fetch has reported a high watermark yet
    assert input_lag(None, 7) == 7  # nothing read: all of it
    assert input_lag(7, 7) == 0
    assert input_lag(3, 7) == 4
    assert input_lag(9, 7) == 0  # a watermark older than what was processed


def test_readiness_names_everything_it_waits_for() -> None:
    everything = readiness(
        joined=False, rebalancing=True, in_recovery=True, recovered=False, catalog_loaded=False
    )
    assert len(everything) == 4
    assert any("group" in w for w in everything)
    assert any("recovery" in w for w in everything)
    assert any("templates" in w for w in everything)
    assert (
        readiness(
            joined=True, rebalancing=False, in_recovery=False, recovered=True, catalog_loaded=True
        )
        == []
    )
    # A later rebalance's recovery makes the worker not ready again.
    assert readiness(
        joined=True, rebalancing=False, in_recovery=True, recovered=True, catalog_loaded=True
    ) == ["table recovery from the changelogs"]


# ------------------------------------------------------------ bulk histogram


_LAG_NOW = 10**12
_LAG_BOUNDS = list(event_lag_histogram().bounds)


@st.composite
def lag_times(draw: st.DrawFn) -> int:
    """An event time whose lag falls anywhere, on or next to a bound, or in
    the future (a producer clock ahead of ours: lag 0)."""
    anywhere = st.integers(min_value=-(10**7), max_value=_LAG_NOW + 10**7)
    near_a_bound = st.builds(
        lambda bound, off: _LAG_NOW - bound + off,
        st.sampled_from(_LAG_BOUNDS),
        st.integers(min_value=-1, max_value=1),
    )
    return draw(st.one_of(anywhere, near_a_bound))


@given(st.lists(lag_times(), max_size=300), st.integers(min_value=0, max_value=5))
def test_the_bulk_histogram_counts_like_observing_one_by_one(times: list[int], splits: int) -> None:
    now = _LAG_NOW
    histogram = event_lag_histogram()
    step = max(1, len(times) // (splits + 1))
    for start in range(0, len(times), step):  # fed in several batches
        histogram.observe_lags(now, times[start : start + step])
    lags = [max(0, now - x) for x in times]
    bounds = list(histogram.bounds)
    assert histogram.cumulative() == [sum(lag <= b for lag in lags) for b in bounds] + [len(lags)]
    assert histogram.count == len(lags)
    assert histogram.total == sum(lags)


def test_a_lag_on_a_bound_counts_in_that_bucket() -> None:
    histogram = BulkHistogram((10, 20))
    histogram.observe_lags(100, [90, 80, 79, 101])  # lags 10, 20, 21, -1 -> 0
    assert histogram.counts == [2, 1, 1]
    assert histogram.cumulative() == [2, 3, 4]
