"""Inputs applied out of event-time order are recorded, and the audit replays
them where the worker applied them (streams.processor `_note_order`,
app.audit `late`).

The processor is driven batch by batch with the inputs arriving in a
generated interleaving, each batch believing every input read to its end
(no idle wait): whatever comes later with an earlier `at` is applied late.
The audit, given the `applied_late` records the batches wrote, must expect
byte for byte what the batches wrote; without them it generally cannot."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unit.engine_builders import claim, input_messages, order, refund, t, template, tick

from app.audit import InputMessage, RecordedBudget, late_from, replay_inputs
from app.catalog import Catalog, parse_catalog
from app.state import UserState
from schemas.codec import decode, encode
from schemas.records import AppliedLate, InputEvent
from streams.partition_state import PartitionRecord, decode_partition, encode_partition
from streams.processor import (
    INPUT_ROLES,
    LATE_INPUTS,
    RANK,
    InMessage,
    PartitionCache,
    decode_message,
    late_event_id,
    process_batch,
)

CATALOG: Catalog = parse_catalog([template(target=2, duration_days=3)], None)
USERS = ("a", "b", "c")


class LiveRun:
    """The processor over a sequence of batches, its state carried between them
    as the worker carries it (the partition record through its bytes)."""

    def __init__(self, max_pending: int = 20_000) -> None:
        self.record = PartitionRecord(0)
        self.cache = PartitionCache()
        self.users: dict[str, UserState] = {}
        self.delivered: dict[str, int] = {}
        self.outputs: list[tuple[str, bytes]] = []
        self.max_pending = max_pending

    def batch(self, messages: list[InputMessage]) -> None:
        for m in messages:
            self.delivered[m.role] = m.offset + 1
        result = process_batch(
            self.record,
            [InMessage(m.role, f"x.{m.role}", 0, m.offset, m.key, m.value) for m in messages],
            catalog=CATALOG,
            partitions=1,
            load_user=self.users.get,
            cache=self.cache,
            # Every input read to its end, and no idle wait: what comes
            # later with an earlier time is late.
            highwater={role: self.delivered.get(role, 0) for role in INPUT_ROLES},
            max_pending=self.max_pending,
        )
        for user_id, state in result.user_writes.items():
            if state is None:
                self.users.pop(user_id, None)
            else:
                self.users[user_id] = state
        self.record = decode_partition(encode_partition(result.record))
        self.outputs.extend((o.role, o.value) for o in result.outputs)

    def written(self) -> list[tuple[str, bytes]]:
        return sorted(o for o in self.outputs if o[0] != LATE_INPUTS)

    def late(self) -> list[AppliedLate]:
        return [decode(v) for role, v in self.outputs if role == LATE_INPUTS]  # type: ignore[misc]


def _replayed(messages: list[InputMessage], late: list[AppliedLate] | None) -> list[Any]:
    budget = RecordedBudget(CATALOG.pools.values(), {})
    expected = replay_inputs(
        messages,
        CATALOG,
        budget,
        decode_message,
        late=None if late is None else late_from(late),
    )
    return sorted((topic, encode(record)) for topic, record in expected.outputs)


def test_a_tick_after_a_later_order_is_recorded_and_replayed_where_it_was_applied() -> None:
    log: list[InputEvent] = [
        claim(at=t(2, 10), user="a"),
        order("o1", at=t(2, 11), user="a"),
        tick(t(5, 13)),  # a's deadline: t(5, 10)
        order("o2", at=t(6, 9), user="a"),
    ]
    messages = input_messages(log, 1)
    by_role = {role: [m for m in messages if m.role == role] for role in INPUT_ROLES}
    run = LiveRun()
    # The tick's producer is behind: the order at day 6 is applied first
    # (it expires the task itself), then the tick arrives.
    run.batch(by_role["claims"] + by_role["orders"])
    run.batch(by_role["ticks"])
    (late,) = run.late()
    assert late == AppliedLate(
        late_event_id("ticks", 0, 0), "ticks", 0, 0, t(5, 13), "orders", 1, t(6, 9), 1
    )
    assert run.record.max_applied == (t(6, 9), "orders", 1)
    assert run.record.late_behind == 1
    # In event time the tick expires the task: a different event (caused by
    # the tick) than the one the worker wrote (caused by the order).
    assert _replayed(messages, None) != run.written()
    assert _replayed(messages, run.late()) == run.written()


def test_an_input_in_event_time_order_writes_no_late_record() -> None:
    log: list[InputEvent] = [
        claim(at=t(2, 10), user="a"),
        order("o1", at=t(2, 11), user="a"),
        tick(t(5, 13)),
        order("o2", at=t(6, 9), user="a"),
    ]
    run = LiveRun()
    run.batch(input_messages(log, 1))
    assert run.late() == []
    assert run.record.late_behind == 0


@st.composite
def logs(draw: st.DrawFn) -> list[InputEvent]:
    """A few users' claims, orders and refunds, and ticks, in event time."""
    events: list[InputEvent] = []
    orders: dict[str, list[str]] = {u: [] for u in USERS}
    for n in range(draw(st.integers(4, 30))):
        day = draw(st.integers(2, 12))
        at = t(day, draw(st.integers(0, 23)), n % 60)
        kind = draw(st.sampled_from(("claim", "order", "order", "refund", "tick")))
        user = draw(st.sampled_from(USERS))
        if kind == "claim":
            events.append(claim(at=at, user=user, event_id=f"c{n}"))
        elif kind == "order":
            orders[user].append(f"o{n}")
            events.append(order(f"o{n}", draw(st.sampled_from((500, 2000))), at, user=user))
        elif kind == "refund" and orders[user]:
            target = draw(st.sampled_from(orders[user]))
            events.append(refund(f"r{n}", target, 1500, at, user=user))
        else:
            events.append(tick(at, f"tick{n}"))
    events.sort(key=lambda e: e.at)  # each producer sends in event time
    return events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=logs(), data=st.data())
def test_the_audit_replays_any_arrival_order_the_worker_saw(
    log: list[InputEvent], data: st.DataObject
) -> None:
    messages = input_messages(log, 1)
    queues = {role: [m for m in messages if m.role == role] for role in INPUT_ROLES}
    run = LiveRun(max_pending=data.draw(st.sampled_from((1, 3, 20_000))))
    batch: list[InputMessage] = []
    while any(queues.values()):
        role = data.draw(st.sampled_from([r for r in INPUT_ROLES if queues[r]]))
        batch.append(queues[role].pop(0))
        if data.draw(st.booleans()):
            run.batch(batch)
            batch = []
    run.batch(batch)
    late = run.late()
    for record in late:
        # A late record places an input that sorts before the one it follows.
        assert (record.at, RANK[record.topic], record.offset) < (
            record.after_at,
            RANK[record.after_topic],
            record.after_offset,
        )
    assert len({r.event_id for r in late}) == len(late)
    assert _replayed(messages, late) == run.written()
