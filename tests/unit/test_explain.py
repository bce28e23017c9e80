"""`taskstream explain`'s core (explain_user) on messages as read from Kafka."""

from __future__ import annotations

from unit.engine_builders import claim, order, refund, t, template

from app.budget import Ledger
from app.catalog import parse_catalog
from app.dead_letters import dead_letter_for
from app.replayer import Replayer
from schemas.codec import encode
from schemas.records import REWARD_RECORDS, InputEvent
from streams.processor import ROLE_OF_TYPE
from taskstream.explain import explain_user
from taskstream.log_reader import LogMessage

CATALOG = parse_catalog([template(target=2)], None)
_REWARDS = {cls.TYPE for cls in REWARD_RECORDS}


def _messages(events: list[InputEvent]) -> list[LogMessage]:
    """The user's inputs and the outputs a faithful worker wrote, on partition 0."""
    offsets: dict[str, int] = {}
    out: list[LogMessage] = []

    def put(topic: str, key: bytes | None, value: bytes) -> None:
        offset = offsets.get(topic, 0)
        offsets[topic] = offset + 1
        out.append(LogMessage(topic, 0, offset, 0, key, value))

    replayer = Replayer(CATALOG, Ledger(()))
    for event in events:
        put(ROLE_OF_TYPE[event.TYPE], b"u1", encode(event))
        for _user, outcome in replayer.apply(event):
            for output in outcome.events:
                put("rewards" if output.TYPE in _REWARDS else "task-events", b"u1", encode(output))
    return out


EVENTS: list[InputEvent] = [
    order("early", at=t(2, 9)),  # before the claim
    claim(at=t(2, 10)),
    order("small", amount=10, at=t(2, 11)),
    order("o1", at=t(2, 12)),
    order("o1", at=t(2, 13), event_id="again"),
    refund("r1", "o1", 2000, at=t(2, 14)),
    order("o2", at=t(2, 15)),
    order("o3", at=t(2, 16)),
]


def test_explain_gives_each_events_reason_and_the_rewards_cause() -> None:
    messages = _messages(EVENTS)
    # A notifier's dead letter keyed by the user is not the user's input.
    refused = dead_letter_for(b"{}", "x.rewards/0@0", "webhook refused")
    messages.append(LogMessage("dead-letters", 0, 0, 0, b"u1", encode(refused)))
    lines, comparison = explain_user("u1", CATALOG, messages, "x.")
    text = "\n".join(lines)
    assert comparison.agrees, text
    for reason in (
        "no task claimed: the order counts for nothing",
        "does not count (amount 10 < min 1000)",
        "duplicate order o1: already applied",
        "order o1: 0 cents left after refunds",
        "t: completed",
        "completed, progress 2/2",
        "reward_granted 500c t (completion), caused by",
        "agree with the replay",
    ):
        assert reason in text, (reason, text)


def test_explain_names_what_the_workers_wrote_differently() -> None:
    messages = _messages(EVENTS)
    messages = [m for m in messages if m.topic != "rewards"]  # the reward never came
    _lines, comparison = explain_user("u1", CATALOG, messages, "x.")
    assert [(f.kind, f.topic) for f in comparison.findings] == [("missing", "rewards")]


def test_explain_of_a_stranger() -> None:
    lines, comparison = explain_user("nobody", CATALOG, _messages(EVENTS), "x.")
    assert comparison.agrees
    assert any("no events for this user" in line for line in lines)


def test_a_refused_reward_says_what_the_partitions_bucket_heard_from_the_master() -> None:
    from schemas.records import BucketGranted, RefillDenied, RewardRejected

    messages = _messages(EVENTS)
    rejected = RewardRejected(
        "evt-r", "rwd-1", "u1", "t", "task-1", 500, None, "cash", "budget_exhausted", t(2, 16),
        "o3",
    )  # fmt: skip
    other = RewardRejected(  # another user of the partition, refused earlier
        "evt-o", "rwd-2", "u2", "t", "task-2", 500, None, "cash", "budget_exhausted", t(2, 11),
        "x",
    )  # fmt: skip
    budget = [
        BucketGranted("g1", "cash", 0, 1, 1_000, 0, "open"),
        RefillDenied("d1", "cash", 0, 2, 500, 4),
        RefillDenied("d2", "cash", 0, 3, 201, 0),
        RefillDenied("d3", "cash", 1, 1, 500, 2),  # another partition's bucket
    ]
    messages += [LogMessage("rewards", 0, 90, 0, b"u1", encode(rejected))]
    messages += [LogMessage("rewards", 0, 91, 0, b"u2", encode(other))]
    messages += [
        LogMessage("budget-grants", m.partition, i, 0, b"cash", encode(m))
        for i, m in enumerate(budget)
    ]
    lines, _ = explain_user("u1", CATALOG, messages, "x.")
    text = "\n".join(lines)
    assert "Why pools refused (the bucket of partition 0, from budget-grants):" in text
    line = next(line for line in lines if line.startswith("  pool cash:"))
    assert "granted this bucket 1000 units in all" in line
    assert "refused 1 of its refill requests (the last for 500 units)" in line
    assert "dry for rewards of 201 units or more (last: the master held 200 units)" in line
    assert "this partition's first refusal: 2024-03-02T11:00:00Z" in line, line
