"""The reference notifier's decisions, without Kafka, HTTP, clock or randomness.

An *effect* is what a downstream system must do once about one reward: pay
it (`reward_granted`), claw it back (`reward_revoked`) or tell the user it
could not be paid (`reward_rejected`). Workers deliver reward events at least
once, so the same event can appear on the topic more than once; the notifier
de-duplicates by effect key, which is the same for every copy of one effect
and different for the grant and the revoke of one reward.

The shell (`taskstream.notify`) reads the clock and draws the jitter and
passes them in; everything here is a plain function of its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import orjson

from schemas.records import Record, RewardGranted, RewardRejected, RewardRevoked

EFFECT_TYPES = (RewardGranted, RewardRejected, RewardRevoked)
RewardEvent = RewardGranted | RewardRejected | RewardRevoked

# Retry schedule of a delivery that failed for a reason that may pass.
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 30.0


def effect_key(event: RewardEvent) -> str:
    """`<reward_id>:<kind>`, kind being granted, revoked or rejected.

    Also sent as the webhook's `Idempotency-Key` header: the receiver can
    de-duplicate the one window the notifier cannot close (see docs/notifier.md).
    """
    return f"{event.reward_id}:{event.TYPE.removeprefix('reward_')}"


def as_effect(record: Record) -> RewardEvent | None:
    """The record as a reward event, or None when it is something else."""
    return record if isinstance(record, EFFECT_TYPES) else None


class Outcome(Enum):
    """What one delivery attempt came to."""

    DELIVERED = "delivered"
    RETRY = "retry"  # may pass: try again later, hold the partition
    PERMANENT = "permanent"  # will not pass: dead-letter it, move on


def outcome_of_status(status: int) -> Outcome:
    """Classify a webhook's HTTP status.

    2xx delivered; 408 (timeout), 429 (slow down) and 5xx are the receiver's
    passing trouble; anything else (other 4xx, an unfollowed 3xx, 1xx) says
    this request will never be accepted as it is.
    """
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in (408, 429) or 500 <= status < 600:
        return Outcome.RETRY
    return Outcome.PERMANENT


def backoff_seconds(
    attempt: int,
    jitter: float,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
) -> float:
    """How long to wait after the `attempt`-th failed attempt (1-based).

    Exponential, capped, with "equal jitter": between half and all of
    min(cap, base * 2**(attempt - 1)), `jitter` in [0, 1) choosing where.
    Half is kept so the wait still grows; the random half keeps many
    notifiers from hammering a recovering receiver in step.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    # 2**64 is far past any cap: avoid computing huge powers for long outages.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    return ceiling / 2 + ceiling / 2 * jitter


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """What the de-dup store keeps per effect: how and when it was settled."""

    outcome: str  # "delivered" or "dead_letter"
    at_us: int  # wall-clock microseconds UTC when it was settled
    attempts: int
    source: str  # topic/partition@offset of the copy that was delivered

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "outcome": self.outcome,
                "at_us": self.at_us,
                "attempts": self.attempts,
                "source": self.source,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> DeliveryRecord:
        doc = orjson.loads(raw)
        return cls(str(doc["outcome"]), int(doc["at_us"]), int(doc["attempts"]), str(doc["source"]))
