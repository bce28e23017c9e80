"""Budget pools as the core sees them: an interface, and its simple in-memory form.

The core never owns pool state: it calls a `Budget` the caller supplies, so
per-user state and pool state stay separate values. `Ledger` below is one
counter per pool (plain replay); `app.bucketing.PartitionBudget` is the
same interface over one partition's progressive buckets (the workers and
`replay --partitions N`).

Units: for a "cents" pool the core debits the reward's amount, for an
"items" pool one item per reward. A pool id of None means an unbudgeted
reward and never reaches the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from app.catalog import Pool


class Budget(Protocol):
    def try_debit(self, pool_id: str, units: int, reward_id: str) -> bool:
        """Take `units` from the pool for reward `reward_id` if it has them (all
        or nothing); say whether it did. The reward id lets a budget answer from
        a record of decisions already taken (the audit's `RecordedBudget`)."""
        ...

    def credit(self, pool_id: str, units: int) -> None:
        """Give back `units` previously debited (a revoked reward)."""
        ...


@dataclass(frozen=True, slots=True)
class PoolBalance:
    pool_id: str
    total: int
    remaining: int

    @property
    def issued(self) -> int:
        return self.total - self.remaining


class Ledger:
    """The simple form: one counter per pool, in memory, never below zero.

    Invariant: 0 <= remaining <= total, so a pool never pays more than its total.
    """

    __slots__ = ("_remaining", "_totals")

    def __init__(self, pools: Iterable[Pool]) -> None:
        self._totals: dict[str, int] = {p.pool_id: p.total for p in pools}
        self._remaining: dict[str, int] = dict(self._totals)

    @classmethod
    def from_balances(cls, balances: Iterable[PoolBalance]) -> Ledger:
        ledger = cls(())
        for b in balances:
            ledger._totals[b.pool_id] = b.total
            ledger._remaining[b.pool_id] = b.remaining
        return ledger

    def try_debit(self, pool_id: str, units: int, reward_id: str = "") -> bool:
        left = self._remaining[pool_id]
        if units > left:
            return False
        self._remaining[pool_id] = left - units
        return True

    def credit(self, pool_id: str, units: int) -> None:
        left = self._remaining[pool_id] + units
        if left > self._totals[pool_id]:
            raise ValueError(f"pool {pool_id}: credit of {units} would exceed its total")
        self._remaining[pool_id] = left

    def balances(self) -> Mapping[str, PoolBalance]:
        return {
            pid: PoolBalance(pid, total, self._remaining[pid])
            for pid, total in self._totals.items()
        }
