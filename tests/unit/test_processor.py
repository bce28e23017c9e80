"""The stream processor's batch step: offsets, event-time merge, dead letters, ticks.

Everything here is pure: a dict plays the RocksDB table (tests/support/partition_sim).
"""

from __future__ import annotations

import orjson
from engine_builders import catalog, claim, order, refund, t, template, tick
from support.partition_sim import AllocatorSim, PartitionSim

from app.bucketing import allocate, new_master
from schemas.codec import encode
from schemas.records import Record, RefillRequested
from streams.partition_state import PartitionRecord
from streams.processor import (
    _ABSENT,
    BUDGET,
    BUDGET_REQUESTS,
    CLAIMS,
    DEAD_LETTERS,
    INPUT_ROLES,
    ORDERS,
    REFUNDS,
    TICKS,
    InMessage,
    PartitionCache,
    process_batch,
)

ALL_CAUGHT_UP: dict[str, int | None] = {CLAIMS: 0, ORDERS: 0, REFUNDS: 0, TICKS: 0}


def message(role: str, offset: int, record: Record, *, key: bytes | None = b"u1") -> InMessage:
    return InMessage(role, f"ts.{role}", 0, offset, key, encode(record))


def types(sim: PartitionSim) -> list[str]:
    """The task, reward and dead-letter outputs (not the budget messages)."""
    return [orjson.loads(o.value)["type"] for o in sim.outputs if o.role != BUDGET_REQUESTS]


def budget_types(sim: PartitionSim) -> list[str]:
    return [orjson.loads(o.value)["type"] for o in sim.outputs if o.role == BUDGET_REQUESTS]


def test_an_order_fetched_before_its_claim_still_counts() -> None:
    sim = PartitionSim(catalog(template(target=1)))
    sim.run(
        [message(ORDERS, 0, order("o1", at=t(3))), message(CLAIMS, 0, claim(at=t(2)))],
        {CLAIMS: 1, ORDERS: 1, REFUNDS: 0, TICKS: 0},
    )
    assert types(sim) == ["task_claimed", "task_advanced", "task_completed", "reward_granted"]


def test_an_order_waits_while_the_claims_topic_has_unread_messages() -> None:
    sim = PartitionSim(catalog(template(target=1)))
    first = sim.run(
        [message(ORDERS, 0, order("o1", at=t(3)))], {CLAIMS: 1, ORDERS: 1, REFUNDS: 0, TICKS: 0}
    )
    assert sim.outputs == []
    assert first.record.held == {ORDERS: (0,)}
    sim.run([message(CLAIMS, 0, claim(at=t(2)))], {CLAIMS: 1, ORDERS: 1, REFUNDS: 0, TICKS: 0})
    assert types(sim)[:2] == ["task_claimed", "task_advanced"]
    assert sim.record().held == {}


def test_an_event_past_a_caught_up_input_waits_out_the_idle_wait() -> None:
    """Live traffic: the claims topic is read to its end, but a claim produced a
    moment later may be earlier than the order (Kafka Streams' max.task.idle.ms)."""
    sim = PartitionSim(catalog(template(target=1)))
    marks = {CLAIMS: 0, ORDERS: 1, REFUNDS: 0, TICKS: 0}
    first = sim.run([message(ORDERS, 0, order("o1", at=t(3)))], marks, now=10.0, max_idle=0.5)
    assert sim.outputs == []
    assert first.idle_until == 10.5
    assert first.record.held == {ORDERS: (0,)}
    # The late claim arrives within the wait and goes first: it waits its own
    # idle wait (refunds and ticks are idle), the order behind it.
    marks = {CLAIMS: 1, ORDERS: 1, REFUNDS: 0, TICKS: 0}
    second = sim.run([message(CLAIMS, 0, claim(at=t(2)))], marks, now=10.3, max_idle=0.5)
    assert sim.outputs == []
    assert second.idle_until == 10.8
    third = sim.run([], marks, now=10.8, max_idle=0.5)
    # The order counts, as replay's log order says (released first, it would not).
    assert types(sim) == ["task_claimed", "task_advanced", "task_completed", "reward_granted"]
    assert third.idle_until is None
    assert sim.record().held == {}


def test_after_the_idle_wait_a_run_with_no_message_releases_the_event() -> None:
    sim = PartitionSim(catalog(template(target=1)))
    marks = {CLAIMS: 1, ORDERS: 0, REFUNDS: 0, TICKS: 0}
    waiting = sim.run([message(CLAIMS, 0, claim(at=t(1)))], marks, now=10.0, max_idle=0.5)
    assert waiting.idle_until == 10.5
    assert sim.outputs == []
    still = sim.run([], marks, now=10.4, max_idle=0.5)
    assert still.idle_until == 10.5
    assert sim.outputs == []
    done = sim.run([], marks, now=10.5, max_idle=0.5)
    assert done.idle_until is None
    assert types(sim) == ["task_claimed"]
    assert sim.record().held == {}


def appended(role: str, offset: int, record: Record, at: float) -> InMessage:
    """A message of a topic that stamps the broker's append time."""
    return InMessage(role, f"ts.{role}", 0, offset, b"u1", encode(record), at)


def test_a_backlog_appended_long_ago_does_not_wait() -> None:
    """The idle wait counts from the append time: a backlog has waited already."""
    sim = PartitionSim(catalog(template(target=1)))
    marks = {CLAIMS: 1, ORDERS: 0, REFUNDS: 0, TICKS: 0}
    result = sim.run(
        [appended(CLAIMS, 0, claim(at=t(1)), at=900.0)], marks, now=1000.0, max_idle=0.5
    )
    assert types(sim) == ["task_claimed"]
    assert result.idle_until is None


def test_a_live_event_waits_from_when_the_broker_appended_it() -> None:
    sim = PartitionSim(catalog(template(target=1)))
    marks = {CLAIMS: 1, ORDERS: 0, REFUNDS: 0, TICKS: 0}
    result = sim.run(
        [appended(CLAIMS, 0, claim(at=t(1)), at=999.8)], marks, now=1000.0, max_idle=0.5
    )
    assert sim.outputs == []
    assert result.idle_until == 1000.3  # 0.5 s after the append, 0.3 s from now


def test_a_backlog_appended_at_a_restart_waits_for_a_high_watermark_read_after_it() -> None:
    """A broker came back at 999.0 and took a producer's backlog at once; this
    worker reconnected only at 1000.0. The high watermarks it knows for the
    other inputs were read before the restart: they do not cover what was
    appended at it, so the claim waits past its idle wait until a fetch
    reads them again."""
    sim = PartitionSim(catalog(template(target=1)))
    marks = {CLAIMS: 1, ORDERS: 0, REFUNDS: 0, TICKS: 0}
    stale = {CLAIMS: 1000.0, ORDERS: 990.0, REFUNDS: 990.0, TICKS: 990.0}
    held = sim.run(
        [appended(CLAIMS, 0, claim(at=t(1)), at=999.0)],
        marks,
        now=1000.0,
        max_idle=0.5,
        highwater_seen=stale,
    )
    assert sim.outputs == []
    assert held.idle_until == 1000.0  # run again soon: the next fetch reads them
    fresh = dict.fromkeys(stale, 1000.01)
    sim.run([], marks, now=1000.02, max_idle=0.5, highwater_seen=fresh)
    assert types(sim) == ["task_claimed"]


def test_a_broker_clock_ahead_of_ours_never_lengthens_the_wait() -> None:
    sim = PartitionSim(catalog(template(target=1)))
    marks = {CLAIMS: 1, ORDERS: 0, REFUNDS: 0, TICKS: 0}
    result = sim.run(
        [appended(CLAIMS, 0, claim(at=t(1)), at=1005.0)], marks, now=1000.0, max_idle=0.5
    )
    assert result.idle_until == 1000.5  # from when it was accepted here


def test_no_idle_wait_when_every_input_has_shown_a_later_event() -> None:
    sim = PartitionSim(catalog(template(target=1)))
    marks = {CLAIMS: 2, ORDERS: 1, REFUNDS: 1, TICKS: 1}
    result = sim.run(
        [
            message(CLAIMS, 0, claim(at=t(1))),
            message(ORDERS, 0, order("o1", at=t(3))),
            message(CLAIMS, 1, claim("other", at=t(4))),
            message(REFUNDS, 0, refund("r9", "o9", 100, at=t(5))),
            message(TICKS, 0, tick(at=t(6))),
        ],
        marks,
        now=10.0,
        max_idle=5.0,
    )
    assert "task_completed" in types(sim)  # the order went at once
    assert result.idle_until == 15.0  # only the last events, past caught-up inputs, wait


def test_held_events_are_fetched_again_after_a_restart() -> None:
    sim = PartitionSim(catalog(template(target=1)))
    hw = {CLAIMS: 1, ORDERS: 2, REFUNDS: 0, TICKS: 0}
    sim.run([message(ORDERS, 0, order("o0", at=t(3)))], hw)
    sim.run([message(ORDERS, 1, order("o1", at=t(4)))], hw)
    assert sim.record().held == {ORDERS: (0, 1)}
    assert sim.restart() == {ORDERS: 0}  # the shell rewinds the orders partition to 0
    # Until offset 0 is back, what arrives is dropped (it will come again).
    assert sim.run([message(CLAIMS, 0, claim(at=t(2)))], hw).stats.accepted == 1
    assert sim.outputs == []
    sim.run(
        [message(ORDERS, 0, order("o0", at=t(3))), message(ORDERS, 1, order("o1", at=t(4)))], hw
    )
    assert types(sim)[:3] == ["task_claimed", "task_advanced", "task_completed"]
    assert sim.record().held == {}


def test_a_redelivered_batch_changes_nothing_and_emits_nothing() -> None:
    sim = PartitionSim(catalog(template(target=2)))
    batch = [message(CLAIMS, 0, claim(at=t(2))), message(ORDERS, 0, order("o1", at=t(3)))]
    sim.run(batch, {CLAIMS: 1, ORDERS: 1, REFUNDS: 0, TICKS: 0})
    store, outputs = dict(sim.store), list(sim.outputs)
    again = sim.run(batch, {CLAIMS: 1, ORDERS: 1, REFUNDS: 0, TICKS: 0})
    assert again.stats.redelivered == 2
    assert again.stats.accepted == 0
    assert sim.outputs == outputs
    assert {k: v for k, v in sim.store.items() if not k.startswith(b"p:")} == {
        k: v for k, v in store.items() if not k.startswith(b"p:")
    }


def test_a_skipped_offset_is_fetched_again_before_anything_after_it() -> None:
    sim = PartitionSim(catalog(template(target=3)))
    hw = {CLAIMS: 1, ORDERS: 3, REFUNDS: 0, TICKS: 0}
    sim.run([message(CLAIMS, 0, claim(at=t(2))), message(ORDERS, 0, order("o0", at=t(3)))], hw)
    result = sim.run([message(ORDERS, 2, order("o2", at=t(5)))], hw)  # offset 1 went missing
    assert result.rewinds == {ORDERS: 1}
    assert result.stats.accepted == 0
    # Whatever was already in flight behind the hole is dropped until offset 1 comes.
    assert sim.run([message(ORDERS, 2, order("o2", at=t(5)))], hw).stats.dropped_for_rewind == 1
    sim.run(
        [message(ORDERS, 1, order("o1", at=t(4))), message(ORDERS, 2, order("o2", at=t(5)))], hw
    )
    progress = [
        orjson.loads(o.value)["progress"] for o in sim.outputs if b"task_advanced" in o.value
    ]
    assert progress == [1, 2, 3]


def test_malformed_misrouted_and_mis_keyed_messages_become_dead_letters() -> None:
    sim = PartitionSim(catalog())
    bad = [
        InMessage(ORDERS, "ts.orders", 0, 0, b"u1", b"{not json"),
        InMessage(ORDERS, "ts.orders", 0, 1, b"u1", None),
        message(ORDERS, 2, claim(at=t(2))),  # a claim on the orders topic
        message(ORDERS, 3, order("o1", at=t(3)), key=b"someone-else"),
        InMessage(ORDERS, "ts.orders", 0, 4, b"u1", b'{"type": "order_paid", "v": 1}'),
    ]
    result = sim.run(bad, {**ALL_CAUGHT_UP, ORDERS: 5})
    assert result.stats.dead == 5
    assert types(sim) == ["dead_letter"] * 5
    letters = [orjson.loads(o.value) for o in sim.outputs]
    assert [x["source"] for x in letters] == [f"ts.orders/0@{n}" for n in range(5)]
    reasons = [x["reason"] for x in letters]
    assert "not JSON" in reasons[0] or "JSON" in reasons[0]
    assert "empty" in reasons[1]
    assert "does not belong on the orders topic" in reasons[2]
    assert "is not the event's user_id" in reasons[3]
    assert letters[0]["payload"] == "{not json"
    assert sim.record().next_offset[ORDERS] == 5  # consumed: the partition goes on


def test_a_tick_expires_the_users_the_deadline_index_names() -> None:
    sim = PartitionSim(catalog(template(duration_days=1, target=3)))
    sim.run([message(CLAIMS, 0, claim(at=t(2)))], {**ALL_CAUGHT_UP, CLAIMS: 1})
    sim.run(
        [InMessage(TICKS, "ts.ticks", 0, 0, None, encode(tick(t(5))))],
        {**ALL_CAUGHT_UP, CLAIMS: 1, TICKS: 1},
    )
    assert types(sim) == ["task_claimed", "task_expired"]


def test_a_full_pending_buffer_releases_its_oldest_events() -> None:
    sim = PartitionSim(catalog(), max_pending=2)
    orders = [message(ORDERS, n, order(f"o{n}", at=t(3, minute=n))) for n in range(5)]
    result = sim.run(orders, {CLAIMS: 10, ORDERS: 5, REFUNDS: 0, TICKS: 0})
    assert result.stats.forced == 3
    assert result.record.held == {ORDERS: (3, 4)}
    assert any("pending buffer over 2" in note for note in result.notes)


# ------------------------------------------------------------ budget stalls

POOLED = catalog(
    template(target=1, reward={"mode": "cumulative", "amount_cents": 500, "pool_id": "cash"}),
    pools=[{"pool_id": "cash", "total": 1_000_000, "unit": "cents"}],
)
CAUGHT_UP = {CLAIMS: 2, ORDERS: 2, REFUNDS: 0, TICKS: 0}
ONE_EACH = {CLAIMS: 1, ORDERS: 1, REFUNDS: 0, TICKS: 0}


def _claim_and_order(user: str, n: int) -> list[InMessage]:
    key = user.encode()
    return [
        message(CLAIMS, n, claim(at=t(2, minute=n), user=user), key=key),
        message(ORDERS, n, order(f"o-{user}", at=t(3, minute=n), user=user), key=key),
    ]


def _answer(sim: PartitionSim, allocator: AllocatorSim, start: int = 0) -> list[InMessage]:
    allocator.feed(sim.outputs)
    return allocator.logs[sim.partition][start:]


def test_a_reward_its_bucket_cannot_pay_waits_for_the_master_and_holds_up_later_events() -> None:
    sim = PartitionSim(POOLED)
    first = sim.run(_claim_and_order("a", 0) + _claim_and_order("b", 1), CAUGHT_UP)
    # Both claims come first in event time; a's order waits for budget, and
    # b's order waits behind it.
    assert types(sim) == ["task_claimed", "task_claimed"]
    assert budget_types(sim) == ["refill_requested"]
    assert first.stats.stalls == 1
    assert first.record.held == {ORDERS: (0, 1)}
    # Nothing passes a stalled event, not even a full buffer.
    sim.max_pending = 0
    assert sim.run([], CAUGHT_UP).stats.applied == 0
    allocator = AllocatorSim(POOLED, 1)
    grant = _answer(sim, allocator)
    assert [orjson.loads(m.value)["type"] for m in grant] == ["bucket_granted"]
    sim.run(grant, CAUGHT_UP)
    assert types(sim)[2:] == ["task_advanced", "task_completed", "reward_granted"] * 2
    record = sim.record()
    assert record.held == {}
    bucket = record.buckets["cash"]
    assert bucket.issued == 1_000
    assert bucket.received == orjson.loads(grant[0].value)["units"]
    assert bucket.balance == bucket.received - 1_000


def test_a_refusal_rejects_the_reward() -> None:
    scarce = catalog(
        template(target=1, reward={"mode": "cumulative", "amount_cents": 500, "pool_id": "cash"}),
        pools=[{"pool_id": "cash", "total": 300, "unit": "cents"}],
    )
    sim = PartitionSim(scarce)
    sim.run(_claim_and_order("a", 0), ONE_EACH)
    allocator = AllocatorSim(scarce, 1)
    sim.run(_answer(sim, allocator), ONE_EACH)  # a recall round: the pool goes central
    sim.run(_answer(sim, allocator, 1), ONE_EACH)  # the return; the master refuses
    sim.run(_answer(sim, allocator, 1), ONE_EACH)
    assert types(sim)[-1] == "reward_rejected"
    assert sim.record().held == {}
    assert sim.record().buckets["cash"].issued == 0


def test_a_restart_while_stalled_asks_once_and_finishes_after_the_answer() -> None:
    sim = PartitionSim(POOLED)
    sim.run(_claim_and_order("a", 0), ONE_EACH)
    refetch = sim.restart()
    assert refetch == {ORDERS: 0}
    sim.run([_claim_and_order("a", 0)[1]], ONE_EACH)  # the held order, fetched again
    assert budget_types(sim) == ["refill_requested"]  # the request is not repeated
    allocator = AllocatorSim(POOLED, 1)
    sim.run(_answer(sim, allocator), ONE_EACH)
    assert types(sim)[-1] == "reward_granted"


def test_bad_budget_messages_are_dead_letters() -> None:
    sim = PartitionSim(POOLED)
    _, replies = allocate(
        new_master("cash", 10, 2), RefillRequested("r", "cash", 1, 1, 0, 0, 0, 0, 0, 0)
    )
    result = sim.run(
        [
            InMessage(BUDGET, "ts.budget-grants", 0, 0, b"cash", encode(replies[0])),
            InMessage(BUDGET, "ts.budget-grants", 0, 1, b"cash", b"{not json"),
            InMessage(BUDGET, "ts.budget-grants", 0, 2, b"cash", encode(tick(t(2)))),
        ],
        CAUGHT_UP,
    )
    assert result.stats.dead == 3
    assert {o.role for o in result.outputs} == {DEAD_LETTERS}
    reasons = [orjson.loads(o.value)["reason"] for o in result.outputs]
    assert "addressed to partition 1" in reasons[0]
    assert "does not belong on the budget-grants topic" in reasons[2]


def test_an_input_with_no_known_high_watermark_gets_the_partition_run_again() -> None:
    """Just assigned: no fetch has answered for the refunds input yet. If it is
    quiet, its answer carries a high watermark and no record, and no batch of
    this partition would follow: the step asks to be run again instead."""
    sim = PartitionSim(catalog(template(target=1)))
    unknown: dict[str, int | None] = {CLAIMS: 1, ORDERS: 0, REFUNDS: None, TICKS: 0}
    sim.run([message(CLAIMS, 0, claim(at=t(1)))], unknown, now=10.0, max_idle=0.5)
    held = sim.run([], unknown, now=10.5, max_idle=0.5)  # the idle wait is over
    assert sim.outputs == []
    assert held.idle_until == 10.5  # run again after the next fetch
    known = {CLAIMS: 1, ORDERS: 0, REFUNDS: 0, TICKS: 0}
    seen = dict.fromkeys(known, 10.6)
    sim.run([], known, now=10.6, max_idle=0.5, highwater_seen=seen)
    assert types(sim) == ["task_claimed"]


def test_a_cache_used_again_after_a_batch_raised_still_releases_in_event_time_order() -> None:
    """The shell drops a cache when a batch raises; one used again anyway
    must still apply its held events in event-time order (the pending
    buffer is sorted once per batch, so a batch that raised after holding
    events left it unsorted)."""
    cat = catalog(template())
    cache = PartitionCache()
    held = [message(CLAIMS, 0, claim(at=t(2), user="a"), key=b"a")]
    held.append(message(CLAIMS, 1, claim(at=t(3), user="b", event_id="c2"), key=b"b"))
    broken = InMessage(CLAIMS, CLAIMS, 0, "not an offset", None, None)  # type: ignore[arg-type]
    args = {"catalog": cat, "partitions": 1, "load_user": lambda user: None, "cache": cache}
    try:  # both claims held (the other inputs unknown), then the batch raises
        process_batch(PartitionRecord(0), [*held, broken], highwater={}, **args)
    except TypeError:
        pass
    else:
        raise AssertionError("the broken message should have raised")
    result = process_batch(
        PartitionRecord(0), [], highwater={role: 0 for role in INPUT_ROLES}, **args
    )
    assert result.stats.applied_at == [t(2), t(3)]
    assert result.stats.late == 0


def test_the_user_cache_keeps_the_most_recently_used_users_within_its_bound() -> None:
    cache = PartitionCache(users_max=16)
    cache.keep_users({f"u{n}": None for n in range(16)})
    # A batch reads u0 again (taken out) and a new user: both become the
    # most recent, so the next eviction spares them.
    assert cache.take_user("u0") is None
    assert cache.take_user("new") is _ABSENT
    cache.keep_users({"u0": None, "new": None})
    assert len(cache.users) <= 16
    assert "u0" in cache.users
    assert "new" in cache.users
    assert "u1" not in cache.users  # the least recently used went first
    # Evictions come in bulk (an eighth of the bound at a time), never past it.
    for n in range(100):
        cache.keep_users({f"v{n}": None})
        assert len(cache.users) <= 16
    assert "v99" in cache.users


def test_a_cache_without_room_keeps_no_user() -> None:
    cache = PartitionCache(users_max=0)
    cache.keep_users({"u0": None})
    assert cache.take_user("u0") is _ABSENT
