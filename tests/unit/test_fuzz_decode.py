"""Fuzz of the input decoding and the batch step: bad input is a dead letter, never a crash.

Hostile messages (tests/support/hostile.py: truncated, not UTF-8, wrong types,
huge numbers, ids with control characters, deep nesting, oversized, duplicate
keys, wrong topic or key, ...) and arbitrary bytes and JSON are fed to
`decode_message` (what the worker, replay and audit share) and, mixed with a
good log, to `process_batch`: nothing but SchemaError is ever raised, every
bad message is exactly one dead letter with a reason, and the good events
give replay's outputs. Fixed seeds and bounded example counts keep it
deterministic in `make test`; TASKSTREAM_FUZZ_EXAMPLES=20000 (what `make
chaos` runs) raises the count of examples.
"""

from __future__ import annotations

import dataclasses
import os
import random
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hostile import BUDGET_REQUESTS, Hostile, hostile_messages
from support.partition_sim import AllocatorSim, PartitionSim

from app.budget import Ledger
from app.catalog import Catalog, parse_catalog
from app.dead_letters import dead_letter_for
from app.replayer import Replayer
from bench.loggen import LogShape, ample_sample_pools, generate
from schemas import codec
from schemas.codec import decode_input, encode, to_wire
from schemas.errors import SchemaError
from schemas.limits import (
    MAX_AMOUNT_CENTS,
    MAX_ID_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_TAGS,
    OVERSIZED_PAYLOAD_KEPT,
)
from schemas.records import InputEvent, OrderPaid, TaskClaim, Tick
from schemas.timestamps import parse_utc
from streams.processor import (
    BUDGET,
    DEAD_LETTERS,
    INPUT_ROLES,
    ROLE_OF_TYPE,
    InMessage,
    decode_message,
)
from streams.processor import BUDGET_REQUESTS as REQUESTS_ROLE
from taskstream.replay import replay_lines

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
EXAMPLES = int(os.environ.get("TASKSTREAM_FUZZ_EXAMPLES", "500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # a fixed seed: the same examples on every run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
UNICODE_USERS = {  # good events for these users carry ids in other scripts
    "u000001": "ü-用户-\U0001f642",
    "u000002": "مستخدم-٢",
    "u000003": "user with spaces",
}


def _unicode_users(event: InputEvent) -> InputEvent:
    user_id = getattr(event, "user_id", None)
    if user_id in UNICODE_USERS:
        return dataclasses.replace(event, user_id=UNICODE_USERS[user_id])  # type: ignore[type-var]
    return event


GOOD = [
    _unicode_users(event)
    for event in generate(
        LogShape(
            events=400,
            users=12,
            task_user_every=1,
            task_order_share=1.0,
            claim_share=0.1,
            refund_share=0.15,
            tick_every=40,
            seconds_per_event=2500.0,
            seed=17,
        )
    )
]


CATALOG: Catalog = parse_catalog(
    orjson.loads((SAMPLES / "templates.json").read_bytes()), ample_sample_pools()
)


def _key(event: InputEvent) -> bytes | None:
    return None if type(event) is Tick else event.user_id.encode()  # type: ignore[union-attr]


def _refusal(role: str, key: bytes | None, value: bytes | None) -> str | None:
    """decode_message's reason for refusing the message, None when it decodes
    (anything but SchemaError propagates and fails the test)."""
    try:
        decode_message(role, key, value)
    except SchemaError as exc:
        return str(exc)
    return None


def _decodes(message: Hostile | tuple[str, bytes | None, bytes | None]) -> InputEvent:
    role, key, value = (
        (message.role, message.key, message.value) if isinstance(message, Hostile) else message
    )
    return decode_message(role, key, value)


# ---------------------------------------------------------------- decoding


def test_the_good_log_decodes_and_uses_unicode_ids() -> None:
    for event in GOOD:
        assert decode_message(ROLE_OF_TYPE[event.TYPE], _key(event), encode(event)) == event
    users = {getattr(e, "user_id", None) for e in GOOD}
    assert set(UNICODE_USERS.values()) <= users


def test_every_prefix_of_a_good_event_is_refused() -> None:
    for event in GOOD[:8]:
        raw = encode(event)
        for end in range(len(raw)):
            with pytest.raises(SchemaError):
                decode_message(ROLE_OF_TYPE[event.TYPE], _key(event), raw[:end])


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), good=st.sampled_from(GOOD))
def test_hostile_messages_are_refused_with_a_reason_and_good_ones_still_decode(
    seed: int, good: InputEvent
) -> None:
    for hostile in hostile_messages(random.Random(seed), GOOD, 4):
        if hostile.role in (BUDGET, BUDGET_REQUESTS):
            continue
        with pytest.raises(SchemaError) as refused:
            _decodes(hostile)
        assert str(refused.value), hostile.what
        assert _decodes((ROLE_OF_TYPE[good.TYPE], _key(good), encode(good))) == good


@FUZZ
@given(raw=st.binary(max_size=400), role=st.sampled_from(INPUT_ROLES))
def test_arbitrary_bytes_raise_nothing_but_schema_error(raw: bytes, role: str) -> None:
    assert _refusal(role, b"u1", raw) != ""  # a refusal always says why


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _assert_within_limits(event: InputEvent) -> None:
    """What any decoded input holds, said independently of the decoder's code."""
    for name, value in to_wire(event).items():
        if name.endswith("_id") or name == "channel":
            assert 1 <= len(value) <= MAX_ID_CHARS
            assert all(unicodedata.category(c)[0] not in "CZ" or c == " " for c in value), value
        elif name == "amount_cents":
            assert 0 <= value <= MAX_AMOUNT_CENTS
        elif name == "user_tags":
            assert len(value) <= MAX_TAGS
    assert parse_utc("2000-01-01T00:00:00Z") <= event.at < parse_utc("2100-01-01T00:00:00Z")


def field_changes(min_size: int) -> st.SearchStrategy[dict[str, Any]]:
    """Up to three fields of an input event (or an unknown one) set to any JSON."""
    names = [
        *("type", "v", "event_id", "user_id", "order_id", "refund_id", "template_id"),
        *("channel", "amount_cents", "at", "user_tags", "extra"),
    ]
    return st.dictionaries(st.sampled_from(names), json_values, min_size=min_size, max_size=3)


@FUZZ
@given(
    good=st.sampled_from(GOOD),
    changes=field_changes(min_size=0),
)
def test_the_unrolled_input_readers_agree_with_the_careful_decoder(
    good: InputEvent, changes: dict[str, Any]
) -> None:
    """A fast reader gives the careful decoder's record, or None (then the
    careful decoder reads the message and words the error)."""
    doc = {**to_wire(good), **changes}
    read = codec._INPUT_READERS.get(doc["type"]) if isinstance(doc["type"], str) else None
    fast = None if read is None else read(doc)
    try:
        careful = codec._from_wire(doc, codec.UPCASTERS, codec._INPUT_CHECKS)
    except SchemaError:
        assert fast is None
        return
    assert fast is None or fast == careful
    if not changes:
        assert fast == good


@FUZZ
@given(
    good=st.sampled_from(GOOD),
    changes=field_changes(min_size=1),
)
def test_any_json_in_any_field_is_decoded_within_limits_or_refused(
    good: InputEvent, changes: dict[str, Any]
) -> None:
    doc = {**to_wire(good), **changes}
    key = doc.get("user_id") if isinstance(doc.get("user_id"), str) else None
    role, raw = ROLE_OF_TYPE[good.TYPE], orjson.dumps(doc)
    encoded_key = None if key is None else key.encode()
    if _refusal(role, encoded_key, raw) is None:
        _assert_within_limits(decode_message(role, encoded_key, raw))


@FUZZ
@given(
    user_id=st.text(min_size=0, max_size=MAX_ID_CHARS + 3)
    | st.sampled_from(["\U0001f642", "a\u200db", "\u202e", "x\x7f", "名前", "\u00a0", "\ue000"])
)
def test_an_id_is_accepted_exactly_when_printable_and_short(user_id: str) -> None:
    event = OrderPaid("e1", "o1", user_id, 100, "app", parse_utc("2024-03-01T00:00:00Z"))
    printable = all(unicodedata.category(c)[0] not in "CZ" or c == " " for c in user_id)
    should_pass = 1 <= len(user_id) <= MAX_ID_CHARS and printable
    reason = _refusal("orders", user_id.encode(), encode(event))
    assert (reason is None) == should_pass, reason


def _order(**changes: Any) -> bytes:
    doc = {**to_wire(OrderPaid("e1", "o1", "u1", 100, "app", 0)), "at": "2024-03-01T00:00:00Z"}
    doc.update(changes)
    return orjson.dumps(doc)


def _padded_to(size: int) -> bytes:
    raw = _order()
    return raw[:-1] + b',"pad":"' + b"x" * (size - len(raw) - len(b',"pad":""')) + b'"}'


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_padded_to(MAX_MESSAGE_BYTES), None),
        (
            _padded_to(MAX_MESSAGE_BYTES + 1),
            f"message of {MAX_MESSAGE_BYTES + 1} bytes over the limit of {MAX_MESSAGE_BYTES}",
        ),
        (_order(amount_cents=MAX_AMOUNT_CENTS), None),
        (_order(amount_cents=0), None),
        (
            _order(amount_cents=MAX_AMOUNT_CENTS + 1),
            f"order_paid.amount_cents: amount {MAX_AMOUNT_CENTS + 1} over the limit of "
            f"{MAX_AMOUNT_CENTS} cents",
        ),
        (_order(amount_cents=-1), "order_paid.amount_cents: negative amount -1"),
        (_order(at="2000-01-01T00:00:00Z"), None),
        (_order(at="2099-12-31T23:59:59.999999Z"), None),
        (
            _order(at="1999-12-31T23:59:59.999999Z"),
            "order_paid.at: timestamp '1999-12-31T23:59:59.999999Z' outside "
            "2000-01-01T00:00:00Z .. 2100-01-01T00:00:00Z",
        ),
        (_order(order_id="o" * MAX_ID_CHARS), None),
        (
            _order(order_id="o" * (MAX_ID_CHARS + 1)),
            f"order_paid.order_id: id of {MAX_ID_CHARS + 1} characters over the limit of "
            f"{MAX_ID_CHARS}",
        ),
        (
            _order(order_id="o\u202e1"),
            "order_paid.order_id: id holds a non-printable character U+202E",
        ),
        (_order(channel="\x00"), "order_paid.channel: id holds a non-printable character U+0000"),
    ],
)
def test_the_limits_hold_exactly_at_their_edges(raw: bytes, reason: str | None) -> None:
    if reason is None:
        decode_message("orders", b"u1", raw)
    else:
        with pytest.raises(SchemaError) as refused:
            decode_message("orders", b"u1", raw)
        assert str(refused.value) == reason


def test_tag_limits() -> None:
    claim = to_wire(TaskClaim("e1", "u1", "t1", parse_utc("2024-03-01T00:00:00Z"), ()))
    decode_input(orjson.dumps({**claim, "user_tags": ["t"] * MAX_TAGS}))
    for tags, reason in (
        (["t"] * (MAX_TAGS + 1), f"{MAX_TAGS + 1} tags over the limit of {MAX_TAGS}"),
        (["ok", "\n"], "item 1: id holds a non-printable character U+000A"),
        ([""], "item 0: empty string"),
    ):
        with pytest.raises(SchemaError) as refused:
            decode_input(orjson.dumps({**claim, "user_tags": tags}))
        assert str(refused.value) == f"task_claim.user_tags: {reason}"


def test_replay_gives_the_same_reasons_as_the_worker() -> None:
    """`taskstream replay` (lines) and the worker (messages) share the decoder: a line
    the worker would refuse for its content is refused by replay for the same reason."""
    hostile = [
        h
        for h in hostile_messages(random.Random(5), GOOD, 400)
        if h.role in INPUT_ROLES
        and h.value
        and b"\n" not in h.value
        and h.value.strip() == h.value
        and h.what not in ("wrong topic", "wrong key")
    ]
    worker_reasons = []
    for h in hostile:
        with pytest.raises(SchemaError) as refused:
            decode_message(h.role, h.key, h.value)
        worker_reasons.append(str(refused.value))
    written: list[bytes] = []
    replay_lines((h.value + b"\n" for h in hostile if h.value), CATALOG, written.append)
    replay_reasons = [orjson.loads(line)["reason"] for line in written]
    assert len(hostile) > 200
    assert replay_reasons == worker_reasons


def test_an_oversized_dead_letter_keeps_only_the_first_bytes() -> None:
    raw = _padded_to(MAX_MESSAGE_BYTES + 10)
    letter = dead_letter_for(raw, "orders/0@1", "too big")
    assert letter.payload is not None
    assert letter.payload.encode() == raw[:OVERSIZED_PAYLOAD_KEPT]
    assert dead_letter_for(_padded_to(MAX_MESSAGE_BYTES), "x", "y").payload == (
        _padded_to(MAX_MESSAGE_BYTES).decode()
    )


# ------------------------------------------------------------ batch step


def _replay(events: list[InputEvent]) -> dict[str, bytes]:
    replayer = Replayer(CATALOG, Ledger(CATALOG.pools.values()))
    out: dict[str, bytes] = {}
    for event in events:
        for _, outcome in replayer.apply(event):
            for output in outcome.events:
                out[output.event_id] = encode(output)
    return out


EXPECTED = _replay(GOOD)


def test_the_good_log_exercises_rewards() -> None:
    kinds = {orjson.loads(v)["type"] for v in EXPECTED.values()}
    assert {"task_claimed", "task_completed", "reward_granted"} <= kinds


@settings(max_examples=max(12, EXAMPLES // 1000), derandomize=True, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    hostile_every=st.integers(1, 4),
    max_chunk=st.integers(1, 50),
)
def test_the_batch_step_dead_letters_every_bad_message_and_gives_replays_answer(
    seed: int, hostile_every: int, max_chunk: int
) -> None:
    rng = random.Random(seed)
    sim = PartitionSim(CATALOG)
    allocator = AllocatorSim(CATALOG, 1)
    logs: dict[str, list[InMessage]] = {role: [] for role in INPUT_ROLES}
    bad_sources: set[str] = set()

    def append(log: list[InMessage], role: str, key: bytes | None, value: bytes | None) -> str:
        message = InMessage(role, f"ts.{role}", 0, len(log), key, value)
        log.append(message)
        return message.source

    hostile = iter(hostile_messages(rng, GOOD, 10 * len(GOOD), budget_share=0.05))
    for n, event in enumerate(GOOD):
        role = ROLE_OF_TYPE[event.TYPE]
        append(logs[role], role, _key(event), encode(event))
        if n % hostile_every == 0:
            bad = next(hostile)
            if bad.role == BUDGET_REQUESTS:
                continue  # the allocator's topic: not this processor's input
            if bad.role == BUDGET:  # written between the allocator's answers
                bad_sources.add(append(allocator.logs[0], BUDGET, bad.key, bad.value))
            else:
                bad_sources.add(append(logs[bad.role], bad.role, bad.key, bad.value))
    logs[BUDGET] = allocator.logs[0]
    highwater: dict[str, int | None] = {r: len(logs[r]) for r in INPUT_ROLES}
    position = {role: 0 for role in logs}
    while any(position[r] < len(logs[r]) for r in logs):
        batch: list[InMessage] = []
        for role in rng.sample(list(logs), rng.randint(1, len(logs))):
            end = min(len(logs[role]), position[role] + rng.randint(1, max_chunk))
            batch.extend(logs[role][position[role] : end])
            position[role] = end
        allocator.feed(sim.run(batch, highwater).outputs)
    allocator.feed(sim.run([], highwater).outputs)
    assert sim.record().held == {}

    letters = [orjson.loads(o.value) for o in sim.outputs if o.role == DEAD_LETTERS]
    assert all(letter["reason"] for letter in letters)
    assert sorted(letter["source"] for letter in letters) == sorted(bad_sources)
    got: dict[str, bytes] = {}
    for output in sim.outputs:
        if output.role in (DEAD_LETTERS, REQUESTS_ROLE):
            continue
        event_id = orjson.loads(output.value)["event_id"]
        assert got.setdefault(event_id, output.value) == output.value, "one id, two contents"
    assert got == EXPECTED
