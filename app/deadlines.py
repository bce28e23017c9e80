"""Which users does a broadcast tick affect? An index by next deadline.

A tick has no user key, and visiting every user on every tick would cost
O(users). Each `UserState` carries `next_deadline` (the earliest deadline of
its in-progress tasks); the caller records it here after every change and,
on a tick, asks for the users due. Entries are never updated in place: a
changed deadline pushes a new entry and the stale one is skipped when it
surfaces (the engine's tick handling is a no-op for a user with nothing due).

The stream layer can keep the same index in a per-partition table keyed
`<deadline as 20-digit zero-padded micros>:<user_id>` and range-scan the
keys <= the tick's time; this in-memory heap is what replay and tests use.
"""

from __future__ import annotations

import heapq


class DeadlineIndex:
    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def update(self, user_id: str, old: int | None, new: int | None) -> None:
        """Record a user's next deadline after a state change (old: before it)."""
        if new is not None and new != old:
            heapq.heappush(self._heap, (new, user_id))

    def pop_due(self, at: int) -> list[str]:
        """Users with an entry <= at, earliest deadline first (ties by user id), each once."""
        due: list[str] = []
        seen: set[str] = set()
        heap = self._heap
        while heap and heap[0][0] <= at:
            _, user_id = heapq.heappop(heap)
            if user_id not in seen:
                seen.add(user_id)
                due.append(user_id)
        return due


def deadline_key(deadline: int, user_id: str) -> str:
    """Sortable key for a table-backed index (non-negative epoch micros)."""
    return f"{deadline:020d}:{user_id}"
