"""`taskstream explain USER_ID`: "why didn't I get my reward?", answered from Kafka.

    taskstream explain USER_ID [--templates T.json [--pools P.json]]

Reads the user's partition of the input and output topics (users live on
partition murmur2(user_id) % N, like the workers' tables), replays that
user's events and the partition's ticks through the core with the budget
decisions the workers recorded, and prints:

1. the timeline: each of the user's events, what it did or why it did not
   count (order too small or on the wrong channel, outside the task's
   window, refunded, a duplicate...), and the events it caused; messages
   that never became events (dead letters) with their reason;
2. the state of each task now: status, progress, deadline, what it paid;
3. every reward the workers wrote for the user, with the event that caused it;
4. any difference between what the workers wrote and what the replay says.

Exit codes: 0 explained (also for a user with no events: it says so); 3 the
workers' outputs for this user differ from the replay; 1 could not run
(no broker, missing topic, bad templates); 2 bad usage.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from app.audit import (
    DEAD_LETTERS,
    REWARDS,
    TASK_EVENTS,
    Applied,
    Comparison,
    InputMessage,
    RecordedBudget,
    compare,
    decisions_from,
    late_from,
    replay_inputs,
)
from app.catalog import Catalog, CatalogError
from app.state import UserState
from schemas.codec import decode, to_wire
from schemas.errors import SchemaError
from schemas.records import (
    BucketGranted,
    BucketRecalled,
    InputEvent,
    Record,
    RefillDenied,
    RewardRejected,
)
from schemas.timestamps import format_utc
from streams.config import BUDGET_GRANTS, INPUT_TOPICS, LATE_INPUTS, TEMPLATES
from streams.kafka.partitioner import partition_for
from streams.processor import decode_message
from taskstream.audit import (
    EXIT_DISAGREES,
    EXIT_FAILED,
    catalog_from_topic,
    catalog_options,
    check_catalog_options,
    connected_settings,
    file_catalog,
)
from taskstream.log_reader import (
    LogMessage,
    TopicMissing,
    partition_count,
    read_topics,
    read_topics_with_progress,
)
from taskstream.replay import explain_event


def explain_user(
    user_id: str,
    catalog: Catalog,
    messages: Sequence[LogMessage],
    prefix: str,
) -> tuple[list[str], Comparison]:
    """The explanation's lines and the comparison of the user's outputs with
    the replay. `messages`: the user's partition of the inputs and outputs."""
    key = user_id.encode()
    inputs = [
        InputMessage(m.topic, m.partition, m.offset, m.key, m.value, m.source(prefix))
        for m in messages
        if m.topic in INPUT_TOPICS and (m.key == key or m.topic == "ticks")
    ]
    outputs = _user_outputs(user_id, messages, prefix)
    rewards = [record for topic, record in outputs if topic == REWARDS]
    budget = RecordedBudget(catalog.pools.values(), decisions_from(rewards, catalog))
    applied: list[Applied] = []
    expected = replay_inputs(
        inputs,
        catalog,
        budget,
        decode_message,
        late=late_from(_decoded(m for m in messages if m.topic == LATE_INPUTS)),
        on_applied=lambda a: applied.append(a) if a.user_id == user_id else None,
    )
    mine = [
        (topic, record)
        for topic, record in expected.outputs
        if getattr(record, "user_id", None) == user_id
        # The user's own unusable messages (the partition's ticks are not theirs).
        or (topic == DEAD_LETTERS and "ticks/" not in str(getattr(record, "source", "")))
    ]
    comparison = compare(mine, [(topic, to_wire(record)) for topic, record in outputs])
    lines = [f"user {user_id}: {len(applied)} event(s) applied"]
    lines += _timeline(applied, [r for t, r in mine if t == DEAD_LETTERS])
    partition = inputs[0].partition if inputs else None
    replayer = None if partition is None else expected.replayers.get(partition)
    lines += _tasks(None if replayer is None else replayer.states.get(user_id), catalog)
    lines += _rewards(rewards, {a.event.event_id: a.event for a in applied})
    if partition is not None:
        lines += _refusals(rewards, partition, messages)
    lines += _differences(comparison)
    return lines, comparison


def _decoded(messages: Iterable[LogMessage]) -> Iterator[Record]:
    for m in messages:
        try:
            yield decode(m.value or b"")
        except SchemaError:
            continue  # the audit lists it; here it only cannot place its input


def _user_outputs(
    user_id: str, messages: Sequence[LogMessage], prefix: str
) -> list[tuple[str, Record]]:
    """The user's outputs: task events and rewards naming them, and the dead
    letters of their input messages (not a notifier's, nor a budget topic's)."""
    key = user_id.encode()
    input_sources = tuple(
        start for role in INPUT_TOPICS for start in (f"{prefix}{role}/", f"{role}/")
    )
    outputs: list[tuple[str, Record]] = []
    for m in messages:
        if m.topic not in (TASK_EVENTS, REWARDS, DEAD_LETTERS):
            continue
        try:
            record = decode(m.value or b"")
        except SchemaError:
            continue
        if getattr(record, "user_id", None) == user_id or (
            m.topic == DEAD_LETTERS
            and m.key == key
            and str(getattr(record, "source", "")).startswith(input_sources)
        ):
            outputs.append((m.topic, record))
    return outputs


def _timeline(applied: Sequence[Applied], dead: Sequence[Record]) -> Iterator[str]:
    yield ""
    yield "Timeline (event time, as the workers apply it):"
    if not applied and not dead:
        yield "  no events for this user in the log"
    for item in applied:
        text = explain_event(0, item.event, item.outcome, where=f"  {item.message.source}")
        yield text
    for letter in dead:
        doc = to_wire(letter)
        yield f"  {doc['source']}: not an event, a dead letter ({doc['reason']})"


def _tasks(state: UserState | None, catalog: Catalog) -> Iterator[str]:
    yield ""
    yield "Tasks now:"
    if state is None or not state.instances:
        yield "  none claimed"
        return
    for inst in state.instances:
        template = catalog.templates.get(inst.template_id)
        target = "?" if template is None else str(template.target)
        yield (
            f"  {inst.template_id} ({inst.task_id}): {inst.status}, progress {inst.progress}/"
            f"{target}, claimed {format_utc(inst.claimed_at)}, deadline "
            f"{format_utc(inst.deadline)}, paid {inst.net_paid_cents()} cents net"
        )


def _rewards(rewards: Sequence[Record], causes: Mapping[str, InputEvent]) -> Iterator[str]:
    yield ""
    yield "Rewards written by the workers:"
    if not rewards:
        yield "  none"
    seen: set[str] = set()
    for record in sorted(rewards, key=lambda r: (getattr(r, "at", 0), str(r))):
        doc: dict[str, Any] = to_wire(record)
        if doc["event_id"] in seen:
            continue  # an at-least-once copy
        seen.add(doc["event_id"])
        cause = causes.get(doc["caused_by"])
        because = "an event not in the log" if cause is None else _short(cause)
        pool = "" if doc["pool_id"] is None else f" from pool {doc['pool_id']}"
        yield (
            f"  {doc['at']} {doc['type']} {doc['amount_cents']}c "
            f"{doc['template_id']}{pool} ({doc['reason']}), caused by {because}"
        )


def _refusals(
    rewards: Sequence[Record], partition: int, messages: Sequence[LogMessage]
) -> Iterator[str]:
    """For each pool that refused this user a reward: what the partition's
    bucket heard from the pool's master (budget-grants, this partition),
    and when this partition first refused a reward of that pool."""
    refused_pools = sorted(
        {str(r.pool_id) for r in rewards if isinstance(r, RewardRejected) and r.pool_id is not None}
    )
    if not refused_pools:
        return
    heard: list[Record] = []
    first_refusal: dict[str, int] = {}
    for m in messages:
        if m.partition != partition or m.topic not in (BUDGET_GRANTS, REWARDS):
            continue
        try:
            record = decode(m.value or b"")
        except SchemaError:
            continue
        if isinstance(record, RewardRejected) and record.pool_id is not None:
            pool = str(record.pool_id)
            first_refusal[pool] = min(first_refusal.get(pool, record.at), record.at)
        elif m.topic == BUDGET_GRANTS:
            heard.append(record)
    yield ""
    yield f"Why pools refused (the bucket of partition {partition}, from budget-grants):"
    for pool in refused_pools:
        mine = [r for r in heard if getattr(r, "pool_id", None) == pool]
        answers = [r for r in mine if isinstance(r, RefillDenied) and r.request_seq]
        notices = [r for r in mine if isinstance(r, RefillDenied) and not r.request_seq]
        recalls = [r for r in mine if isinstance(r, BucketRecalled)]
        granted = sum(r.units for r in mine if isinstance(r, BucketGranted))
        parts = [f"the master granted this bucket {granted} units in all"]
        if answers:
            parts.append(
                f"refused {len(answers)} of its refill requests (the last for "
                f"{answers[-1].units} units)"
            )
        if notices:
            floor = notices[-1].units
            held = "closed" if floor <= 1 else f"the master held {floor - 1} units"
            parts.append(
                f"told it {len(notices)} time(s) the pool was dry for rewards of "
                f"{floor} units or more (last: {held})"
            )
        if recalls:
            parts.append(
                f"recalled its units {len(recalls)} time(s) (last to mode {recalls[-1].mode})"
            )
        if not answers and not notices:
            parts.append("never refused it: the pool was closed, or see `pools status`")
        since = first_refusal.get(pool)
        when = "" if since is None else f"; this partition's first refusal: {format_utc(since)}"
        yield f"  pool {pool}: " + "; ".join(parts) + when


def _short(event: InputEvent) -> str:
    from taskstream.replay import describe_event

    return describe_event(event)


def _differences(comparison: Comparison) -> Iterator[str]:
    if comparison.agrees:
        yield ""
        yield "The workers' outputs for this user agree with the replay."
        return
    yield ""
    yield "DIFFERENCES between the workers' outputs and the replay:"
    for finding in comparison.findings:
        doc = finding.expected if finding.expected is not None else finding.actual
        assert doc is not None
        yield f"  {finding.kind} {finding.topic} {doc.get('type')} {finding.event_id}"


@click.command("explain")
@click.argument("user_id")
@catalog_options
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def explain(
    user_id: str, templates_path: Path | None, pools_path: Path | None, progress: bool
) -> None:
    """Explain what a user's events did, from Kafka: why a reward came or not."""
    check_catalog_options(templates_path, pools_path)
    if not user_id.strip():
        raise click.UsageError("USER_ID must not be empty")
    settings = connected_settings("explain")
    try:
        catalog = file_catalog(templates_path, pools_path)
        if catalog is None:
            catalog = catalog_from_topic(read_topics(settings, [TEMPLATES]))
        partitions = partition_count(settings, INPUT_TOPICS[0])
        partition = partition_for(user_id.encode(), partitions)
        messages = read_topics_with_progress(
            settings,
            [*INPUT_TOPICS, TASK_EVENTS, REWARDS, DEAD_LETTERS, BUDGET_GRANTS, LATE_INPUTS],
            progress=progress,
            partitions=[partition],
            optional=(LATE_INPUTS,),
        )
    except (CatalogError, TopicMissing, TimeoutError, OSError) as exc:
        click.echo(f"taskstream explain: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    lines, comparison = explain_user(user_id, catalog, messages, settings.topic_prefix)
    click.echo(f"partition {partition} of {partitions}")
    for line in lines:
        click.echo(line)
    sys.exit(0 if comparison.agrees else EXIT_DISAGREES)
