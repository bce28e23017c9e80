"""The zombie-fencing rules (streams.fencing) on plain values."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.fencing import (
    EPOCH_HEADER,
    AckTracker,
    epoch_header,
    epoch_of,
    keeps,
    own_epoch,
)


def test_the_epoch_is_the_generation_while_it_is_the_highest() -> None:
    assert own_epoch(7, 6) == 7
    assert own_epoch(1, 0) == 1


@given(st.integers(0, 10**6), st.lists(st.integers(0, 50), min_size=1, max_size=20))
def test_epochs_grow_with_every_new_owner_even_after_a_group_reset(
    highest: int, generations: list[int]
) -> None:
    # Owners one after another, each at the generation it joined with
    # (a deleted group starts again low): each writes above all before it.
    for generation in generations:
        epoch = own_epoch(generation, highest)
        assert epoch > highest
        if generation > highest:
            assert epoch == generation
        highest = epoch


def test_headers_round_trip_in_each_shape_a_client_gives() -> None:
    header = epoch_header(12)
    assert epoch_of(header) == 12  # a dict of str (faust, sending)
    assert epoch_of(list(header.items())) == 12  # a list of tuples (aiokafka, reading)
    assert epoch_of([(EPOCH_HEADER.encode(), b"3")]) == 3  # bytes names
    assert epoch_of(None) is None
    assert epoch_of([]) is None
    assert epoch_of([("other", b"1")]) is None
    assert epoch_of([(EPOCH_HEADER, b"not a number")]) is None
    assert epoch_of([(EPOCH_HEADER, None)]) is None


def test_recovery_skips_only_what_an_earlier_owner_wrote_after_a_newer_one() -> None:
    assert keeps(None, 9)  # written before fencing existed
    assert keeps(9, 9)
    assert keeps(10, 9)
    assert not keeps(8, 9)


Write = tuple[int, str, int]  # (epoch, key, value)


def _replay(log: list[Write]) -> dict[str, int]:
    state: dict[str, int] = {}
    highest = 0
    for epoch, key, value in log:
        if keeps(epoch, highest):
            highest = max(highest, epoch)
            state[key] = value
    return state


@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers()), max_size=15),
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers()), min_size=1, max_size=15),
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers()), max_size=15),
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers()), max_size=15),
)
def test_a_zombies_late_writes_change_nothing_in_a_replay(
    before: list[tuple[str, int]],
    new_owner_first: list[tuple[str, int]],
    zombie_late: list[tuple[str, int]],
    new_owner_after: list[tuple[str, int]],
) -> None:
    # Owner at epoch 5, a new owner at epoch 6 writes, then the frozen old
    # owner's queued writes (epoch 5) land, then the new owner goes on.
    honest = (
        [(5, k, v) for k, v in before]
        + [(6, k, v) for k, v in new_owner_first]
        + [(6, k, v) for k, v in new_owner_after]
    )
    with_zombie = (
        [(5, k, v) for k, v in before]
        + [(6, k, v) for k, v in new_owner_first]
        + [(5, k, v) for k, v in zombie_late]
        + [(6, k, v) for k, v in new_owner_after]
    )
    assert _replay(with_zombie) == _replay(honest)


def test_own_acknowledgements_one_after_another_are_no_gap() -> None:
    tracker = AckTracker()
    assert tracker.acknowledged(10, recorded=9)
    assert tracker.acknowledged(11, recorded=None)
    assert tracker.next_offset == 12
    assert tracker.gaps == []


def test_a_write_of_someone_else_between_two_own_writes_is_a_gap() -> None:
    tracker = AckTracker()
    assert tracker.acknowledged(10, recorded=9)
    assert not tracker.acknowledged(14, recorded=None)  # 11-13 are another worker's
    assert tracker.gaps == [(11, 14)]
    assert tracker.next_offset == 11  # not advanced past what this copy lacks


def test_a_partition_with_nothing_recorded_starts_at_the_first_own_write() -> None:
    tracker = AckTracker()
    assert tracker.acknowledged(3, recorded=None)  # an emptied log starts at 3
    assert tracker.acknowledged(4, recorded=None)
    assert not tracker.acknowledged(6, recorded=None)


def test_what_recovery_read_back_is_not_a_gap() -> None:
    tracker = AckTracker()
    tracker.caught_up_to(20)  # recovery applied up to 20, own writes among them
    assert tracker.acknowledged(18, recorded=None)  # a late acknowledgement: covered
    assert tracker.next_offset == 21
    assert tracker.acknowledged(21, recorded=None)


def test_a_run_that_follows_on_advances_in_one_step_and_nothing_else_does() -> None:
    tracker = AckTracker()
    assert not tracker.acknowledged_run([5, 6])  # nothing known yet: offset by offset
    assert tracker.acknowledged(5, recorded=4)
    assert tracker.acknowledged_run([6, 7, 8])
    assert tracker.next_offset == 9
    assert not tracker.acknowledged_run([9, 10, 12])  # skips one
    assert not tracker.acknowledged_run([10, 11])  # starts past the next
    assert not tracker.acknowledged_run([7, 8])  # read back
    assert not tracker.acknowledged_run([])
    assert tracker.next_offset == 9
    assert tracker.gaps == []
