"""`taskstream audit`: replay the log from Kafka and check what the workers wrote.

    taskstream audit [--templates T.json [--pools P.json]] [--report audit.md|audit.html]
                     [--json audit.json] [--max-listed N] [--tables/--no-tables]

Reads, straight from Kafka and without joining the workers' group: the four
input topics, the task-events, rewards and dead-letters topics, the two
budget topics, and the catalog (the templates topic, unless files are
given). Replays the inputs through the core (`app.audit`: the processor's
order per partition, the workers' recorded budget decisions) and lists
every output event that is missing, extra or different; reconciles every
pool (issued, taken back, refused, granted to and returned by buckets, at
the master, in buckets) and, with --tables, checks the pools against what
the workers' tables say (`taskstream pools status`). Writes a report with a
burn-down chart per pool (a PNG beside the report).

Exit codes: 0 everything agrees; 3 the log and the outputs disagree (or a
pool does not add up); 1 the audit could not run (no broker, missing topic,
bad templates); 2 bad usage.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from app.audit import (
    DEAD_LETTERS,
    OUTPUT_TOPICS,
    REWARDS,
    Comparison,
    Expected,
    InputMessage,
    MessageRef,
    PoolAudit,
    RecordedBudget,
    compare,
    decisions_from,
    late_from,
    reconcile,
    replay_inputs,
)
from app.catalog import Catalog, CatalogError
from schemas.codec import decode, to_wire
from schemas.errors import SchemaError
from schemas.records import AppliedLate, Record
from streams.catalog_feed import CatalogDocs
from streams.config import BUDGET_TOPICS, INPUT_TOPICS, LATE_INPUTS, TEMPLATES, Settings
from streams.kafka.partitioner import partition_for
from streams.processor import decode_message
from taskstream.catalog_files import load_catalog
from taskstream.log_reader import (
    LogMessage,
    TopicMissing,
    partition_count,
    read_topics_with_progress,
)

EXIT_FAILED = 1
EXIT_DISAGREES = 3


@dataclass
class LogSnapshot:
    """Everything the audit reads, decoded as far as it can be."""

    catalog: Catalog
    partitions: int
    inputs: list[InputMessage]
    outputs: list[tuple[str, Mapping[str, Any]]]  # (topic, wire dict)
    rewards: list[Record]  # distinct by event_id
    budget_messages: list[Record]  # distinct
    other_dead_letters: int  # not from an input topic (budget topics, notifier)
    unreadable: list[str] = field(default_factory=list)  # output messages that did not decode
    # The workers' merge decisions: inputs applied after a later event.
    late: dict[MessageRef, AppliedLate] = field(default_factory=dict)


@dataclass
class AuditResult:
    snapshot: LogSnapshot
    expected: Expected
    comparison: Comparison
    pools: list[PoolAudit]
    undecided: list[str]  # reward ids the workers never decided
    table_problems: list[str]

    @property
    def agrees(self) -> bool:
        return (
            self.comparison.agrees
            and not any(p.problems for p in self.pools)
            and not self.table_problems
        )


def connected_settings(tool: str) -> Settings:
    """The settings (bad ones: exit 2 with the reason) of brokers that answer
    (else exit 1 with what is wrong: no broker, refused login, TLS...)."""
    from taskstream.kafka_io import connection_problem

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    problem = connection_problem(settings, timeout=5.0)
    if problem is not None:
        click.echo(f"taskstream {tool}: {problem}", err=True)
        sys.exit(EXIT_FAILED)
    return settings


def catalog_options(command: Callable[..., None]) -> Callable[..., None]:
    """--templates/--pools: the catalog from files instead of the templates
    topic (what the workers hold); see `file_catalog`."""
    command = click.option(
        "--pools",
        "pools_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="With --templates: budget pools (JSON list).",
    )(command)
    return click.option(
        "--templates",
        "templates_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Task templates (JSON list) instead of the templates topic.",
    )(command)


def check_catalog_options(templates_path: Path | None, pools_path: Path | None) -> None:
    if pools_path is not None and templates_path is None:
        raise click.UsageError("--pools needs --templates")


def file_catalog(templates_path: Path | None, pools_path: Path | None) -> Catalog | None:
    """The catalog of --templates/--pools; None: read the templates topic."""
    return None if templates_path is None else load_catalog(templates_path, pools_path)


def read_snapshot(settings: Settings, catalog: Catalog | None, *, progress: bool) -> LogSnapshot:
    topics = [*INPUT_TOPICS, *OUTPUT_TOPICS, *BUDGET_TOPICS, LATE_INPUTS]
    if catalog is None:
        topics.append(TEMPLATES)
    # A deployment whose workers predate the late-inputs topic has none: no
    # input was recorded as applied late.
    messages = read_topics_with_progress(
        settings, topics, progress=progress, optional=(LATE_INPUTS,)
    )
    by_topic: dict[str, list[LogMessage]] = {}
    for message in messages:
        by_topic.setdefault(message.topic, []).append(message)
    if catalog is None:
        catalog = catalog_from_topic(by_topic.get(TEMPLATES, []))
    partitions = partition_count(settings, INPUT_TOPICS[0])
    inputs = [
        InputMessage(
            m.topic, m.partition, m.offset, m.key, m.value, m.source(settings.topic_prefix)
        )
        for t in INPUT_TOPICS
        for m in by_topic.get(t, [])
    ]
    snapshot = LogSnapshot(catalog, partitions, inputs, [], [], [], 0)
    _decode_outputs(snapshot, by_topic, settings)
    snapshot.budget_messages = _distinct_budget(
        m for t in BUDGET_TOPICS for m in by_topic.get(t, [])
    )
    snapshot.late = late_records(by_topic.get(LATE_INPUTS, []), snapshot)
    return snapshot


def late_records(
    messages: Iterable[LogMessage], snapshot: LogSnapshot
) -> dict[MessageRef, AppliedLate]:
    """The `applied_late` decisions of the late-inputs topic. One that does
    not decode is a finding, as an unreadable output is: the replay cannot
    place its input where the worker applied it."""
    records: list[Record] = []
    for message in messages:
        try:
            records.append(decode(message.value or b""))
        except SchemaError as exc:
            where = f"{LATE_INPUTS}/{message.partition}@{message.offset}"
            snapshot.unreadable.append(f"{where}: {exc}")
            snapshot.outputs.append(
                (LATE_INPUTS, {"event_id": f"unreadable {where}", "error": str(exc)})
            )
    return late_from(records)


def catalog_from_topic(messages: Iterable[LogMessage]) -> Catalog:
    """The catalog as the workers hold it: the latest record per key."""
    docs = CatalogDocs()
    for message in messages:
        docs.apply(message.key, message.value)
    return docs.catalog()


def _decode_outputs(
    snapshot: LogSnapshot, by_topic: Mapping[str, list[LogMessage]], settings: Settings
) -> None:
    input_sources = tuple(
        prefix for role in INPUT_TOPICS for prefix in (f"{settings.topic(role)}/", f"{role}/")
    )
    rewards: dict[str, Record] = {}
    for topic in OUTPUT_TOPICS:
        for message in by_topic.get(topic, []):
            where = message.source(settings.topic_prefix)
            try:
                record = decode(message.value or b"")
            except SchemaError as exc:
                snapshot.unreadable.append(f"{where}: {exc}")
                snapshot.outputs.append(
                    (topic, {"event_id": f"unreadable {where}", "error": str(exc)})
                )
                continue
            doc = to_wire(record)
            if topic == DEAD_LETTERS and not str(doc.get("source", "")).startswith(input_sources):
                snapshot.other_dead_letters += 1
                continue
            snapshot.outputs.append((topic, doc))
            if topic == REWARDS:
                rewards.setdefault(str(doc["event_id"]), record)
    snapshot.rewards = list(rewards.values())


def _distinct_budget(messages: Iterable[LogMessage]) -> list[Record]:
    """Budget messages once each: a re-sent batch repeats them with the same
    sequence numbers (commands: the same event id)."""
    seen: dict[tuple[Any, ...], Record] = {}
    for message in messages:
        try:
            record = decode(message.value or b"")
        except SchemaError:
            continue  # a dead letter of its own (the workers wrote one)
        key = (
            record.TYPE,
            getattr(record, "pool_id", ""),
            getattr(record, "partition", -1),
            getattr(record, "seq", getattr(record, "event_id", "")),
        )
        seen.setdefault(key, record)
    return list(seen.values())


def run_audit(snapshot: LogSnapshot) -> AuditResult:
    catalog = snapshot.catalog
    budget = RecordedBudget(catalog.pools.values(), decisions_from(snapshot.rewards, catalog))
    expected = replay_inputs(snapshot.inputs, catalog, budget, decode_message, late=snapshot.late)
    comparison = compare(expected.outputs, snapshot.outputs)
    partitions = snapshot.partitions
    pools = reconcile(
        catalog.pools,
        snapshot.rewards,
        snapshot.budget_messages,
        lambda user_id: partition_for(user_id.encode(), partitions),
    )
    return AuditResult(snapshot, expected, comparison, pools, budget.undecided, [])


def check_tables(settings: Settings, result: AuditResult) -> None:
    """Compare each pool with the workers' tables (what `pools status` reads)."""
    from taskstream.pools import snapshot as pools_snapshot

    sheets = {sheet.pool_id: (master, sheet) for master, sheet in pools_snapshot(settings).sheets()}
    for pool in result.pools:
        found = sheets.get(pool.pool_id)
        if found is None:
            if pool.to_buckets or pool.issued:
                result.table_problems.append(f"{pool.pool_id}: no master in the allocator table")
            continue
        _master, sheet = found
        if not sheet.balanced:
            result.table_problems.append(f"{pool.pool_id}: the tables do not add up to the total")
        if sheet.grants_in_flight or sheet.returns_in_flight:
            continue  # the workers are not at rest: the counts may still move
        if sheet.issued != pool.issued:
            result.table_problems.append(
                f"{pool.pool_id}: the tables say {sheet.issued} issued, "
                f"the reward topic {pool.issued}"
            )
        if sheet.master != pool.at_master:
            result.table_problems.append(
                f"{pool.pool_id}: the master holds {sheet.master}, "
                f"the budget topics say {pool.at_master}"
            )


@click.command("audit")
@catalog_options
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a report here (.md or .html) with a burn-down chart (.png beside it).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every finding and pool figure as JSON here.",
)
@click.option(
    "--max-listed",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Findings printed on the terminal (the report lists them all).",
)
@click.option(
    "--tables/--no-tables",
    default=True,
    help="Also check the pools against the workers' tables (reads their changelogs).",
)
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def audit(
    templates_path: Path | None,
    pools_path: Path | None,
    report_path: Path | None,
    json_path: Path | None,
    max_listed: int,
    tables: bool,
    progress: bool,
) -> None:
    """Replay the inputs from Kafka and compare with every output the workers wrote."""
    from taskstream import audit_report

    check_catalog_options(templates_path, pools_path)
    if report_path is not None and report_path.suffix not in (".md", ".html"):
        raise click.UsageError("--report must end in .md or .html")
    settings = connected_settings("audit")
    try:
        catalog = file_catalog(templates_path, pools_path)
        snapshot = read_snapshot(settings, catalog, progress=progress)
    except (CatalogError, TopicMissing, TimeoutError, OSError) as exc:
        click.echo(f"taskstream audit: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    result = run_audit(snapshot)
    if tables:
        try:
            check_tables(settings, result)
        except (TimeoutError, OSError) as exc:
            click.echo(f"taskstream audit: could not read the tables: {exc}", err=True)
            sys.exit(EXIT_FAILED)
    for line in audit_report.summary(result, max_listed):
        click.echo(line)
    if report_path is not None:
        chart = audit_report.write_report(report_path, result)
        click.echo(f"report: {report_path}" + (f" (chart {chart})" if chart else ""), err=True)
    if json_path is not None:
        json_path.write_bytes(audit_report.as_json(result))
        click.echo(f"json: {json_path}", err=True)
    sys.exit(0 if result.agrees else EXIT_DISAGREES)
