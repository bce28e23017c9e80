"""The event-time buffer's shortcut (streams.processor.ReleaseBounds): worked
out once per batch, it may let a head go only where the full per-input check
(`_Batch._may_release`) would, on any state of the inputs and the clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.catalog import Catalog
from schemas.records import OrderPaid
from streams.processor import (
    CLAIMS,
    INPUT_ROLES,
    ORDERS,
    RANK,
    REFUNDS,
    TICKS,
    PartitionCache,
    PartitionRecord,
    Pending,
    ReleaseBounds,
    _Batch,
)

times = st.integers(min_value=-5, max_value=5)
clock = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
maybe = st.none() | st.integers(min_value=0, max_value=3)


@st.composite
def batches(
    draw: st.DrawFn,
) -> tuple[_Batch, dict[str, int | None], dict[str, float | None] | None]:
    cache = PartitionCache()
    cache.rewinding = draw(st.dictionaries(st.sampled_from(INPUT_ROLES), st.integers(0, 3)))
    cache.refetch = draw(
        st.dictionaries(st.sampled_from(INPUT_ROLES), st.sets(st.integers(0, 3), max_size=2))
    )
    record = PartitionRecord(
        0,
        next_offset=draw(st.dictionaries(st.sampled_from(INPUT_ROLES), st.integers(0, 3))),
        max_at=draw(st.dictionaries(st.sampled_from(INPUT_ROLES), times)),
    )
    batch = _Batch(record, Catalog({}, {}), 8, lambda _: None, cache, draw(clock), draw(clock))
    highwater = draw(st.fixed_dictionaries({role: maybe for role in INPUT_ROLES}))
    seen = draw(
        st.none() | st.fixed_dictionaries({role: st.none() | clock for role in INPUT_ROLES})
    )
    return batch, highwater, seen


def head_of(role: str, at: int, ready_from: float) -> Pending:
    event = OrderPaid("e", "u", "o", 1_000, at, "app")
    return Pending(at, RANK[role], role, 0, b"u", b"", event, ready_from)


@settings(max_examples=500)
@given(batches(), st.sampled_from(INPUT_ROLES), times, clock)
def test_the_bounds_never_release_what_the_full_check_holds(
    state: tuple[_Batch, dict[str, int | None], dict[str, float | None] | None],
    role: str,
    at: int,
    ready_from: float,
) -> None:
    batch, highwater, seen = state
    # A held event's own input has always read to its time (`_hold`).
    batch.max_at[role] = max(batch.max_at.get(role, at), at)
    head = head_of(role, at, ready_from)
    bounds = batch._release_bounds(highwater, seen)
    if bounds.lets_pass(head, batch.max_idle):
        assert batch._may_release(head, highwater, seen)


def test_in_a_backlog_with_a_silent_input_the_bounds_decide_alone() -> None:
    """The common case they are for: inputs behind their watermarks, ticks
    silent (caught up at offset 0), heads appended long ago."""
    record = PartitionRecord(
        0,
        next_offset={CLAIMS: 5, ORDERS: 10, REFUNDS: 2},
        max_at={CLAIMS: 40, ORDERS: 50, REFUNDS: 45},
    )
    batch = _Batch(record, Catalog({}, {}), 8, lambda _: None, PartitionCache(), 100.0, 0.5)
    highwater = {CLAIMS: 1_000, ORDERS: 1_000, REFUNDS: 1_000, TICKS: 0}
    seen: dict[str, float | None] = {role: 99.0 for role in INPUT_ROLES}
    bounds = batch._release_bounds(highwater, seen)
    assert bounds == ReleaseBounds(read_all=float("-inf"), read_busy=40, waited_by=99.0)
    assert bounds.lets_pass(head_of(ORDERS, 40, 1.0), 0.5)
    assert not bounds.lets_pass(head_of(ORDERS, 41, 1.0), 0.5)  # claims not read that far
    assert not bounds.lets_pass(head_of(ORDERS, 30, 98.6), 0.5)  # its wait ends after 99.0
    assert batch._may_release(head_of(ORDERS, 40, 1.0), highwater, seen)
