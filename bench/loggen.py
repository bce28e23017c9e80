"""A deterministic synthetic input log for benchmarks: seeded, reproducible.

Shape (defaults): 100,000 users, one in ten holds tasks; 80% of orders come
from users without a task (the engine's cheapest path, and the common case);
claims ~1.5%, refunds ~5% (half full, half partial), a tick every 10,000
events; times advance ~2.6 s per event, so 1,000,000 events span a month
and tasks (7-10 days) complete, get refunded and expire along the way.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from schemas.records import InputEvent, OrderPaid, OrderRefunded, TaskClaim, Tick
from schemas.timestamps import MICROS_PER_SECOND, parse_utc

START = parse_utc("2024-03-01T00:00:00Z")
TEMPLATE_IDS = (
    "dark_box_3_days",
    "clear_box_per_order",
    "milestones_exclusive",
    "lottery_exclusive",
)
TAG_SETS = ((), ("lapsed",), ("low_frequency",), ("fraud_risk",))
CHANNELS = ("next_day_pickup", "next_day_pickup", "hour_delivery", "app")
AMOUNTS = (800, 1200, 1990, 2500, 3600, 5200, 9900)


@dataclass(frozen=True, slots=True)
class LogShape:
    events: int = 1_000_000
    users: int = 100_000
    task_user_every: int = 10  # user n holds tasks iff n % task_user_every == 0
    task_order_share: float = 0.2
    claim_share: float = 0.015
    refund_share: float = 0.05
    tick_every: int = 10_000
    seconds_per_event: float = 2.6
    seed: int = 20240301


def generate(shape: LogShape) -> Iterator[InputEvent]:
    rng = random.Random(shape.seed)
    task_users = range(0, shape.users, shape.task_user_every)
    recent: list[tuple[str, str, int]] = []  # (user, order, amount) ring for refunds
    step = int(shape.seconds_per_event * MICROS_PER_SECOND)
    refunds = 0
    for n in range(shape.events):
        at = START + n * step + rng.randrange(step)
        event_id = f"e{n:08d}"
        if n % shape.tick_every == shape.tick_every - 1:
            yield Tick(f"tick-{n:08d}", at)
            continue
        roll = rng.random()
        if roll < shape.claim_share:
            user = f"u{rng.choice(task_users):06d}"
            yield TaskClaim(event_id, user, rng.choice(TEMPLATE_IDS), at, rng.choice(TAG_SETS))
        elif roll < shape.claim_share + shape.refund_share and recent:
            user, order_id, amount = recent[rng.randrange(len(recent))]
            refunds += 1
            share = amount if rng.random() < 0.5 else amount // 3
            yield OrderRefunded(event_id, f"r{refunds:08d}", order_id, user, share, at)
        else:
            if rng.random() < shape.task_order_share:
                user_n = rng.choice(task_users)
            else:
                user_n = rng.randrange(shape.users)
            user = f"u{user_n:06d}"
            amount = rng.choice(AMOUNTS)
            order_id = f"o{n:08d}"
            if len(recent) < 10_000:
                recent.append((user, order_id, amount))
            else:
                recent[rng.randrange(10_000)] = (user, order_id, amount)
            yield OrderPaid(event_id, order_id, user, amount, rng.choice(CHANNELS), at)


SAMPLE_POOLS = Path(__file__).resolve().parents[1] / "samples" / "pools.json"


def ample_sample_pools() -> list[dict[str, object]]:
    """The sample pools with totals no partition's share can run out of.

    Until progressive bucketing lands, each partition spends a fixed share of
    a pool (docs/streams.md), which agrees with replay's single ledger only
    while no share runs dry: tests and benchmarks that compare or measure the
    stream use these."""
    pools: list[dict[str, object]] = orjson.loads(SAMPLE_POOLS.read_bytes())
    for pool in pools:
        pool["total"] = 10**12
    return pools


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a mixed test log: the bytes, and how it must reach Kafka."""

    value: bytes
    malformed: bool = False  # the worker must dead-letter it
    raw_topic: str | None = None  # unroutable bytes: sent as-is to this input topic
    raw_key: bytes | None = None


def mixed_log(
    shape: LogShape,
    *,
    duplicate_every: int = 97,
    early_refund_every: int = 89,
    malformed_every: int = 251,
) -> list[Line]:
    """The generated log plus what upstream systems get wrong, in event-time order.

    - duplicates: an event delivered twice by its producer (same line again);
    - early refunds: a refund stamped a second *before* its order (the refund
      system's clock runs behind), which the engine holds until the order;
    - malformed messages: truncated JSON, wrong types, negative amounts,
      unknown types, each becoming a dead letter with its reason.
    """
    from schemas.codec import encode

    rng = random.Random(shape.seed + 1)
    out: list[Line] = []
    for n, event in enumerate(generate(shape)):
        encoded = encode(event)
        if isinstance(event, OrderPaid) and n % early_refund_every == 0:
            early = OrderRefunded(
                f"early-{event.event_id}",
                f"early-r-{event.order_id}",
                event.order_id,
                event.user_id,
                event.amount_cents // 2,
                event.at - MICROS_PER_SECOND,
            )
            out.append(Line(encode(early)))
        out.append(Line(encoded))
        if n % duplicate_every == 0 and not isinstance(event, Tick):
            out.append(Line(encoded))
        if n % malformed_every == 0:
            out.append(_malformed(rng, n, event))
    return out


def _malformed(rng: random.Random, n: int, near: InputEvent) -> Line:
    user = getattr(near, "user_id", "u000000")
    key = user.encode()
    kind = n % 5
    if kind == 0:  # truncated JSON
        text = b'{"type":"order_paid","v":1,"event_id":"bad-%d","user_id":"%s","amou' % (
            n,
            key,
        )
        return Line(text, malformed=True, raw_topic="orders", raw_key=key)
    if kind == 1:  # not even UTF-8
        return Line(
            b"\xff\xfe" + rng.randbytes(12), malformed=True, raw_topic="claims", raw_key=key
        )
    doc: dict[str, object] = {
        "type": "order_paid",
        "v": 1,
        "event_id": f"bad-{n}",
        "order_id": f"bad-o-{n}",
        "user_id": user,
        "amount_cents": 1000,
        "channel": "app",
        "at": "2024-03-02T00:00:00Z",
    }
    if kind == 2:
        doc["amount_cents"] = -500  # negative amount
    elif kind == 3:
        doc["amount_cents"] = "12.50"  # wrong type
    else:
        doc["at"] = "yesterday"  # not a time
    return Line(orjson.dumps(doc), malformed=True)
