"""Progressive bucketing in one process: N partitions, their buckets, the
masters and the messages between them, with a deterministic schedule.

`taskstream replay --partitions N` uses it to simulate a bucketed run
exactly (the same bucket and allocator functions the agents call, messages
delivered the moment they are sent: an infinitely fast allocator), and the
property tests drive `BudgetNetwork` with random delays instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence

from app.bucketing import (
    DEFAULT_ALLOCATION,
    Allocation,
    AwaitingBudget,
    Master,
    PartitionBudget,
    allocate,
    new_master,
)
from app.catalog import Catalog, Pool
from app.engine import Outcome, handle
from app.replayer import Replayer
from app.state import UserState
from schemas.records import BudgetEvent, InputEvent, Tick, ToBucket, ToMaster


class BudgetNetwork:
    """Every pool's master and the messages in flight (FIFO per channel, as
    a Kafka partition delivers them: one channel into the masters, one into
    each partition)."""

    def __init__(
        self,
        pools: Mapping[str, Pool],
        partitions: int,
        params: Allocation = DEFAULT_ALLOCATION,
    ) -> None:
        self.params = params
        self.partitions = partitions
        self.masters: dict[str, Master] = {
            pool_id: new_master(pool_id, pool.total, partitions) for pool_id, pool in pools.items()
        }
        self.to_master: deque[ToMaster] = deque()
        self.to_bucket: list[deque[ToBucket]] = [deque() for _ in range(partitions)]
        self.sent: list[BudgetEvent] = []  # every message, in the order it was sent

    def send_to_master(self, messages: list[ToMaster]) -> None:
        self.to_master.extend(messages)
        self.sent.extend(messages)

    def deliver_to_master(self) -> None:
        """The allocator reads its next message."""
        message = self.to_master.popleft()
        master, out = allocate(self.masters[message.pool_id], message, self.params)
        self.masters[message.pool_id] = master
        for reply in out:
            self.to_bucket[reply.partition].append(reply)
        self.sent.extend(out)

    def idle(self) -> bool:
        return not self.to_master and not any(self.to_bucket)

    def pump(self, budgets: Sequence[PartitionBudget]) -> None:
        """Deliver every message until none is in flight (an allocator that
        answers at once): the buckets' outboxes to the masters, the masters'
        answers to the buckets (`budgets[p]` is partition p's)."""
        for budget in budgets:
            self.send_to_master(budget.take_outbox())
        while not self.idle():
            while self.to_master:
                self.deliver_to_master()
            for budget, inbox in zip(budgets, self.to_bucket, strict=True):
                while inbox:
                    budget.apply(inbox.popleft())
                self.send_to_master(budget.take_outbox())


class _BucketedPartition(Replayer):
    """One partition's users and buckets; an event that must wait for budget
    is applied again once `resolve` has delivered the master's answer."""

    def __init__(
        self,
        catalog: Catalog,
        budget: PartitionBudget,
        resolve: Callable[[PartitionBudget, str], None],
    ) -> None:
        super().__init__(catalog, budget)
        self.buckets = budget
        self._resolve = resolve

    def _decide(self, state: UserState | None, event: InputEvent) -> Outcome:
        while True:
            self.buckets.begin(event.at)
            try:
                outcome = handle(state, event, self.catalog, self.buckets)
            except AwaitingBudget as stall:
                self.buckets.rollback(stall)
                self._resolve(self.buckets, stall.pool_id)
                continue
            self.buckets.commit()
            return outcome


class PartitionedReplayer:
    """Replay over `partitions` partitions (users placed by `partition_of`,
    ticks to every partition in order), bucketed budgets, and an allocator
    that answers every message before the next input event."""

    def __init__(
        self,
        catalog: Catalog,
        partitions: int,
        partition_of: Callable[[str], int],
        params: Allocation = DEFAULT_ALLOCATION,
    ) -> None:
        self.catalog = catalog
        self.partition_of = partition_of
        self.network = BudgetNetwork(catalog.pools, partitions, params)
        self.parts = [
            _BucketedPartition(catalog, PartitionBudget(p, {}), self._resolve)
            for p in range(partitions)
        ]

    def apply(self, event: InputEvent) -> list[tuple[str, Outcome]]:
        if type(event) is Tick:
            touched = []
            for part in self.parts:
                touched += part.apply(event)
                self._pump()
            return touched
        user_id: str = event.user_id  # type: ignore[union-attr]
        touched = self.parts[self.partition_of(user_id)].apply(event)
        self._pump()
        return touched

    def _resolve(self, budget: PartitionBudget, pool_id: str) -> None:
        self._pump()
        if budget.waiting_on(pool_id):  # unreachable with instant delivery
            raise RuntimeError(f"partition {budget.partition}: no answer for pool {pool_id}")

    def _pump(self) -> None:
        self.network.pump([part.buckets for part in self.parts])
