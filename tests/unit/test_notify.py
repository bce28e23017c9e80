"""The notifier's pure decisions: effect keys, HTTP status outcomes, backoff, records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.notifications import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    DeliveryRecord,
    Outcome,
    as_effect,
    backoff_seconds,
    effect_key,
    outcome_of_status,
)
from schemas.codec import decode, encode
from schemas.records import RewardGranted, RewardRejected, RewardRevoked, TaskClaimed

RewardClass = type[RewardGranted] | type[RewardRevoked] | type[RewardRejected]


def _reward(
    cls: RewardClass, event_id: str, reward_id: str
) -> RewardGranted | RewardRevoked | RewardRejected:
    return cls(
        event_id, reward_id, "u1", "tpl", "task-1", 500, None, "cash", "completed",
        1_709_800_000_000_000, "o-1",
    )  # fmt: skip


def test_effect_key_separates_the_kinds_of_one_reward() -> None:
    granted = _reward(RewardGranted, "evt-a", "rwd-1")
    revoked = _reward(RewardRevoked, "evt-b", "rwd-1")
    rejected = _reward(RewardRejected, "evt-c", "rwd-2")
    assert effect_key(granted) == "rwd-1:granted"
    assert effect_key(revoked) == "rwd-1:revoked"
    assert effect_key(rejected) == "rwd-2:rejected"


def test_effect_key_is_the_same_for_every_copy_on_the_wire() -> None:
    granted = _reward(RewardGranted, "evt-a", "rwd-1")
    copy = as_effect(decode(encode(granted)))
    assert copy is not None
    assert effect_key(copy) == effect_key(granted)


def test_only_reward_events_are_effects() -> None:
    claimed = TaskClaimed("evt", "u1", "tpl", "task-1", 0, "c-1", 0, 3, 10)
    assert as_effect(claimed) is None
    granted = _reward(RewardGranted, "evt-a", "rwd-1")
    assert as_effect(granted) is granted


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (201, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (408, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (599, Outcome.RETRY),
        (400, Outcome.PERMANENT),
        (401, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (409, Outcome.PERMANENT),
        (422, Outcome.PERMANENT),
        (301, Outcome.PERMANENT),
        (307, Outcome.PERMANENT),
        (100, Outcome.PERMANENT),
    ],
)
def test_outcome_of_status(status: int, outcome: Outcome) -> None:
    assert outcome_of_status(status) is outcome


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    # jitter 0 gives the lower half, jitter -> 1 approaches the full step
    lows = [backoff_seconds(attempt, 0.0) for attempt in range(1, 12)]
    assert lows[0] == pytest.approx(BACKOFF_BASE_SECONDS / 2)
    assert lows[1] == pytest.approx(BACKOFF_BASE_SECONDS)
    assert lows[2] == pytest.approx(BACKOFF_BASE_SECONDS * 2)
    assert lows[-1] == pytest.approx(BACKOFF_CAP_SECONDS / 2)
    assert backoff_seconds(10, 0.999999) == pytest.approx(BACKOFF_CAP_SECONDS, rel=1e-5)
    assert backoff_seconds(10_000, 0.5) == pytest.approx(BACKOFF_CAP_SECONDS * 0.75)


@given(attempt=st.integers(min_value=1, max_value=10_000), jitter=st.floats(0.0, 0.999999))
def test_backoff_stays_within_half_and_all_of_the_capped_step(attempt: int, jitter: float) -> None:
    step = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** min(attempt - 1, 64))
    wait = backoff_seconds(attempt, jitter)
    assert step / 2 <= wait <= step
    assert wait <= BACKOFF_CAP_SECONDS


@given(attempt=st.integers(min_value=1, max_value=200), jitter=st.floats(0.0, 0.999999))
def test_backoff_never_shrinks_between_attempts_at_equal_jitter(
    attempt: int, jitter: float
) -> None:
    assert backoff_seconds(attempt + 1, jitter) >= backoff_seconds(attempt, jitter)


@pytest.mark.parametrize(("attempt", "jitter"), [(0, 0.5), (-1, 0.5), (1, 1.0), (1, -0.1)])
def test_backoff_refuses_bad_arguments(attempt: int, jitter: float) -> None:
    with pytest.raises(ValueError, match=r"attempt|jitter"):
        backoff_seconds(attempt, jitter)


def test_delivery_record_round_trips() -> None:
    record = DeliveryRecord("delivered", 1_709_800_000_123_456, 3, "t.rewards/2@17")
    assert DeliveryRecord.decode(record.encode()) == record
