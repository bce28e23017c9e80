"""FreezeWatch: a gap in the worker loop's beat is a freeze, and processing holds."""

from __future__ import annotations

from streams.freeze import FreezeWatch


def test_regular_beats_never_hold() -> None:
    watch = FreezeWatch(freeze_after=3.0, hold_for=3.5)
    for n in range(100):
        assert watch.beat(100.0 + n * 0.2) is None
        assert watch.hold(100.0 + n * 0.2) == 0.0


def test_the_first_beat_is_not_a_freeze_however_late() -> None:
    watch = FreezeWatch(freeze_after=3.0, hold_for=3.5)
    assert watch.beat(1_000.0) is None  # start-up took long: no previous beat
    assert watch.hold(1_000.0) == 0.0


def test_a_gap_over_the_limit_holds_processing_for_hold_for() -> None:
    watch = FreezeWatch(freeze_after=3.0, hold_for=3.5)
    watch.beat(10.0)
    assert watch.beat(13.0) is None  # exactly the limit: a slow beat, not a freeze
    assert watch.beat(23.0) == 10.0  # SIGSTOP for ~10 s
    assert watch.hold(23.0) == 3.5
    assert watch.hold(25.0) == 1.5
    assert watch.beat(25.0) is None  # beats again: the hold stands
    assert watch.hold(26.5) == 0.0


def test_a_second_freeze_during_a_hold_extends_it() -> None:
    watch = FreezeWatch(freeze_after=3.0, hold_for=3.5)
    watch.beat(0.0)
    watch.beat(5.0)
    assert watch.beat(9.0) == 4.0
    assert watch.hold(9.0) == 3.5
