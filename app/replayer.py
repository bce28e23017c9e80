"""Drive the engine over a whole log in memory: every user, the pools, the ticks.

What the replay tool, the benchmark and the property tests share. Pure: the
caller decodes the events and writes the outputs. Per-user states live in a
dict, pools in the `Budget` handed in (separate values, as in the stream
layer), ticks reach the users the `DeadlineIndex` says are due.
"""

from __future__ import annotations

from app.budget import Budget
from app.catalog import Catalog
from app.deadlines import DeadlineIndex
from app.engine import Outcome, handle
from app.state import UserState
from schemas.records import InputEvent, Tick


class Replayer:
    __slots__ = ("budget", "catalog", "deadlines", "states")

    def __init__(self, catalog: Catalog, budget: Budget) -> None:
        self.catalog = catalog
        self.budget = budget
        self.states: dict[str, UserState] = {}
        self.deadlines = DeadlineIndex()

    def apply(self, event: InputEvent) -> list[tuple[str, Outcome]]:
        """Apply one event; return (user_id, outcome) for every user it touched."""
        if type(event) is Tick:
            return self._tick(event)
        user_id = event.user_id  # type: ignore[union-attr]  # every non-tick input has one
        state = self.states.get(user_id)
        outcome = self._decide(state, event)
        if outcome.state is not state:
            self._store(user_id, state, outcome.state)
        return [(user_id, outcome)]

    def apply_user_event(self, user_id: str, event: InputEvent) -> Outcome:
        """The hot path for a keyed (non-tick) event: one outcome, no list."""
        state = self.states.get(user_id)
        outcome = self._decide(state, event)
        if outcome.state is not state:
            self._store(user_id, state, outcome.state)
        return outcome

    def _tick(self, tick: Tick) -> list[tuple[str, Outcome]]:
        touched = []
        for user_id in self.due_users(tick.at):
            outcome = self.tick_user(user_id, tick)
            if outcome is not None:
                touched.append((user_id, outcome))
        return touched

    def due_users(self, at: int) -> list[str]:
        """The users whose deadline index entry is <= at (taken out of the index)."""
        return self.deadlines.pop_due(at)

    def tick_user(self, user_id: str, tick: Tick) -> Outcome | None:
        """Apply a tick to one user `due_users` named; None for a stale entry
        (that deadline moved or went away). The audit calls this per user, as
        the processor does, so an engine error costs that user only."""
        state = self.states.get(user_id)
        if state is None or state.next_deadline is None or state.next_deadline > tick.at:
            return None
        outcome = self._decide(state, tick)
        if outcome.state is not state:
            self._store(user_id, state, outcome.state)
        return outcome

    def _decide(self, state: UserState | None, event: InputEvent) -> Outcome:
        return handle(state, event, self.catalog, self.budget)

    def _store(self, user_id: str, old: UserState | None, new: UserState | None) -> None:
        if new is None:
            self.states.pop(user_id, None)
        else:
            self.states[user_id] = new
        self.deadlines.update(
            user_id,
            None if old is None else old.next_deadline,
            None if new is None else new.next_deadline,
        )
