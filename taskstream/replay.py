"""`taskstream replay`: the audit interface. Input log in, every output event out.

    taskstream replay --templates T.json [--pools P.json] --events IN.jsonl --out OUT.jsonl
                      [--partitions N [--budget-out BUDGET.jsonl]]
                      [--explain USER_ID] [--progress/--no-progress]

Reads input events in log order (one JSON object per line; blank lines are
skipped) and writes every output event, one per line, byte-identical on
every run: the core is deterministic and ids derive from the inputs. A line
that is not a valid input event becomes a `dead_letter` output naming its
line and the reason; replay goes on. Pools start full (their `total`).

Without --partitions each pool is one counter. With --partitions N the run
is simulated as the workers run it (app.bucket_sim): users placed in N
partitions by Kafka's partitioner, every pool split into a master and N
progressively refilled buckets, every budget message delivered at once, in
a fixed order; --budget-out writes those messages (refill requests, grants,
recalls, returns, refusals) one per line.

Exit codes: 0 done (dead letters are counted on stderr, not failures),
1 failed (e.g. an invalid templates file: every problem is printed),
2 bad usage.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import click
from tqdm import tqdm

from app.bucket_sim import PartitionedReplayer
from app.budget import Ledger
from app.catalog import Catalog, CatalogError
from app.dead_letters import dead_letter_for
from app.engine import Outcome
from app.replayer import Replayer
from schemas.codec import decode_input, encode
from schemas.errors import SchemaError
from schemas.records import InputEvent, Tick
from schemas.timestamps import format_utc
from streams.kafka.partitioner import partition_for
from taskstream.catalog_files import load_catalog

EXIT_FAILED = 1


@dataclass(slots=True)
class ReplayStats:
    lines: int = 0
    events: int = 0
    outputs: int = 0
    dead_letters: int = 0


def replay_lines(
    lines: Iterable[bytes],
    catalog: Catalog,
    write: Callable[[bytes], object],
    *,
    explain_user: str | None = None,
    explain: Callable[[str], object] | None = None,
    on_line: Callable[[int], object] | None = None,
    partitions: int | None = None,
    write_budget: Callable[[bytes], object] | None = None,
) -> ReplayStats:
    """Replay raw JSONL lines; `write` gets each output line (with its newline).

    `partitions`: simulate progressive bucketing over that many partitions;
    `write_budget` then gets each budget message's line.
    """
    replayer: Replayer | PartitionedReplayer
    if partitions is None:
        replayer = Replayer(catalog, Ledger(catalog.pools.values()))
    else:
        replayer = PartitionedReplayer(
            catalog, partitions, lambda user_id: partition_for(user_id.encode(), partitions)
        )
    budget_written = 0
    stats = ReplayStats()
    for number, raw in enumerate(lines, start=1):
        stats.lines = number
        if on_line is not None:
            on_line(len(raw))
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        try:
            event = decode_input(line)
        except SchemaError as exc:
            write(encode(dead_letter_for(line, f"line {number}", str(exc))) + b"\n")
            stats.dead_letters += 1
            if explain is not None and explain_user is not None and explain_user.encode() in line:
                explain(f"line {number}: dead letter ({exc})")
            continue
        stats.events += 1
        touched = replayer.apply(event)
        if write_budget is not None and isinstance(replayer, PartitionedReplayer):
            sent = replayer.network.sent
            for message in sent[budget_written:]:
                write_budget(encode(message) + b"\n")
            budget_written = len(sent)
        for user_id, outcome in touched:
            for output in outcome.events:
                write(encode(output) + b"\n")
                stats.outputs += 1
            if explain is not None and user_id == explain_user:
                explain(explain_event(number, event, outcome))
        if (
            explain is not None
            and explain_user is not None
            and not touched
            and getattr(event, "user_id", None) == explain_user
        ):
            explain(explain_event(number, event, None))
    return stats


def describe_event(event: InputEvent) -> str:
    at = format_utc(event.at)
    if isinstance(event, Tick):
        return f"{at} tick {event.event_id}"
    if event.TYPE == "order_paid":
        e = event
        return f"{at} order_paid {e.order_id} {e.amount_cents}c via {e.channel}"  # type: ignore[union-attr]
    if event.TYPE == "order_refunded":
        e = event
        return f"{at} order_refunded {e.refund_id} of {e.order_id} {e.amount_cents}c"  # type: ignore[union-attr]
    return f"{at} task_claim {event.template_id}"  # type: ignore[union-attr]


def explain_event(number: int, event: InputEvent, outcome: Outcome | None, where: str = "") -> str:
    lines = [f"{where or f'line {number}'}: {describe_event(event)}"]
    if outcome is not None:
        lines.extend(f"    - {note}" for note in outcome.notes)
        for output in outcome.events:
            amount = getattr(output, "amount_cents", None)
            progress = getattr(output, "progress", None)
            detail = (
                f" {amount}c"
                if amount is not None
                else f" {progress}/{output.target}"  # type: ignore[union-attr]
                if progress is not None
                else ""
            )
            reason = getattr(output, "reason", None)
            lines.append(
                f"    => {output.TYPE} {output.template_id}{detail}"
                + (f" ({reason})" if reason else "")
            )
        if not outcome.notes and not outcome.events:
            lines.append("    - nothing to do")
    return "\n".join(lines)


@click.command("replay")
@click.option(
    "--templates",
    "templates_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Task templates (JSON list).",
)
@click.option(
    "--pools",
    "pools_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Budget pools (JSON list); without it no template may name a pool.",
)
@click.option(
    "--events",
    "events_path",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Input events, JSON lines in log order (- for stdin).",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Where to write the output events (- for stdout).",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=None,
    help="Simulate progressive bucketing over N partitions (as the workers run it).",
)
@click.option(
    "--budget-out",
    "budget_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="With --partitions: write every budget message here, one per line.",
)
@click.option("--explain", "explain_user", default=None, help="Print USER_ID's timeline.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def replay(
    templates_path: Path,
    pools_path: Path | None,
    events_path: Path,
    out_path: Path,
    partitions: int | None,
    budget_path: Path | None,
    explain_user: str | None,
    progress: bool,
) -> None:
    """Replay an input log through the task engine, deterministically."""
    try:
        catalog = load_catalog(templates_path, pools_path)
    except CatalogError as exc:
        click.echo(f"taskstream replay: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if budget_path is not None and partitions is None:
        raise click.UsageError("--budget-out needs --partitions")
    total = None if str(events_path) == "-" else _size(events_path)
    # The explanation goes to stdout, unless the outputs already do.
    explain_stream = sys.stderr if str(out_path) == "-" else sys.stdout
    with contextlib.ExitStack() as stack:
        try:
            source = _open(stack, events_path, "rb", sys.stdin.buffer)
            sink = _open(stack, out_path, "wb", sys.stdout.buffer)
            budget_sink = (
                None if budget_path is None else _open(stack, budget_path, "wb", sys.stdout.buffer)
            )
        except OSError as exc:
            click.echo(f"taskstream replay: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        bar = stack.enter_context(
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc="replay",
                file=sys.stderr,
                disable=not progress or None,  # None: only when stderr is a terminal
            )
        )
        stats = replay_lines(
            source,
            catalog,
            sink.write,
            explain_user=explain_user,
            explain=(lambda text: print(text, file=explain_stream)) if explain_user else None,
            on_line=bar.update,
            partitions=partitions,
            write_budget=None if budget_sink is None else budget_sink.write,
        )
        sink.flush()
        if budget_sink is not None:
            budget_sink.flush()
    click.echo(
        f"replayed {stats.events} events from {stats.lines} lines: "
        f"{stats.outputs} output events, {stats.dead_letters} dead letter(s)",
        err=True,
    )


def _open(
    stack: contextlib.ExitStack[bool | None], path: Path, mode: str, std: IO[bytes]
) -> IO[bytes]:
    """The file at `path` (closed with the stack), or the standard stream for "-"
    (left open: closing stdout would break everything printed after)."""
    if str(path) == "-":
        return std
    handle: IO[bytes] = stack.enter_context(path.open(mode))
    return handle


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # reported when opening it
