"""The bookkeeping behind streams/faust_fixes.py fixes 4 and 5, without a broker."""

from __future__ import annotations

from faust.types import TP

from streams import faust_fixes
from streams.faust_fixes import RewindAwareReadOffsets, _offsets_to_send

ORDERS = TP("ts.orders", 3)
CHANGELOG = TP("app-state-changelog", 3)


def test_the_drain_loop_cannot_move_a_rewound_partition_until_the_awaited_record() -> None:
    offsets = RewindAwareReadOffsets()
    offsets[ORDERS] = 200  # read up to 200 before the rewind
    offsets.rewind(ORDERS, 120)
    assert offsets[ORDERS] is None  # every record passes the drain loop's filter
    offsets[ORDERS] = 201  # a record fetched before the seek: ignored
    offsets[ORDERS] = 119
    assert offsets[ORDERS] is None
    offsets[ORDERS] = 120  # the awaited record
    assert offsets[ORDERS] == 120
    offsets[ORDERS] = 121
    assert offsets[ORDERS] == 121


def test_a_revoke_forgets_the_rewind() -> None:
    offsets = RewindAwareReadOffsets()
    offsets.rewind(ORDERS, 50)
    offsets.pop(ORDERS, None)
    offsets[ORDERS] = 70  # faust's seek after the next assignment
    assert offsets[ORDERS] == 70
    assert offsets[TP("ts.orders", 9)] is None  # unknown partitions read as None, as in faust


def test_commits_send_the_processors_positions_for_input_topics_only() -> None:
    faust_fixes.input_topic_names.add("ts.orders")
    faust_fixes.commit_positions.clear()
    faust_fixes.commit_positions[ORDERS] = 640
    faust_fixes.commit_positions[TP("ts.orders", 4)] = 10  # not assigned here any more
    try:
        acked = {ORDERS: 2011, TP("ts.orders", 5): 99, CHANGELOG: 7}
        sent = _offsets_to_send(acked, {ORDERS, TP("ts.orders", 5), CHANGELOG})
        # faust acked up to 2011, the table holds 640: the group gets 640; a
        # partition the processor has not taken is not committed at all.
        assert sent == {ORDERS: 640, CHANGELOG: 7}
    finally:
        faust_fixes.commit_positions.clear()
        faust_fixes.input_topic_names.discard("ts.orders")
