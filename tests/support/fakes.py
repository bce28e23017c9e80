"""Fakes for the edges of the system (never for a part under test)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SentRecorder:
    """Stands in for a topic's `send`: records what the agent emitted."""

    sent: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)

    async def __call__(
        self, *, key: bytes | None = None, value: bytes | None = None, **_: object
    ) -> None:
        self.sent.append((key, value))
