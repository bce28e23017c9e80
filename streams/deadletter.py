"""Dead-letter records: the original bytes, where they were read, and why."""

from __future__ import annotations

import base64
import hashlib

import orjson


def dead_letter(
    *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str
) -> bytes:
    """Encode one dead letter; its id is derived from the position, so a
    message delivered twice yields the same record twice (consumers de-duplicate)."""
    position = f"{topic}/{partition}/{offset}"
    return orjson.dumps(
        {
            "type": "dead_letter",
            "v": 1,
            "event_id": "dead_letter-" + hashlib.sha256(position.encode()).hexdigest()[:32],
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "reason": reason,
            "key_b64": None if key is None else base64.b64encode(key).decode(),
            "value_b64": None if value is None else base64.b64encode(value).decode(),
        }
    )
