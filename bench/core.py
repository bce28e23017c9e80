"""Benchmark of the task engine alone: a generated log replayed in memory.

    python -m bench core [--events N] [--users N] [--chunk N] [--no-pipeline]

Two figures:
- core: events already decoded, through `Replayer` (engine + budget ledger
  + deadline index), outputs built as records but not serialised;
- pipeline: the same log as JSON lines, decoded and validated, replayed,
  and every output encoded to JSON bytes (what `taskstream replay` does,
  minus file I/O).

The log is generated in chunks outside the timed sections (the generator
is not what we measure). Memory is shown at checkpoints: process RSS, the
number of user states and what they hold, and their encoded size.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import orjson

from app.budget import Ledger
from app.catalog import Catalog, parse_catalog
from app.replayer import Replayer
from app.state_codec import encode_user_state
from bench.loggen import LogShape, generate
from schemas.codec import decode_input, encode
from schemas.records import InputEvent, Tick

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


@dataclass(slots=True)
class Checkpoint:
    events: int
    seconds: float
    rss_mb: float
    users_with_state: int
    instances: int
    order_records: int
    held_refunds: int
    state_kb: float


def checkpoint(replayer: Replayer, events: int, seconds: float) -> Checkpoint:
    states = replayer.states.values()
    return Checkpoint(
        events=events,
        seconds=seconds,
        rss_mb=rss_mb(),
        users_with_state=len(replayer.states),
        instances=sum(len(s.instances) for s in states),
        order_records=sum(len(s.orders) for s in states),
        held_refunds=sum(len(h) for s in states for h in s.held_refunds.values()),
        state_kb=sum(len(encode_user_state(s)) for s in states) / 1024,
    )


def chunks(events: Iterator[InputEvent], size: int) -> Iterator[list[InputEvent]]:
    while chunk := list(islice(events, size)):
        yield chunk


def run_core(catalog: Catalog, shape: LogShape, chunk: int) -> tuple[list[Checkpoint], int]:
    replayer = Replayer(catalog, Ledger(catalog.pools.values()))
    apply_user_event = replayer.apply_user_event
    apply = replayer.apply
    done = outputs = 0
    elapsed = 0.0
    points = [checkpoint(replayer, 0, 0.0)]
    for batch in chunks(generate(shape), chunk):
        gc.collect()
        start = time.perf_counter()
        for event in batch:
            if type(event) is Tick:
                for _, outcome in apply(event):
                    outputs += len(outcome.events)
            else:
                outputs += len(apply_user_event(event.user_id, event).events)  # type: ignore[union-attr]
        elapsed += time.perf_counter() - start
        done += len(batch)
        points.append(checkpoint(replayer, done, elapsed))
    return points, outputs


def run_pipeline(catalog: Catalog, shape: LogShape, chunk: int) -> tuple[int, float, int]:
    replayer = Replayer(catalog, Ledger(catalog.pools.values()))
    apply = replayer.apply
    done = written = 0
    elapsed = 0.0
    for batch in chunks(generate(shape), chunk):
        # One blob split into lines, as if read from a file. (Compact, too:
        # each bytes object orjson returns holds a ~4 KB allocation, so a list
        # of 100,000 of them would dwarf everything the engine keeps.)
        blob = bytearray()
        for e in batch:
            blob += encode(e)
            blob += b"\n"
        lines = bytes(blob).split(b"\n")[:-1]
        gc.collect()
        start = time.perf_counter()
        for line in lines:
            for _, outcome in apply(decode_input(line)):
                for output in outcome.events:
                    written += len(encode(output))
        elapsed += time.perf_counter() - start
        done += len(lines)
    return done, elapsed, written


def bench_catalog() -> Catalog:
    """The sample templates and pools, with the templates active for years: a
    long log then keeps claiming, so the memory figures show state bounded by
    users rather than by a campaign that ended."""
    templates = orjson.loads((SAMPLES / "templates.json").read_bytes())
    for template in templates:
        template["active_until"] = "2030-01-01T00:00:00Z"
    return parse_catalog(templates, orjson.loads((SAMPLES / "pools.json").read_bytes()))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench core")
    parser.add_argument("--events", type=int, default=LogShape().events)
    parser.add_argument("--users", type=int, default=LogShape().users)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--no-pipeline", action="store_true")
    args = parser.parse_args(argv)
    shape = LogShape(events=args.events, users=args.users)
    catalog = bench_catalog()

    print(f"# core: {shape.events:,} events, {shape.users:,} users (seed {shape.seed})")
    points, outputs = run_core(catalog, shape, args.chunk)
    final = points[-1]
    print(f"core only: {final.events:,} events in {final.seconds:.2f} s = "
          f"{final.events / final.seconds:,.0f} events/s ({outputs:,} output events)")  # fmt: skip
    print()
    print("| events | core s | RSS MB | users with state | instances | order records "
          "| held refunds | state KB (encoded) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in points:
        print(f"| {p.events:,} | {p.seconds:.2f} | {p.rss_mb:.1f} | {p.users_with_state:,} "
              f"| {p.instances:,} | {p.order_records:,} | {p.held_refunds:,} "
              f"| {p.state_kb:,.0f} |")  # fmt: skip
    if not args.no_pipeline:
        done, seconds, written = run_pipeline(catalog, shape, args.chunk)
        print()
        rate = done / seconds
        print(f"pipeline (decode + validate + core + encode outputs): {done:,} events in "
              f"{seconds:.2f} s = {rate:,.0f} events/s ({written / 2**20:.1f} MB out)")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process: {peak:.0f} MB")
    return 0
