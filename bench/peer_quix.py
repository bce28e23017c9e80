"""The Quix Streams side of `python -m bench peer`: the same task, as a Quix user writes it.

Run by the harness with the Python of `.cache/peer-venv` (quixstreams 3.28.1;
this file imports nothing of taskstream):

    python bench/peer_quix.py --bootstrap H:P --group G --prefix P. \
        --output P.rewards --state-dir DIR --template bench/peer_templates.json

One Application (consumer group G, auto_offset_reset earliest, the default
at-least-once guarantee, default RocksDB state with changelog topics)
reads P.claims, P.orders and P.refunds (keyed by user_id, co-partitioned).
The three StreamingDataFrames are concatenated, which is how Quix shares one
state store between topics; it also makes Quix read the co-numbered
partitions in timestamp order (CreateTime, i.e. produce order here).

State: one value per user (the message key), read and written once per
message that concerns a user with a task: claimed_at, deadline, status, the
order ids counted, every order seen in the window with what is left of its
amount, the refund ids applied, refunds held for an order not seen yet,
whether the reward is out, and how many grants there were. Rules of the
cumulative template (the engine's, docs/engine.md): an order counts when the
task is in progress, claimed_at <= at < deadline and its amount is at least
the minimum; repeats of an order, refund or claim do nothing; at the target
the reward is granted; a refund of a counted order that takes progress under
the target revokes it, and later orders before the deadline count again
(the new grant gets a new reward id). Each reward event is one JSON message
to the output topic, keyed by user_id. The pool is ample and not tracked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US = 86_400_000_000
_NOTHING: list[dict[str, Any]] = []


def micros(text: str) -> int:
    """RFC 3339 UTC ("...Z") -> epoch microseconds."""
    delta = datetime.fromisoformat(text) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class Rules:
    def __init__(self, template: dict[str, Any]) -> None:
        self.template_id: str = template["template_id"]
        self.target: int = template["target"]
        self.min_amount: int = template["order_rule"]["min_amount_cents"]
        self.duration_us: int = template["duration_days"] * _DAY_US
        self.amount: int = template["reward"]["amount_cents"]
        self.active_from = micros(template["active_from"])
        self.active_until = micros(template["active_until"])

    def step(self, value: dict[str, Any], state: Any) -> list[dict[str, Any]]:
        """One input message of the current user (the state is theirs)."""
        kind = value["type"]
        task = state.get("task")
        if kind == "task_claim":
            if task is None:
                at = micros(value["at"])
                if self.active_from <= at < self.active_until:
                    state.set("task", self._claimed(value["event_id"], at))
            return _NOTHING  # a re-sent (or second) claim changes nothing
        if task is None:
            return _NOTHING  # no claim: the order or refund counts for nothing
        at = micros(value["at"])
        if task["status"] == "in_progress" and at >= task["deadline"]:
            task["status"] = "expired"
        out = _NOTHING
        if kind == "order_paid":
            out = self._order(task, value, at)
        elif kind == "order_refunded":
            out = self._refund(task, value, at)
        state.set("task", task)
        return out

    def _claimed(self, event_id: str, at: int) -> dict[str, Any]:
        return {
            "claim": event_id,
            "claimed_at": at,
            "deadline": at + self.duration_us,
            "status": "in_progress",
            "counted": [],
            "orders": {},  # order id -> amount left after refunds
            "refunds": [],
            "held": {},  # order id -> [[refund id, amount]]: refunds before their order
            "reward_id": None,  # the reward out now, if any
            "grants": 0,
        }

    @staticmethod
    def _live(task: dict[str, Any], at: int) -> bool:
        return task["status"] != "expired" and task["claimed_at"] <= at < task["deadline"]

    def _order(self, task: dict[str, Any], value: dict[str, Any], at: int) -> list[dict[str, Any]]:
        order_id = value["order_id"]
        if order_id in task["orders"] or not self._live(task, at):
            return _NOTHING
        held = task["held"].pop(order_id, [])
        task["refunds"].extend(rid for rid, _ in held)
        left = value["amount_cents"] - sum(amount for _, amount in held)
        task["orders"][order_id] = left
        if task["status"] != "in_progress" or left < self.min_amount or left <= 0:
            return _NOTHING
        task["counted"].append(order_id)
        if len(task["counted"]) < self.target:
            return _NOTHING
        task["status"] = "completed"
        if task["reward_id"] is not None:
            return _NOTHING
        user = value["user_id"]
        task["reward_id"] = "rwd-" + _digest(user, self.template_id, str(task["grants"]))
        task["grants"] += 1
        return [self._reward("reward_granted", task, value, "task_completed")]

    def _refund(self, task: dict[str, Any], value: dict[str, Any], at: int) -> list[dict[str, Any]]:
        refund_id, order_id = value["refund_id"], value["order_id"]
        if refund_id in task["refunds"]:
            return _NOTHING
        left = task["orders"].get(order_id)
        if left is None:  # the order has not come (yet): hold the refund
            held = task["held"].setdefault(order_id, [])
            if self._live(task, at) and all(rid != refund_id for rid, _ in held):
                held.append([refund_id, value["amount_cents"]])
            return _NOTHING
        task["refunds"].append(refund_id)
        left -= value["amount_cents"]
        task["orders"][order_id] = left
        if order_id not in task["counted"] or (left >= self.min_amount and left > 0):
            return _NOTHING
        task["counted"].remove(order_id)
        if len(task["counted"]) >= self.target:
            return _NOTHING
        if task["status"] == "completed":
            task["status"] = "in_progress" if at < task["deadline"] else "expired"
        if task["reward_id"] is None:
            return _NOTHING
        revoked = self._reward("reward_revoked", task, value, "order_refunded")
        task["reward_id"] = None
        return [revoked]

    def _reward(
        self, kind: str, task: dict[str, Any], value: dict[str, Any], reason: str
    ) -> dict[str, Any]:
        caused_by = value["event_id"]
        return {
            "type": kind,
            "v": 1,
            "event_id": "evt-" + _digest(kind, caused_by, task["reward_id"]),
            "reward_id": task["reward_id"],
            "user_id": value["user_id"],
            "template_id": self.template_id,
            "task_id": "task-" + _digest(value["user_id"], self.template_id, task["claim"]),
            "amount_cents": self.amount,
            "reason": reason,
            "at": value["at"],
            "caused_by": caused_by,
        }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peer_quix")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--prefix", required=True, help="input topics: PREFIX{claims,...}")
    parser.add_argument("--output", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--template", required=True, type=Path)
    parser.add_argument(
        "--commit-interval",
        type=float,
        help="Application(commit_interval=...): how often state is checkpointed (its "
        "changelog and RocksDB written) and offsets committed; Quix's default 5 s if not given",
    )
    args = parser.parse_args(argv)
    (template,) = json.loads(args.template.read_bytes())
    rules = Rules(template)
    from quixstreams import Application  # the peer venv's; the rules above need none

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="INFO",
        **({} if args.commit_interval is None else {"commit_interval": args.commit_interval}),
    )
    claims, orders, refunds = (
        app.dataframe(app.topic(f"{args.prefix}{name}", value_deserializer="json"))
        for name in ("claims", "orders", "refunds")
    )
    sdf = claims.concat(orders).concat(refunds)
    sdf = sdf.apply(rules.step, stateful=True, expand=True)
    sdf.to_topic(app.topic(args.output, value_serializer="json"))
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
