"""The operator page's campaign view: a fold of the output log (pure).

The render API process reads the task-events, rewards and dead-letters
topics from their beginning and hands every decoded record here
(`streams.api.ops_feed`); the page (`streams.api.ops_page`) shows what this keeps:

- per template, the funnel: tasks claimed, claims rejected, tasks in
  progress / completed / expired **now** (the latest status of each task),
  tasks completed at least once, and rewards granted, revoked and rejected;
- per pool, units paid net of revocations and rejected rewards, and the
  burn-down: net units paid per slice of event time (the slices widen as
  the campaign grows, so a series never holds more than MAX_POINTS);
- the latest dead letters, with their reasons.

The log is at-least-once: a worker that crashed mid-batch writes the
batch's outputs again, identical and with the same event ids. A record whose
`event_id` is among the last DEDUPE_WINDOW ids seen is a copy and is
skipped; copies come within one batch of each other, far inside that window.
Task statuses are kept per task id (about 100 bytes a task), so the
current counts do not depend on copies at all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from app.catalog import Pool
from schemas.records import (
    ClaimRejected,
    DeadLetter,
    Record,
    RewardGranted,
    RewardRejected,
    RewardRevoked,
    TaskAdvanced,
    TaskClaimed,
    TaskCompleted,
    TaskExpired,
    TaskRolledBack,
)

DEDUPE_WINDOW = 200_000
MAX_POINTS = 240  # burn-down slices kept per pool
FIRST_SLICE_MICROS = 1_000_000  # one second; doubled whenever a series outgrows MAX_POINTS
LAST_DEAD_LETTERS = 20

IN_PROGRESS, COMPLETED, EXPIRED = "in_progress", "completed", "expired"
_STATUS_OF = {
    TaskClaimed.TYPE: IN_PROGRESS,
    TaskCompleted.TYPE: COMPLETED,
    TaskExpired.TYPE: EXPIRED,
}
_OUTPUT_TYPES = (
    TaskClaimed,
    ClaimRejected,
    TaskAdvanced,
    TaskCompleted,
    TaskExpired,
    TaskRolledBack,
    RewardGranted,
    RewardRevoked,
    RewardRejected,
    DeadLetter,
)


@dataclass
class Funnel:
    """One template's counts (tasks, or reward events for the reward columns)."""

    claimed: int = 0
    claims_rejected: int = 0
    in_progress: int = 0
    completed: int = 0
    expired: int = 0
    completed_ever: int = 0
    rewards_granted: int = 0
    rewards_revoked: int = 0
    rewards_rejected: int = 0


@dataclass
class PoolBurn:
    """What the log says one pool paid, and when (units: cents or items)."""

    granted: int = 0  # units of rewards granted
    revoked: int = 0  # units of rewards revoked (back to the pool)
    rejected: int = 0  # rewards the pool refused (a count)
    slice_micros: int = FIRST_SLICE_MICROS
    net_by_slice: dict[int, int] = field(default_factory=dict)  # slice start -> net units

    @property
    def issued(self) -> int:
        return self.granted - self.revoked

    def add(self, at: int, units: int) -> None:
        start = at - at % self.slice_micros
        self.net_by_slice[start] = self.net_by_slice.get(start, 0) + units
        while len(self.net_by_slice) > MAX_POINTS:
            self._widen()

    def _widen(self) -> None:
        self.slice_micros *= 2
        widened: dict[int, int] = {}
        for start, units in self.net_by_slice.items():
            wide = start - start % self.slice_micros
            widened[wide] = widened.get(wide, 0) + units
        self.net_by_slice = widened

    def series(self) -> list[tuple[int, int]]:
        """(slice start µs, units issued by the end of that slice), in time order."""
        total, points = 0, []
        for start in sorted(self.net_by_slice):
            total += self.net_by_slice[start]
            points.append((start, total))
        return points


@dataclass(frozen=True, slots=True)
class DeadLetterSeen:
    offset: str  # "topic/partition@offset" of the dead letter itself
    at_ms: int  # when the broker appended it
    reason: str
    source: str
    payload: str


class CampaignView:
    """Folds output records, in each partition's order, into the page's numbers."""

    def __init__(self, dedupe_window: int = DEDUPE_WINDOW) -> None:
        self.funnels: dict[str, Funnel] = {}
        self.pools: dict[str, PoolBurn] = {}
        self.dead_letters: deque[DeadLetterSeen] = deque(maxlen=LAST_DEAD_LETTERS)
        self.dead_letter_count = 0
        self.records = 0  # applied (copies and unreadable ones excluded)
        self.copies = 0
        self.unreadable = 0
        self._status: dict[str, str] = {}  # task id -> latest status
        self._completed_once: set[str] = set()
        self._window = dedupe_window
        self._recent: deque[str] = deque()
        self._recent_ids: set[str] = set()

    def apply(
        self, record: Record | None, pools: Mapping[str, Pool], where: str = "", at_ms: int = 0
    ) -> None:
        """One output record as decoded from its topic (None: it could not be
        decoded); `where`: its position and `at_ms` its broker timestamp, shown
        for dead letters."""
        if record is None or not isinstance(record, _OUTPUT_TYPES):
            self.unreadable += 1
            return
        if self._seen(record.event_id):
            self.copies += 1
            return
        if isinstance(record, DeadLetter):
            self._dead_letter(record, where, at_ms)
        elif isinstance(record, RewardGranted | RewardRevoked | RewardRejected):
            self._reward(record, pools)
        elif isinstance(record, ClaimRejected):
            self._funnel(record.template_id).claims_rejected += 1
        elif not isinstance(record, TaskAdvanced):  # progress alone changes no status
            self._task(record)
        self.records += 1

    def apply_all(self, records: Iterable[Record], pools: Mapping[str, Pool]) -> None:
        for record in records:
            self.apply(record, pools)

    # ------------------------------------------------------------ the parts

    def _seen(self, event_id: str) -> bool:
        if event_id in self._recent_ids:
            return True
        self._recent.append(event_id)
        self._recent_ids.add(event_id)
        if len(self._recent) > self._window:
            self._recent_ids.discard(self._recent.popleft())
        return False

    def _funnel(self, template_id: str) -> Funnel:
        funnel = self.funnels.get(template_id)
        if funnel is None:
            funnel = self.funnels[template_id] = Funnel()
        return funnel

    def _task(self, record: TaskClaimed | TaskCompleted | TaskExpired | TaskRolledBack) -> None:
        funnel = self._funnel(record.template_id)
        status = record.status if isinstance(record, TaskRolledBack) else _STATUS_OF[record.TYPE]
        before = self._status.get(record.task_id)
        if before is None:
            # A new task (its claim; or, when the claim's segment was deleted
            # by retention, the first event of it still in the log).
            funnel.claimed += 1
        else:
            self._count(funnel, before, -1)
        self._status[record.task_id] = status
        self._count(funnel, status, +1)
        if status == COMPLETED and record.task_id not in self._completed_once:
            self._completed_once.add(record.task_id)
            funnel.completed_ever += 1

    @staticmethod
    def _count(funnel: Funnel, status: str, step: int) -> None:
        if status == IN_PROGRESS:
            funnel.in_progress += step
        elif status == COMPLETED:
            funnel.completed += step
        else:
            funnel.expired += step

    def _reward(
        self, record: RewardGranted | RewardRevoked | RewardRejected, pools: Mapping[str, Pool]
    ) -> None:
        funnel = self._funnel(record.template_id)
        burn = None
        if record.pool_id is not None:
            burn = self.pools.get(record.pool_id)
            if burn is None:
                burn = self.pools[record.pool_id] = PoolBurn()
        pool = None if record.pool_id is None else pools.get(record.pool_id)
        units = 1 if pool is not None and pool.unit == "items" else record.amount_cents
        if isinstance(record, RewardGranted):
            funnel.rewards_granted += 1
            if burn is not None:
                burn.granted += units
                burn.add(record.at, units)
        elif isinstance(record, RewardRevoked):
            funnel.rewards_revoked += 1
            if burn is not None:
                burn.revoked += units
                burn.add(record.at, -units)
        else:
            funnel.rewards_rejected += 1
            if burn is not None:
                burn.rejected += 1

    def _dead_letter(self, record: DeadLetter, where: str, at_ms: int) -> None:
        payload = record.payload
        if payload is None:
            payload = "(binary, base64) " + (record.payload_b64 or "")
        self.dead_letter_count += 1
        self.dead_letters.append(
            DeadLetterSeen(where, at_ms, record.reason, record.source, payload[:300])
        )
