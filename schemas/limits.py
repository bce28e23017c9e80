"""Explicit limits on input events (docs/limits.md), shared by every reader.

The worker, `taskstream replay` and the audit all decode inputs through
`schemas.codec.decode_input`, which applies these limits, so they refuse the
same messages with the same reasons. A message over a limit is not an error
of the program: it becomes a dead letter saying which limit it broke.

Why limits at all: one absurd message must not cost the worker its memory or
its time (a 50 MiB "event", a 10^30 amount that overflows a report's sum, an
id that is a megabyte of text or holds a terminal escape sequence that ends
up in a log). Each limit is far above anything a real upstream sends.
"""

from __future__ import annotations

from schemas.errors import SchemaError
from schemas.timestamps import parse_utc

# A whole message (the Kafka value, or one line of a replayed file), in bytes.
# Checked before parsing: an oversized message is never parsed.
MAX_MESSAGE_BYTES = 64 * 1024
# Every id (event_id, user_id, order_id, refund_id, template_id, channel):
# 1 to 256 characters, each printable (see `check_id_text`).
MAX_ID_CHARS = 256
# amount_cents of an order or a refund: 0 to 10^12 cents (10 billion in the
# currency's unit). Negative amounts are refused by the field's kind; zero is
# kept valid (an order paid entirely by vouchers is real, and the engine's
# rules and property tests cover it).
MAX_AMOUNT_CENTS = 10**12
# Event time: from 2000-01-01T00:00:00Z (inclusive) to 2100-01-01T00:00:00Z
# (exclusive); a deadline (event time + a template's days) stays far inside
# what every reader of the outputs can represent.
MIN_EVENT_TIME = parse_utc("2000-01-01T00:00:00Z")
MAX_EVENT_TIME = parse_utc("2100-01-01T00:00:00Z")
# user_tags of a claim: at most 64 tags, each following the id rule.
MAX_TAGS = 64
# What a dead letter keeps of a message over MAX_MESSAGE_BYTES: its first
# bytes, enough to recognise it (the whole of it could exceed what the broker
# accepts in the dead-letter topic).
OVERSIZED_PAYLOAD_KEPT = 1024


def check_message_size(raw: bytes | str) -> None:
    """SchemaError when a message is over MAX_MESSAGE_BYTES (before any parsing)."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise SchemaError(f"message of {size} bytes over the limit of {MAX_MESSAGE_BYTES}")


def check_id_text(value: str) -> str:
    """An id's length and characters (its type and non-emptiness are checked first).

    Printable as Python's `str.isprintable` says: letters, marks, numbers,
    punctuation, symbols (emoji included) and the ASCII space; no control
    characters (NUL, newline, escape, C1), no format characters (bidi
    overrides, zero-width joiners), no other separators, surrogates, private
    use or unassigned code points. One C-level call: cheap on the hot path.
    """
    if len(value) > MAX_ID_CHARS:
        raise SchemaError(f"id of {len(value)} characters over the limit of {MAX_ID_CHARS}")
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise SchemaError(f"id holds a non-printable character U+{ord(bad):04X}")
    return value


def check_amount(value: int) -> int:
    """An input amount's upper limit (its type and sign are checked first)."""
    if value > MAX_AMOUNT_CENTS:
        raise SchemaError(f"amount {value} over the limit of {MAX_AMOUNT_CENTS} cents")
    return value


def check_event_time(micros: int, text: str) -> int:
    """An input instant's range (`text`: as the message wrote it, for the reason)."""
    if not MIN_EVENT_TIME <= micros < MAX_EVENT_TIME:
        raise SchemaError(
            f"timestamp {text!r} outside 2000-01-01T00:00:00Z .. 2100-01-01T00:00:00Z"
        )
    return micros


def check_tag_count(count: int) -> None:
    if count > MAX_TAGS:
        raise SchemaError(f"{count} tags over the limit of {MAX_TAGS}")
