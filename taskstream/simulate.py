"""`taskstream simulate`: price proposed templates and pools on a recorded log.

    taskstream simulate --templates T.json [--pools P.json]
                        (--events IN.jsonl | --from-kafka) [--since T0] [--until T1]
                        [--claim-all | --claim TEMPLATE_ID ...] [--claims-at T] [--user-tag TAG ...]
                        [--json REPORT.json] [--chart CHART.png] [--progress/--no-progress]

The log runs through the same fold as `taskstream replay` (app.simulation),
so its payouts are replay's to the cent. Per template it reports eligible
users, claims, completions, payout, rejected rewards and, for a lottery,
draws, the cost per draw and per-prize counts; per pool what was issued,
what is left and the input event at which it first refused a reward.

Sources: a JSON-lines file (as replay reads it, used in file order), or the
input topics (claims, orders, refunds, ticks) as they are in Kafka now,
merged into event-time order (at, then claims < orders < refunds < ticks,
then partition, offset; a tick broadcast to every partition counts once).
--since/--until keep events with since <= at < until. Lines or messages
that are not valid input events are counted on stderr and skipped.

Claims: a log of a past period holds no claims for a template that does
not exist yet. --claim TEMPLATE_ID (repeatable) or --claim-all makes every
user seen in the log claim those templates at their first event, or, with
--claims-at T, users seen before T claim at T and later users on arrival;
--user-tag gives those claims tags. Claims in the log are used as they are.

Exit codes: 0 done, 1 failed (invalid templates or pools, unreadable log,
broker unreachable, a topic missing: the message says which),
2 bad usage.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import click
import orjson
from tqdm import tqdm

from app.catalog import Catalog, CatalogError
from app.simulation import ClaimSynthesis, PoolTally, SimulationReport, Simulator, TemplateTally
from schemas.codec import decode_input
from schemas.errors import SchemaError
from schemas.records import InputEvent, Tick
from schemas.timestamps import format_utc, parse_utc
from taskstream.catalog_files import load_catalog

EXIT_FAILED = 1
ROLE_ORDER = ("claims", "orders", "refunds", "ticks")  # tie-break at one instant
JSON_POINTS = 500  # at most this many points per series in the JSON report


class SimulateFailed(Exception):
    """The log could not be read (the message says why)."""


@dataclass(slots=True)
class SourceStats:
    read: int = 0  # lines or messages
    invalid: int = 0
    outside: int = 0  # outside --since/--until
    duplicate_ticks: int = 0
    first_invalid: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    since: int | None
    until: int | None

    def holds(self, at: int) -> bool:
        return (self.since is None or self.since <= at) and (self.until is None or at < self.until)


# ------------------------------------------------------------------ sources


def file_events(
    lines: Iterable[bytes], window: Window, stats: SourceStats
) -> Iterator[tuple[InputEvent, str]]:
    """Decoded events of a JSON-lines log, in file order, with their line numbers."""
    for number, raw in enumerate(lines, start=1):
        stats.read = number
        line = raw.strip()
        if not line:
            continue
        event = _decode(line, f"line {number}", stats)
        if event is None:
            continue
        if not window.holds(event.at):
            stats.outside += 1
            continue
        yield event, f"line {number}"


def kafka_events(
    read: Callable[[], Iterable[tuple[str, int, int, bytes | None]]],
    window: Window,
    stats: SourceStats,
) -> list[tuple[InputEvent, str]]:
    """Decoded input-topic messages (topic, partition, offset, value) merged into
    one event-time ordered log; ticks broadcast to every partition kept once."""
    keyed: list[tuple[tuple[int, int, int, int], InputEvent, str]] = []
    ticks_seen: set[str] = set()
    for topic, partition, offset, value in read():
        stats.read += 1
        where = f"{topic}/{partition}@{offset}"
        event = None if value is None else _decode(value, where, stats)
        if event is None:
            if value is None:
                _invalid(stats, where, "empty message")
            continue
        if not window.holds(event.at):
            stats.outside += 1
            continue
        if type(event) is Tick:
            if event.event_id in ticks_seen:
                stats.duplicate_ticks += 1
                continue
            ticks_seen.add(event.event_id)
        role = ROLE_ORDER.index(topic) if topic in ROLE_ORDER else len(ROLE_ORDER)
        keyed.append(((event.at, role, partition, offset), event, where))
    keyed.sort(key=lambda item: item[0])
    return [(event, where) for _key, event, where in keyed]


def _decode(raw: bytes, where: str, stats: SourceStats) -> InputEvent | None:
    try:
        return decode_input(raw)
    except SchemaError as exc:
        _invalid(stats, where, str(exc))
        return None


def _invalid(stats: SourceStats, where: str, reason: str) -> None:
    stats.invalid += 1
    if not stats.first_invalid:
        stats.first_invalid = f"{where}: {reason}"


def _read_kafka(progress: bool) -> Callable[[], list[tuple[str, int, int, bytes | None]]]:
    def read() -> list[tuple[str, int, int, bytes | None]]:
        from streams.config import INPUT_TOPICS, Settings
        from taskstream.kafka_io import broker_answers
        from taskstream.log_reader import TopicMissing, read_topics

        try:
            settings = Settings.from_env()
        except ValueError as exc:
            raise SimulateFailed(str(exc)) from None
        if not broker_answers(settings, timeout=5.0):
            raise SimulateFailed(
                f"no Kafka broker answers at {settings.bootstrap}: start it with "
                "`make kafka-up`, or set KAFKA_BOOTSTRAP to your cluster"
            )
        with tqdm(
            unit=" msg", desc="reading topics", file=sys.stderr, disable=not progress or None
        ) as bar:

            def total(n: int) -> None:
                bar.total = n
                bar.refresh()

            try:
                messages = read_topics(
                    settings, INPUT_TOPICS, on_message=bar.update, on_total=total
                )
            except (TopicMissing, TimeoutError) as exc:
                raise SimulateFailed(str(exc)) from None
        return [(m.topic, m.partition, m.offset, m.value) for m in messages]

    return read


# ------------------------------------------------------------------ report


def report_lines(report: SimulationReport) -> list[str]:
    """The human-readable report: one block per template, one line per pool."""
    span = (
        "no events"
        if report.first_at is None or report.last_at is None
        else f"{format_utc(report.first_at)} .. {format_utc(report.last_at)}"
    )
    lines = [
        f"simulated {report.events} input events ({span}), "
        f"{report.synthetic_claims} synthesised claims",
        "",
        f"{'template':<24} {'eligible':>9} {'claimed':>8} {'complete':>9} "
        f"{'payout ¢':>14} {'rejected #':>10} {'¢ per draw':>10}",
    ]
    for t in report.templates:
        per_draw = "" if t.cost_per_draw is None else _cents(round(t.cost_per_draw))
        lines.append(
            f"{t.template_id:<24} {len(t.eligible_users):>9} {len(t.claimed_users):>8} "
            f"{t.completions:>9} {_cents(t.payout_cents):>14} {t.rejected:>10} {per_draw:>10}"
        )
        lines.extend(f"    {detail}" for detail in _template_details(t))
    lines += ["", f"{'pool':<24} {'unit':<6} {'total':>12} {'issued':>12} {'left':>12}  runs dry"]
    for p in report.pools:
        lines.append(
            f"{p.pool_id:<24} {p.unit:<6} {p.total:>12} {p.issued:>12} {p.remaining:>12}  "
            + _dry_text(p)
        )
    if report.unknown_template_claims:
        names = ", ".join(sorted(report.unknown_template_claims))
        lines += [
            "",
            f"{sum(report.unknown_template_claims.values())} claim(s) in the log for templates "
            f"not in the templates file (rejected as unknown_template): {names}",
        ]
    return lines


def _template_details(t: TemplateTally) -> list[str]:
    details = [
        f"claims {t.claims} ({len(t.advanced_users)} users advanced), expired {t.expiries}, "
        f"granted {t.granted} ({_cents(t.granted_cents)}), revoked {t.revoked} "
        f"({_cents(t.revoked_cents)}), rejected for budget {t.rejected} "
        f"({_cents(t.rejected_cents)})"
    ]
    if t.rejections:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(t.rejections.items()))
        details.append(f"claims rejected: {reasons}")
    if t.mode == "lottery":
        expected = t.expected_cost_per_draw or 0.0
        prizes = ", ".join(
            f"{prize_id} {tally.net}" + (f" (+{tally.rejected} rejected)" if tally.rejected else "")
            for prize_id, tally in sorted(t.prizes.items())
        )
        details.append(
            f"lottery: {t.draws} draws, expected cost per draw {_cents(round(expected))}; "
            f"prizes: {prizes or 'none'}"
        )
    return details


def _dry_text(pool: PoolTally) -> str:
    if pool.dry is None:
        return "never"
    dry = pool.dry
    return (
        f"{format_utc(dry.event.at)} at {dry.event.where} (event {dry.event.event_id}): "
        f"{dry.template_id} needed {dry.units}, {dry.remaining} left; "
        f"{pool.refusals} refusal(s) in all"
    )


def _cents(cents: int) -> str:
    return f"{cents:,}"


def report_json(report: SimulationReport) -> dict[str, object]:
    """The machine-readable report (times RFC 3339, money integer cents)."""
    return {
        "events": report.events,
        "synthetic_claims": report.synthetic_claims,
        "first_at": _time(report.first_at),
        "last_at": _time(report.last_at),
        "unknown_template_claims": dict(sorted(report.unknown_template_claims.items())),
        "templates": [_template_json(t) for t in report.templates],
        "pools": [_pool_json(p) for p in report.pools],
    }


def _template_json(t: TemplateTally) -> dict[str, object]:
    return {
        "template_id": t.template_id,
        "mode": t.mode,
        "pool_id": t.pool_id,
        "eligible_users": len(t.eligible_users),
        "claimed_users": len(t.claimed_users),
        "advanced_users": len(t.advanced_users),
        "claims": t.claims,
        "claim_rejections": dict(sorted(t.rejections.items())),
        "completions": t.completions,
        "expiries": t.expiries,
        "rewards_granted": t.granted,
        "granted_cents": t.granted_cents,
        "rewards_revoked": t.revoked,
        "revoked_cents": t.revoked_cents,
        "payout_cents": t.payout_cents,
        "rewards_rejected": t.rejected,
        "rejected_cents": t.rejected_cents,
        "lottery": _lottery_json(t),
        "payout_over_time": _series(t.payout_points),
    }


def _lottery_json(t: TemplateTally) -> dict[str, object] | None:
    if t.mode != "lottery":
        return None
    prizes = {
        prize_id: {"net": p.net, "granted": p.granted, "revoked": p.revoked, "rejected": p.rejected}
        for prize_id, p in sorted(t.prizes.items())
    }
    return {
        "draws": t.draws,
        "cost_per_draw_cents": t.cost_per_draw,
        "expected_cost_per_draw_cents": t.expected_cost_per_draw,
        "prizes": prizes,
    }


def _pool_json(p: PoolTally) -> dict[str, object]:
    dry = p.dry
    return {
        "pool_id": p.pool_id,
        "unit": p.unit,
        "total": p.total,
        "issued": p.issued,
        "remaining": p.remaining,
        "refusals": p.refusals,
        "runs_dry": None
        if dry is None
        else {
            "event_id": dry.event.event_id,
            "at": format_utc(dry.event.at),
            "where": dry.event.where,
            "template_id": dry.template_id,
            "units_needed": dry.units,
            "remaining": dry.remaining,
        },
        "issued_over_time": _series(p.points),
    }


def _series(points: list[tuple[int, int]]) -> list[list[object]]:
    """[[at, value], ...], thinned to at most JSON_POINTS (the last point always kept)."""
    if len(points) > JSON_POINTS:
        step = len(points) / (JSON_POINTS - 1)
        points = [points[int(i * step)] for i in range(JSON_POINTS - 1)] + [points[-1]]
    return [[format_utc(at), value] for at, value in points]


def _time(at: int | None) -> str | None:
    return None if at is None else format_utc(at)


def write_chart(path: Path, report: SimulationReport, title: str) -> None:
    from taskstream.charts import PayoutSeries, PoolSeries, pool_burn_down

    pools = [
        PoolSeries(
            p.pool_id,
            p.unit,
            p.total,
            tuple(p.points),
            None if p.dry is None else p.dry.event.at,
        )
        for p in report.pools
    ]
    payouts = [PayoutSeries(t.template_id, tuple(t.payout_points)) for t in report.templates]
    pool_burn_down(path, pools, title, payouts=payouts)


# -------------------------------------------------------------------- command


def _time_option(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_utc(value)
    except SchemaError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _synthesis(
    catalog: Catalog,
    claim_ids: tuple[str, ...],
    claim_all: bool,
    claims_at: int | None,
    tags: tuple[str, ...],
) -> ClaimSynthesis | None:
    if claim_all and claim_ids:
        raise click.UsageError("give --claim-all or --claim, not both")
    if not claim_all and not claim_ids:
        if claims_at is not None or tags:
            raise click.UsageError("--claims-at and --user-tag need --claim or --claim-all")
        return None
    unknown = [t for t in claim_ids if t not in catalog.templates]
    if unknown:
        raise click.BadParameter(
            f"not in the templates file: {', '.join(unknown)}", param_hint="--claim"
        )
    chosen = tuple(catalog.templates) if claim_all else tuple(dict.fromkeys(claim_ids))
    return ClaimSynthesis(chosen, tuple(sorted(set(tags))), claims_at)


@click.command("simulate")
@click.option(
    "--templates",
    "templates_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Proposed task templates (JSON list).",
)
@click.option(
    "--pools",
    "pools_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Proposed budget pools (JSON list).",
)
@click.option(
    "--events",
    "events_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Recorded input events, JSON lines in log order (- for stdin).",
)
@click.option(
    "--from-kafka",
    is_flag=True,
    help="Read the input topics instead (KAFKA_BOOTSTRAP, TASKSTREAM_TOPIC_PREFIX).",
)
@click.option("--since", "since_text", default=None, help="Keep events at or after (RFC 3339).")
@click.option("--until", "until_text", default=None, help="Keep events before (RFC 3339).")
@click.option(
    "--claim",
    "claim_ids",
    multiple=True,
    metavar="TEMPLATE_ID",
    help="Every user seen claims this template (repeatable).",
)
@click.option("--claim-all", is_flag=True, help="Every user seen claims every template.")
@click.option(
    "--claims-at",
    "claims_at_text",
    default=None,
    help="Synthesised claims of users seen earlier are made at this instant (RFC 3339).",
)
@click.option(
    "--user-tag", "tags", multiple=True, help="A tag of the synthesised claims (repeatable)."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Write the report as JSON here (- for stdout, instead of the table).",
)
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG: remaining budget per pool over time, cumulative payout per template.",
)
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def simulate(
    templates_path: Path,
    pools_path: Path | None,
    events_path: Path | None,
    from_kafka: bool,
    since_text: str | None,
    until_text: str | None,
    claim_ids: tuple[str, ...],
    claim_all: bool,
    claims_at_text: str | None,
    tags: tuple[str, ...],
    json_path: Path | None,
    chart_path: Path | None,
    progress: bool,
) -> None:
    """Price proposed templates and pools on a recorded log (file or Kafka).

    Reports per template eligible users, claims, completions, payout and
    lottery cost per draw, and per pool the event at which it runs dry. A
    log without claims for a proposed template: --claim-all (or --claim ID)
    makes every user seen claim it, at their first event or at --claims-at.
    See docs/simulate.md.

    Exit codes: 0 done, 1 failed (message on stderr), 2 bad usage.
    """
    if (events_path is None) == (not from_kafka):
        raise click.UsageError("give exactly one source: --events FILE or --from-kafka")
    window = Window(_time_option(since_text, "--since"), _time_option(until_text, "--until"))
    claims_at = _time_option(claims_at_text, "--claims-at")
    try:
        catalog = load_catalog(templates_path, pools_path)
    except CatalogError as exc:
        _fail(str(exc))
    synthesis = _synthesis(catalog, claim_ids, claim_all, claims_at, tags)
    stats = SourceStats()
    try:
        report = _run(catalog, synthesis, events_path, from_kafka, window, stats, progress)
    except (OSError, SimulateFailed) as exc:
        _fail(str(exc))
    _print_stats(stats)
    if json_path is not None:
        document = orjson.dumps(report_json(report), option=orjson.OPT_INDENT_2) + b"\n"
        try:
            if str(json_path) == "-":
                sys.stdout.buffer.write(document)
                sys.stdout.flush()
            else:
                json_path.write_bytes(document)
        except OSError as exc:
            _fail(f"cannot write {json_path}: {exc.strerror}")
    if json_path is None or str(json_path) != "-":
        click.echo("\n".join(report_lines(report)))
    if chart_path is not None:
        try:
            write_chart(chart_path, report, f"simulate {templates_path.name}")
        except OSError as exc:
            _fail(f"cannot write {chart_path}: {exc.strerror}")


def _run(
    catalog: Catalog,
    synthesis: ClaimSynthesis | None,
    events_path: Path | None,
    from_kafka: bool,
    window: Window,
    stats: SourceStats,
    progress: bool,
) -> SimulationReport:
    simulator = Simulator(catalog, synthesis)
    if from_kafka:
        events = kafka_events(_read_kafka(progress), window, stats)
        with tqdm(
            events, unit=" ev", desc="simulate", file=sys.stderr, disable=not progress or None
        ) as bar:
            for event, where in bar:
                simulator.feed(event, where)
        return simulator.finish()
    assert events_path is not None
    if str(events_path) == "-":
        return _feed_file(simulator, sys.stdin.buffer, None, window, stats, progress)
    size = events_path.stat().st_size
    with events_path.open("rb") as source:
        return _feed_file(simulator, source, size, window, stats, progress)


def _feed_file(
    simulator: Simulator,
    source: Iterable[bytes],
    size: int | None,
    window: Window,
    stats: SourceStats,
    progress: bool,
) -> SimulationReport:
    with tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc="simulate",
        file=sys.stderr,
        disable=not progress or None,
    ) as bar:

        def counted() -> Iterator[bytes]:
            for line in source:
                bar.update(len(line))
                yield line

        for event, where in file_events(counted(), window, stats):
            simulator.feed(event, where)
    return simulator.finish()


def _print_stats(stats: SourceStats) -> None:
    notes = [f"read {stats.read} lines/messages"]
    if stats.invalid:
        notes.append(
            f"{stats.invalid} not valid input events, skipped (first: {stats.first_invalid})"
        )
    if stats.outside:
        notes.append(f"{stats.outside} outside --since/--until")
    if stats.duplicate_ticks:
        notes.append(f"{stats.duplicate_ticks} broadcast tick copies merged")
    click.echo("; ".join(notes), err=True)


def _fail(message: str) -> NoReturn:
    click.echo(f"taskstream simulate: {message}", err=True)
    sys.exit(EXIT_FAILED)
