"""The offsets the group commits for our input topics (repair 5).

Symptom: after a third worker joined and left, three partitions stopped for
good: the group had committed their input topics to the end, while the
table's partition record still expected offset 645 of `orders`. Their new
owner sought to the committed offsets, fetched nothing, and so never ran
the processor that would have noticed the hole. faust commits whatever its
agents acked, and acked records are not always processed ones.

Repair: for the input topics the broker is sent the processor's own
position instead (per partition and topic: the oldest held offset, else the
next offset to accept), for every assigned input partition it has
processed; partitions not processed are not committed at all. The committed
offset is then never past anything the table has not durably taken (the
worker waits for its changelog writes before it records a position). Our
offsets, stored with the state, are the truth; the committed ones only say
where a new owner starts fetching.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any


class CommitPositions:
    """Per consumer: where a new owner must fetch each input partition from."""

    def __init__(self) -> None:
        self.positions: dict[Any, int] = {}  # tp -> position, as last recorded
        self._sent: dict[Any, int] = {}  # tp -> what the broker was last sent

    def record(self, tp: Any, position: int) -> None:
        self.positions[tp] = position

    def forget(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            self.positions.pop(tp, None)
            self._sent.pop(tp, None)

    def to_send(
        self, offsets: Mapping[Any, int], assignment: Collection[Any], owned: Collection[str]
    ) -> dict[Any, int]:
        """faust's offsets for topics not `owned`; ours for every assigned partition."""
        send = {tp: o for tp, o in offsets.items() if tp.topic not in owned}
        for tp, position in self.positions.items():
            if tp in assignment:
                send[tp] = position
        return send

    def moved(self, assignment: Collection[Any]) -> dict[Any, int]:
        """Our positions of assigned partitions that changed since last sent."""
        return {
            tp: position
            for tp, position in self.positions.items()
            if tp in assignment and self._sent.get(tp) != position
        }

    def sent(self, offsets: Mapping[Any, int]) -> None:
        self._sent.update(offsets)
