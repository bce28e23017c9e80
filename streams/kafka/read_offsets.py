"""faust's read offsets, aware of our rewinds (repair 4).

Symptom: a worker that took over a partition rewound an input to the
offsets its table held back, then received nothing more from it: lag 0,
0 events applied, for minutes.

Cause: `Consumer._drain_messages` iterates a batch aiokafka fetched before
our seek and, after each record it hands on, sets the partition's read
offset to that record's offset; it drops every later record whose offset is
below the read offset. So the stale records that follow a rewind raise the
read offset again, and the records the seek fetches (from the rewound
offset up) are all dropped as "already read". The opposite hole: a rewind
*forward* made the drain loop drop the stale records below the awaited one;
nobody acked them, so faust's committed offset stayed below them for good.

Repair: faust's read offsets live in `RewindAwareReadOffsets`. `rewind`
marks the awaited record; until that record itself is handed on, the
partition reads as having no read offset (every record passes the drain
loop's filter) and the drain loop's updates are ignored. A revoke or
faust's own seek clears the mark.

The worker's inputs no longer pass the drain loop (they are delivered in
batches, `streams.kafka.transport`), but the allocator's input does.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


class RewindAwareReadOffsets(defaultdict[Any, int | None]):
    """tp -> last offset handed on, ignoring updates while a rewind awaits its record."""

    def __init__(self) -> None:
        super().__init__(lambda: None)
        self.awaiting: dict[Any, int] = {}

    def rewind(self, tp: Any, offset: int) -> None:
        self.awaiting[tp] = offset
        super().__setitem__(tp, offset - 1 if offset > 0 else None)

    def forget(self, tp: Any) -> None:
        self.awaiting.pop(tp, None)

    def __getitem__(self, tp: Any) -> int | None:
        if tp in self.awaiting:
            # Let every record through until the awaited one: stale records
            # below it must still reach the agent, or faust never acks them
            # and its committed offset sticks below the hole for good.
            return None
        return super().__getitem__(tp)

    def __setitem__(self, tp: Any, value: int | None) -> None:
        awaited = self.awaiting.get(tp)
        if awaited is not None:
            if value != awaited:
                return  # a record fetched before the rewind
            del self.awaiting[tp]
        super().__setitem__(tp, value)

    def __delitem__(self, tp: Any) -> None:
        self.awaiting.pop(tp, None)
        super().__delitem__(tp)

    def pop(self, tp: Any, *default: Any) -> Any:
        self.awaiting.pop(tp, None)
        return super().pop(tp, *default)
