"""The rule that fetches again input messages that never reached the processor."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.worker.lost_fetches import LostFetchWatch


def test_waiting_messages_whose_next_offset_stays_put_are_due_after_quiet_for() -> None:
    watch: LostFetchWatch[str] = LostFetchWatch(quiet_for=10)
    assert watch.due(0, {"claims/6": 40}, {"claims/6": 83}) == []
    assert watch.due(9.9, {"claims/6": 40}, {"claims/6": 83}) == []
    assert watch.due(10, {"claims/6": 40}, {"claims/6": 83}) == [("claims/6", 40)]
    # Due again only after another quiet period (the refetch gets its chance).
    assert watch.due(15, {"claims/6": 40}, {"claims/6": 83}) == []
    assert watch.due(20, {"claims/6": 40}, {"claims/6": 83}) == [("claims/6", 40)]


def test_a_moving_next_offset_is_never_due() -> None:
    watch: LostFetchWatch[str] = LostFetchWatch(quiet_for=10)
    for second in range(0, 60, 3):
        assert watch.due(second, {"orders/1": 100 + second}, {"orders/1": 10_000}) == []


def test_nothing_waiting_exempt_or_unknown_is_never_due_and_starts_over() -> None:
    watch: LostFetchWatch[str] = LostFetchWatch(quiet_for=10)
    marks = {"a": 5, "b": None, "c": 9}
    for second in range(0, 40, 5):
        assert watch.due(second, {"a": 5, "b": 1, "c": 1}, marks, exempt={"c"}) == []
    # c let go: its quiet period starts now, not when it was held back.
    assert watch.due(40, {"c": 1}, marks) == []
    assert watch.due(49, {"c": 1}, marks) == []
    assert watch.due(50, {"c": 1}, marks) == [("c", 1)]


@given(
    st.lists(
        st.tuples(st.floats(0, 5), st.integers(0, 3), st.integers(0, 6), st.booleans()),
        max_size=40,
    )
)
def test_due_only_when_messages_waited_a_whole_quiet_period(
    steps: list[tuple[float, int, int, bool]],
) -> None:
    """Against a plain model: due exactly when, at this look, messages wait
    beyond an offset that has not moved (and always had messages beyond it,
    not exempt) for quiet_for since it got there or was last due."""
    watch: LostFetchWatch[str] = LostFetchWatch(quiet_for=10)
    now, start = 0.0, None
    for gap, offset, highwater, exempt in steps:
        now += gap
        waiting = highwater > offset and not exempt
        previous = watch.since.get("tp")
        due = watch.due(now, {"tp": offset}, {"tp": highwater}, exempt={"tp"} if exempt else ())
        if not waiting:
            start = None
        elif start is None or previous is None or previous[0] != offset:
            start = now
        if waiting and now - start >= 10:
            assert due == [("tp", offset)]
            start = now
        else:
            assert due == []
