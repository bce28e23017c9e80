"""Input partitions whose waiting messages never reach the processor.

A fetch that completes in the last moments of a rebalance hands its
records to a group generation or an active set that is already gone: faust
(and our batch delivery, the same way) drops them, aiokafka's position has
moved past them, and the processor only notices a hole when a *later*
message of that partition arrives. When none does, messages the table has
not applied would wait forever (docs/streams.md, "Rebalances").

`Consumer.refetch_skipped` repairs the path that was found (records skipped
after faust's last seek of a rebalance). This rule is the safety net that
does not depend on which path lost them: an input
partition that has messages beyond the processor's next offset (high
watermark > next offset) while that next offset has not moved for
`quiet_for` seconds is fetched again from the next offset. A rewind costs
at most one refetch (the processor drops what it already has), so the rule
errs on the side of fetching; the worker leaves out partitions it holds
back on purpose, and runs it only between batches, outside rebalances and
freezes.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # a topic partition


@dataclass
class LostFetchWatch(Generic[K]):
    quiet_for: float  # seconds the next offset may stay put while messages wait
    # tp -> (the processor's next offset, when it was first seen there)
    since: dict[K, tuple[int, float]] = field(default_factory=dict)

    def due(
        self,
        now: float,
        next_offsets: Mapping[K, int],
        highwaters: Mapping[K, int | None],
        exempt: Collection[K] = (),
    ) -> list[tuple[K, int]]:
        """(tp, offset) to fetch again from: partitions that had messages
        waiting beyond the processor's next offset for `quiet_for` seconds.
        Each is due again only after another `quiet_for`."""
        since: dict[K, tuple[int, float]] = {}
        due: list[tuple[K, int]] = []
        for tp, offset in next_offsets.items():
            highwater = highwaters.get(tp)
            if tp in exempt or highwater is None or highwater <= offset:
                continue  # nothing waiting, or not ours to judge: forget it
            seen_offset, seen_at = self.since.get(tp, (offset, now))
            if seen_offset != offset:
                seen_at = now  # it moved: the processor is getting them
            if now - seen_at >= self.quiet_for:
                due.append((tp, offset))
                seen_at = now
            since[tp] = (offset, seen_at)
        self.since = since
        return due
