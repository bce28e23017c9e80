"""The partition record's bytes: a round trip, compact held offsets, the old format."""

from __future__ import annotations

from types import MappingProxyType

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.bucketing import CENTRAL, Bucket
from app.state import UserState
from streams.partition_state import (
    Output,
    PartitionRecord,
    Redo,
    _redo_body,
    _runs,
    decode_partition,
    decode_redo,
    encode_partition,
    encode_redo,
    encode_user,
    user_key,
    user_writes,
)

BUCKET = Bucket("cash", 3, 900, 100, 650, 4, 5, 5, 0, 120, 10**15, 2 * 10**15, 300, CENTRAL)

offsets = st.sets(st.integers(0, 5_000), max_size=300).map(lambda s: tuple(sorted(s)))


stretches = st.builds(
    lambda first, length: tuple(range(first, first + length)),
    st.integers(0, 10**12),
    st.integers(0, 2_000),
)

few_stretches = st.lists(stretches, max_size=6).map(
    lambda parts: tuple(sorted({o for part in parts for o in part}))
)


def _runs_one_by_one(offsets: tuple[int, ...]) -> list[list[int]]:
    runs: list[list[int]] = []
    for offset in offsets:
        if runs and runs[-1][1] == offset - 1:
            runs[-1][1] = offset
        else:
            runs.append([offset, offset])
    return runs


@given(offsets | stretches | few_stretches)
def test_held_offsets_become_runs_one_stretch_in_one_step(held: tuple[int, ...]) -> None:
    assert _runs(held) == _runs_one_by_one(held)
    if held and held[-1] - held[0] + 1 == len(held):
        assert len(_runs(held)) == 1


@given(
    held=st.dictionaries(
        st.sampled_from(["claims", "orders", "refunds", "ticks"]), offsets | stretches
    ),
    seq=st.integers(0, 10**9),
)
def test_a_record_survives_its_bytes(held: dict[str, tuple[int, ...]], seq: int) -> None:
    record = PartitionRecord(
        3,
        seq,
        {"orders": 5_001, "claims": 7},
        {"orders": 1_700_000_000_000_000},
        held,
        {"cash": BUCKET},
    )
    expected = {role: o for role, o in held.items() if o}
    back = decode_partition(encode_partition(record))
    assert back.held == expected
    assert (back.partition, back.seq, back.next_offset, back.buckets) == (
        3,
        seq,
        {"orders": 5_001, "claims": 7},
        {"cash": BUCKET},
    )


def test_a_long_contiguous_wait_costs_a_few_bytes() -> None:
    record = PartitionRecord(0, 1, {"orders": 20_000}, {}, {"orders": tuple(range(20_000))})
    assert len(encode_partition(record)) < 100


def test_records_of_earlier_formats_are_still_read_without_their_static_shares() -> None:
    old = orjson.dumps([1, 2, 9, {"orders": 12}, {}, {"orders": [10, 11]}, {"cash": 5}])
    assert decode_partition(old).held == {"orders": (10, 11)}
    assert decode_partition(old).buckets == {}
    second = orjson.dumps([2, 2, 9, {"orders": 12}, {}, {"orders": [[10, 11]]}, {"cash": 5}])
    assert decode_partition(second).held == {"orders": (10, 11)}


def test_format_3_buckets_read_with_no_clock() -> None:
    bucket = [*("cash", 2), *(100, 0, 30, 1, 1, 0, 0, 30, 5, 9, 100, "open", 0)]
    third = orjson.dumps([3, 2, 9, {"orders": 12}, {}, {}, [bucket]])
    assert decode_partition(third).buckets["cash"].lease_wall == -1
    assert decode_partition(third).buckets["cash"].balance == 70


def test_a_redo_record_keeps_each_output_partition() -> None:
    redo = Redo(
        7,
        ((b"u:a", b"x"), (b"u:b", None)),
        (Output("rewards", b"a", b"{}"), Output("budget-requests", b"cash", b"{}", 5)),
    )
    assert decode_redo(encode_redo(redo)) == redo


@given(
    writes=st.lists(st.tuples(st.binary(max_size=40), st.none() | st.binary(max_size=200))),
    outputs=st.lists(
        st.builds(
            Output,
            st.sampled_from(["rewards", "task-events", "dead-letters", "budget-requests"]),
            st.none() | st.binary(max_size=40),
            st.binary(max_size=200),
            st.none() | st.integers(0, 1000),
        )
    ),
    seq=st.integers(-1, 10**12),
)
def test_a_redo_record_survives_its_bytes(
    writes: list[tuple[bytes, bytes | None]], outputs: list[Output], seq: int
) -> None:
    redo = Redo(seq, tuple(writes), tuple(outputs))
    assert decode_redo(encode_redo(redo)) == redo


def test_redo_records_of_format_3_are_still_read() -> None:
    """Written by workers before the binary format (base64 fields in JSON)."""
    old = orjson.dumps(
        [3, 7, [["dTph", "eA=="], ["dTpi", None]], [["rewards", "YQ==", "e30=", None]]]
    )
    assert decode_redo(old) == Redo(
        7, ((b"u:a", b"x"), (b"u:b", None)), (Output("rewards", b"a", b"{}"),)
    )


def test_a_cut_or_padded_redo_record_is_refused() -> None:
    raw = encode_redo(Redo(7, ((b"u:a", b"x" * 300),), (Output("rewards", b"a", b"{}"),)))
    for cut in (1, 3, len(raw) - 5):
        with pytest.raises(ValueError, match="format 5 is cut short or corrupt"):
            decode_redo(raw[:-cut])
    with pytest.raises(ValueError, match="format 5 is cut short or corrupt"):
        decode_redo(raw + b"??")


def test_redo_records_are_compressed() -> None:
    """Format 5: the batch's writes and outputs, zstd-compressed; a typical
    batch (user states and task events repeat their field names) shrinks
    several times over."""
    state = b'{"user_id":"u%d","tasks":{"t1":{"state":"in_progress","count":2}}}'
    writes = tuple((b"u:u%d" % n, state % n) for n in range(200))
    outputs = tuple(Output("task-events", b"u%d" % n, state % n) for n in range(200))
    redo = Redo(9, writes, outputs)
    raw = encode_redo(redo)
    assert raw.startswith(b"\x00R5")
    assert len(raw) * 4 < len(_redo_body(redo))
    assert decode_redo(raw) == redo


def _format_4(redo: Redo) -> bytes:
    """How workers before format 5 wrote a redo record."""
    return b"\x00R4" + _redo_body(redo)


def test_redo_records_of_format_4_are_still_read() -> None:
    redo = Redo(7, ((b"u:a", b"x"), (b"u:b", None)), (Output("rewards", b"a", b"{}", 3),))
    assert decode_redo(_format_4(redo)) == redo
    raw = _format_4(redo)
    for cut in (1, 3, len(raw) - 5):
        with pytest.raises(ValueError, match="format 4 is cut short"):
            decode_redo(raw[:-cut])
    with pytest.raises(ValueError, match="format 4 has 2 trailing"):
        decode_redo(raw + b"??")


def test_inputs_are_fetched_from_the_oldest_held_offset_else_the_next_one() -> None:
    record = PartitionRecord(0, 4, {"orders": 90, "claims": 12}, {}, {"orders": (40, 41, 57)})
    assert record.fetch_positions() == {"orders": 40, "claims": 12}


def test_a_batchs_user_writes_are_each_users_key_and_record() -> None:
    """`user_writes` writes in one loop what `user_key` and `encode_user`
    make for one user (None: the key deleted)."""
    empty = MappingProxyType({})
    states: dict[str, UserState | None] = {
        "u1": UserState("u1", (), empty, empty, 1_700_000_000_000_000, (5, "c1")),
        "u2": None,
        "ü3": UserState("ü3", (), empty, empty, None, None),
    }
    assert user_writes(states) == [
        (user_key(user_id), None if state is None else encode_user(state))
        for user_id, state in states.items()
    ]
