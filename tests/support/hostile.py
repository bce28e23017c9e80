"""Hostile input messages for the fuzz tests: every one must become a dead letter.

`hostile_messages` derives each message from a good event (so it looks
plausible: right topic, right key, almost right JSON) and breaks it in one of
many ways: truncated, not UTF-8, not an object, a field of the wrong type or
out of its limits (docs/limits.md), ids with control or format characters,
huge numbers, deeply nested JSON, oversized payloads, duplicate keys, NaN,
wrong topic, wrong or null key, null value, output events, budget messages
for another partition. Seeded: the same seed gives the same messages.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from schemas.codec import encode, to_wire
from schemas.limits import MAX_ID_CHARS, MAX_MESSAGE_BYTES, MAX_TAGS
from schemas.records import (
    BucketGranted,
    InputEvent,
    PoolCommand,
    RefillDenied,
    Tick,
)
from streams.processor import BUDGET, INPUT_ROLES, ROLE_OF_TYPE

BUDGET_REQUESTS = "budget-requests"  # read by the allocator


@dataclass(frozen=True, slots=True)
class Hostile:
    role: str  # the input it is sent on: an input role, BUDGET or BUDGET_REQUESTS
    key: bytes | None
    value: bytes | None
    what: str  # how it is broken (for failure messages)
    partition: int | None = None  # budget messages: the partition they are sent to


def _key(event: InputEvent) -> bytes | None:
    user_id = getattr(event, "user_id", None)
    return None if user_id is None else user_id.encode()


def _role(event: InputEvent) -> str:
    return ROLE_OF_TYPE[event.TYPE]


def _with(event: InputEvent, field: str, raw_value: bytes) -> bytes:
    """The event's JSON with one field's value replaced by raw JSON text."""
    doc = to_wire(event)
    doc[field] = "__HOSTILE__"
    return orjson.dumps(doc).replace(b'"__HOSTILE__"', raw_value)


def _field(rng: random.Random, event: InputEvent, kinds: Sequence[str]) -> str | None:
    names = [name for name in to_wire(event) if any(k in name for k in kinds)]
    return rng.choice(names) if names else None


BAD_IDS = (
    "",
    "\x00",
    "u\x00001",
    "\u202eevil",
    "a\u200db",
    "line\nbreak",
    "\x1b[31mred",
    "next\x85line",
    "\u2028",
    "\ue000",
    "a" * (MAX_ID_CHARS + 1),
    "\U0001f642" * (MAX_ID_CHARS + 1),
)
WRONG_TYPES = (b"null", b"1", b"1.5", b"true", b"[]", b"{}", b'{"id":"x"}', b'["x"]')
BAD_AMOUNTS = (
    b"-1",
    b"-500",
    b"1000000000001",
    b"18446744073709551615",
    b"1" + b"0" * 40,
    b"-" + b"9" * 30,
    b"1.5",
    b"1e3",
    b'"100"',
    b"true",
    b"1e400",
    b"NaN",
    b"Infinity",
)
BAD_TIMES = (
    b'"yesterday"',
    b"0",
    b"1700000000",
    b'"1999-12-31T23:59:59Z"',
    b'"2100-01-01T00:00:00Z"',
    b'"0001-01-01T00:00:00Z"',
    b'"9999-12-31T23:59:59.999999Z"',
    b'"2024-03-01T00:00:00+01:00"',
    b'"2024-02-30T00:00:00Z"',
    b'"2024-03-01T23:59:60Z"',
    b'"2024-03-01T00:00:00.1234567Z"',
    b'"2024-03-01"',
    b'"\\u0032024-03-01T00:00:00Z\\u0000"',
)
BAD_TAGS = (
    b'"lapsed"',
    b"[1]",
    b"[null]",
    b'[["nested"]]',
    b'[""]',
    b'["\\u0000"]',
    orjson.dumps(["t"] * (MAX_TAGS + 1)),
    orjson.dumps(["a" * (MAX_ID_CHARS + 1)]),
)
BAD_VERSIONS = (b"2", b"0", b"-1", b'"1"', b"true", b"1.0", b"null", b"99999999999999999999")
BAD_TYPES = (b"null", b"1", b'""', b'"ORDER_PAID"', b'"task_claimed"', b'"dead_letter"', b'"x"')


def _truncated(rng: random.Random, event: InputEvent) -> Hostile:
    raw = encode(event)
    return Hostile(_role(event), _key(event), raw[: rng.randrange(len(raw))], "truncated")


def _not_utf8(rng: random.Random, event: InputEvent) -> Hostile:
    raw = encode(event)
    at = rng.randrange(len(raw) + 1)
    bad = rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"))
    return Hostile(_role(event), _key(event), raw[:at] + bad + raw[at:], "not UTF-8")


def _junk(rng: random.Random, event: InputEvent) -> Hostile:
    value = rng.choice(
        (
            rng.randbytes(rng.randrange(1, 64)),
            b"",
            b"   ",
            b"[]",
            b"null",
            b"42",
            b'"order_paid"',
            b"true",
            b"{}",
            b"\xef\xbb\xbf" + encode(event),  # a byte-order mark
            encode(event) + b"garbage",
            encode(event) + encode(event),
            b"[" + encode(event) + b"]",
        )
    )
    return Hostile(_role(event), _key(event), value, "junk")


def _wrong_value(rng: random.Random, event: InputEvent) -> Hostile:
    choice = rng.randrange(6)
    name: str | None
    if choice == 0:
        name, values, what = _field(rng, event, ("amount",)), BAD_AMOUNTS, "bad amount"
    elif choice == 1:
        name, values, what = "at", BAD_TIMES, "bad time"
    elif choice == 2:
        name, values, what = _field(rng, event, ("user_tags",)), BAD_TAGS, "bad tags"
    elif choice == 3:
        name, values, what = "v", BAD_VERSIONS, "bad version"
    elif choice == 4:
        name, values, what = "type", BAD_TYPES, "bad type"
    else:
        name, values, what = _field(rng, event, ("_id",)), WRONG_TYPES, "id of the wrong type"
    if name is None:  # the event has no such field: a wrong id type instead
        name, values, what = "event_id", WRONG_TYPES, "id of the wrong type"
    return Hostile(_role(event), _key(event), _with(event, name, rng.choice(values)), what)


def _bad_id(rng: random.Random, event: InputEvent) -> Hostile:
    name = _field(rng, event, ("_id",))
    assert name is not None  # every input has an event_id
    bad = rng.choice(BAD_IDS)
    raw = _with(event, name, orjson.dumps(bad))
    key = bad.encode() if name == "user_id" else _key(event)  # the key agrees: the id is at fault
    return Hostile(_role(event), key, raw, f"bad id in {name}")


def _missing(rng: random.Random, event: InputEvent) -> Hostile:
    doc = to_wire(event)
    del doc[rng.choice(list(doc))]
    return Hostile(_role(event), _key(event), orjson.dumps(doc), "missing field")


def _nested(rng: random.Random, event: InputEvent) -> Hostile:
    depth = rng.choice((1100, 5000))
    if rng.random() < 0.5:  # past the parser's depth limit, in an extra field
        doc = encode(event)
        value = doc[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}"
        return Hostile(_role(event), _key(event), value, "nested too deep")
    name = _field(rng, event, ("_id", "at"))
    assert name is not None
    nested = b'{"a":' * 50 + b"1" + b"}" * 50
    return Hostile(
        _role(event), _key(event), _with(event, name, nested), "nested object as a value"
    )


def _oversized(rng: random.Random, event: InputEvent) -> Hostile:
    raw = encode(event)
    over = rng.choice((1, 2, 17, 1000, MAX_MESSAGE_BYTES, 3 * MAX_MESSAGE_BYTES))
    pad = MAX_MESSAGE_BYTES + over - len(raw) - len(b',"pad":""')
    value = raw[:-1] + b',"pad":"' + b"x" * pad + b'"}'
    assert len(value) == MAX_MESSAGE_BYTES + over
    return Hostile(_role(event), _key(event), value, f"{over} bytes over the size limit")


def _duplicate_key(rng: random.Random, event: InputEvent) -> Hostile:
    # JSON parsers keep the last of two equal keys: the last one is bad.
    name, bad = rng.choice((("event_id", b'""'), ("at", b'"yesterday"'), ("v", b"7")))
    raw = encode(event)
    return Hostile(_role(event), _key(event), raw[:-1] + b',"%s":%s}' % (name.encode(), bad), "dup")


def _lone_surrogate(rng: random.Random, event: InputEvent) -> Hostile:
    raw = _with(event, "event_id", rng.choice((b'"\\ud800"', b'"x\\udfff"', b'"\\ud83d"')))
    return Hostile(_role(event), _key(event), raw, "lone surrogate escape")


def _wrong_topic(rng: random.Random, event: InputEvent) -> Hostile:
    role = rng.choice([r for r in INPUT_ROLES if r != _role(event)])
    return Hostile(role, _key(event), encode(event), "wrong topic")


def _wrong_key(rng: random.Random, event: InputEvent) -> Hostile:
    if type(event) is Tick:  # a tick has no user: its key is never checked
        return _truncated(rng, event)
    key = _key(event)
    assert key is not None
    other = rng.choice((None, b"", key + b"x", key.upper() + b"\x00", b"\xff" * 3, key * 200))
    return Hostile(_role(event), other, encode(event), "wrong key")


def _null_value(rng: random.Random, event: InputEvent) -> Hostile:
    return Hostile(_role(event), _key(event), None, "null value (tombstone)")


def _output_event(rng: random.Random, event: InputEvent) -> Hostile:
    kind = rng.choice(("task_claimed", "reward_granted", "dead_letter", "bucket_granted"))
    doc = {"type": kind, "v": 1, "event_id": "x", "user_id": "u1"}
    return Hostile(_role(event), _key(event), orjson.dumps(doc), "output event")


def _budget(rng: random.Random, event: InputEvent, partitions: int) -> Hostile:
    """A bad message on a budget topic (only ever refused: never a valid grant)."""
    partition = rng.randrange(partitions)
    elsewhere = (partition + 1) % partitions
    if rng.random() < 0.6:  # budget-grants, read by the partitions
        value = rng.choice(
            (
                None,
                rng.randbytes(20),
                encode(event),  # an input event
                encode(PoolCommand("bad-cmd", "cash", "open", event.at)),  # to the master
                encode(BucketGranted("bad-g", "cash", elsewhere, 1, 10, 0, "open"))
                if partitions > 1
                else b"{",
                encode(RefillDenied("bad-d", "cash", partition, 1, 5, 1))[:-9],
                b'{"type":"bucket_granted","v":1}' + b" " * MAX_MESSAGE_BYTES,
            )
        )
        return Hostile(BUDGET, b"cash", value, "bad budget grant", partition)
    value = rng.choice(
        (
            None,
            rng.randbytes(20),
            encode(event),
            encode(BucketGranted("bad-g", "cash", partition, 1, 10, 0, "open")),  # wrong way
            b'{"type":"refill_requested","v":1,"pool_id":"cash"}',
        )
    )
    return Hostile(BUDGET_REQUESTS, b"cash", value, "bad budget request", partition)


KINDS: tuple[Callable[[random.Random, InputEvent], Hostile], ...] = (
    _truncated,
    _not_utf8,
    _junk,
    _wrong_value,
    _wrong_value,
    _bad_id,
    _missing,
    _nested,
    _oversized,
    _duplicate_key,
    _lone_surrogate,
    _wrong_topic,
    _wrong_key,
    _null_value,
    _output_event,
)


def hostile_messages(
    rng: random.Random,
    near: Sequence[InputEvent],
    count: int,
    *,
    budget_share: float = 0.0,
    partitions: int = 1,
) -> list[Hostile]:
    """`count` bad messages, each derived from a random event of `near`;
    `budget_share` of them on the budget topics (for a deployment with
    `partitions` partitions)."""
    out = []
    for _ in range(count):
        event = rng.choice(near)
        if rng.random() < budget_share:
            out.append(_budget(rng, event, partitions))
        else:
            out.append(rng.choice(KINDS)(rng, event))
    return out
