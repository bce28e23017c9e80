"""Dead letters: an unusable input, where it was read, and why. Pure."""

from __future__ import annotations

import base64

from app import ids
from schemas.limits import MAX_MESSAGE_BYTES, OVERSIZED_PAYLOAD_KEPT
from schemas.records import DeadLetter


def dead_letter_for(payload: bytes, source: str, reason: str) -> DeadLetter:
    """The dead letter of one unusable input: text when it is UTF-8, else base64.

    `source` says where it was read ("line 12", "taskstream.orders/3@1045");
    the id derives from source and payload, so a redelivered message yields
    the same dead letter (consumers de-duplicate by `event_id`). A payload
    over the size limit keeps only its first bytes (docs/limits.md): the whole
    of it could be more than the broker takes in one dead letter.
    """
    if len(payload) > MAX_MESSAGE_BYTES:
        payload = payload[:OVERSIZED_PAYLOAD_KEPT]
    try:
        text: str | None = payload.decode("utf-8")
        b64: str | None = None
    except UnicodeDecodeError:
        text, b64 = None, base64.b64encode(payload).decode("ascii")
    return DeadLetter(ids.dead_letter_id(source, payload), reason, source, text, b64)
