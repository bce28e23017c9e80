"""The walking skeleton's pure counting rule and its exactly-once guarantee."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.order_count import RECENT_OUTPUTS, PaidOrder, UserCount, count_order, output_id


def order(n: int) -> PaidOrder:
    return PaidOrder(f"evt-{n}", f"ord-{n}", "user-1", 1000 + n, f"2026-11-01T00:00:{n % 60:02d}Z")


def test_each_new_offset_counts_once_and_emits_the_running_count() -> None:
    state = UserCount()
    counts = []
    for offset in range(3):
        state, outputs = count_order(state, order(offset), offset * 10)
        counts.append([o.count for o in outputs])
    assert counts == [[1], [2], [3]]
    assert state.count == 3
    assert state.applied_offset == 20


def test_redelivered_offset_changes_nothing_and_reemits_the_same_output() -> None:
    state, first = count_order(UserCount(), order(1), 5)
    state, _ = count_order(state, order(2), 6)
    again_state, again = count_order(state, order(1), 5)
    assert again_state is state
    assert again == first


def test_output_ids_are_deterministic_and_depend_on_input_and_kind() -> None:
    assert output_id("evt-1", "order_counted") == output_id("evt-1", "order_counted")
    assert output_id("evt-1", "order_counted") != output_id("evt-2", "order_counted")
    assert output_id("evt-1", "order_counted") != output_id("evt-1", "other")


def test_recent_outputs_are_bounded() -> None:
    state = UserCount()
    for offset in range(RECENT_OUTPUTS * 3):
        state, _ = count_order(state, order(offset), offset)
    assert len(state.recent) == RECENT_OUTPUTS


@given(
    st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=60),
)
def test_any_redelivery_pattern_counts_each_offset_exactly_once(deliveries: list[int]) -> None:
    """At-least-once delivery: offsets arrive ascending, with any stretch
    delivered again after a 'crash'. The count equals the distinct offsets and
    every re-emitted output equals the first emission for that offset."""
    stream: list[int] = []
    high = -1
    for rewind in deliveries:
        # Deliver up to a new high-water mark, then rewind by `rewind`.
        start = max(0, high - rewind + 1)
        high = high + 1 + rewind % 3
        stream.extend(range(start, high + 1))
    state = UserCount()
    first_emission: dict[int, object] = {}
    for offset in stream:
        state, outputs = count_order(state, order(offset), offset)
        for output in outputs:
            assert first_emission.setdefault(offset, output) == output
    assert state.count == len(set(stream))
