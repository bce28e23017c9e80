"""`python -m bench soak` (`make soak`): a sustained live load for minutes, one worker.

    python -m bench soak [--rate 2000] [--minutes 10]

Produces a generated log (claims, orders, refunds; no ticks) paced at
`--rate` events/s for `--minutes` (default 2,000: 80 % of the ~2,500
events/s one worker sustained live on the 2-core machine on 2026-12-02,
BENCHMARKS "soak"; it was ~3,500 on 2026-11-23) to one worker, and samples every
10 s: events produced and consumed per second (the group's committed
offsets), the consumer lag, and the worker's RSS. Prints one row per
minute and a summary, then a verdict (exit 1 on FAIL, `verdict`): every
full minute consumed at least 90 % of the rate, the lag never over 10 s of
input and 0 at the end, the last third's peak RSS at most 10 % (+16 MiB)
over the middle third's.
Not part of `make bench` (it takes the machine for the whole run).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from bench.loggen import LogShape, generate
from bench.stream import Deployment, bench_broker, rss_kib, say
from schemas.codec import encode
from taskstream.kafka_io import producer, route

SAMPLE_SECONDS = 10.0


@dataclass
class Sample:
    t: float  # seconds since the load began
    produced: int
    consumed: int
    rss_mib: float
    rocksdb_mib: float = 0.0  # the worker's shared RocksDB budget in use (its /metrics)

    @property
    def lag(self) -> int:
        return max(0, self.produced - self.consumed)


def rocksdb_mib(web_port: int) -> float:
    """`taskstream_rocksdb_memory_bytes{part="cache"}` of the worker, in MiB (0: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=3) as page:
            text = page.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0.0
    for line in text.splitlines():
        if line.startswith('taskstream_rocksdb_memory_bytes{part="cache"}'):
            return float(line.rsplit(" ", 1)[1]) / 1024**2
    return 0.0


def _produce(dep: Deployment, rate: float, seconds: float, sent: list[int]) -> None:
    """Paced producer (no per-message bookkeeping: it runs for minutes)."""
    shape = LogShape(
        events=int(rate * seconds),
        users=200_000,
        task_user_every=10,
        task_order_share=0.5,
        claim_share=0.05,
        refund_share=0.05,
        tick_every=10**9,  # no ticks: each would go to every partition
        seed=20261123,
    )
    client = producer(dep.settings)
    began = time.monotonic()
    for n, event in enumerate(generate(shape)):
        ahead = began + n / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        routed = route(dep.settings, encode(event))
        while True:
            try:
                client.produce(routed.topic, routed.value, routed.key)
                break
            except BufferError:
                client.poll(0.05)
        client.poll(0)
        sent[0] = n + 1
    client.flush(120)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak")
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s (default 2,000)")
    parser.add_argument("--minutes", type=float, default=10.0)
    args, _ = parser.parse_known_args(argv)
    seconds = args.minutes * 60
    samples: list[Sample] = []
    with bench_broker("bench-soak-") as (bootstrap, root):
        dep = Deployment(bootstrap, root)
        try:
            worker = dep.start_worker("a")
            time.sleep(10)  # joined, catalog read
            sent = [0]
            thread = threading.Thread(
                target=_produce, args=(dep, args.rate, seconds, sent), daemon=True
            )
            began = time.monotonic()
            thread.start()
            while thread.is_alive() or (samples and samples[-1].lag > 0):
                time.sleep(SAMPLE_SECONDS)
                committed, _end = dep.input_counts()
                rss, _peak = rss_kib(worker.pid)
                sample = Sample(
                    time.monotonic() - began,
                    sent[0],
                    committed,
                    rss / 1024,
                    rocksdb_mib(dep.web_ports[worker.pid]),
                )
                samples.append(sample)
                say(
                    f"{sample.t:5.0f}s produced {sample.produced:,} consumed "
                    f"{sample.consumed:,} lag {sample.lag:,} RSS {sample.rss_mib:.0f} MiB "
                    f"(RocksDB budget {sample.rocksdb_mib:.0f} MiB)"
                )
                if time.monotonic() - began > seconds + 300:
                    say("the worker did not catch up within 5 minutes of the end")
                    break
        finally:
            dep.stop()
    print(report(samples, args.rate, seconds))
    failures = verdict(samples, args.rate, seconds)
    print("\nsoak " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return 0 if not failures else 1


# What "steady, flat, bounded" means, so a run can fail.
STEADY_SHARE = 0.9  # every full minute consumes at least 90 % of the offered rate
LAG_SECONDS = 10.0  # the lag never exceeds 10 s of input
RSS_GROWTH = 1.10  # the last third's peak RSS at most 10 % (+16 MiB) over the middle's
RSS_SLACK_MIB = 16.0


def verdict(samples: list[Sample], rate: float, seconds: float) -> list[str]:
    """Why the run is not steady, flat and bounded (empty: it is)."""
    loaded = [s for s in samples if s.t <= seconds]
    if len(loaded) < 6:
        return [f"only {len(loaded)} samples under load"]
    failures = []
    per_minute = int(60 / SAMPLE_SECONDS)
    previous = Sample(0.0, 0, 0, 0.0)
    for start in range(0, len(loaded) - per_minute + 1, per_minute):
        last = loaded[start + per_minute - 1]
        consumed = (last.consumed - previous.consumed) / (last.t - previous.t)
        if consumed < STEADY_SHARE * rate:
            failures.append(f"minute {start // per_minute + 1} consumed {consumed:,.0f}/s")
        previous = last
    worst = max(s.lag for s in loaded)
    if worst > LAG_SECONDS * rate:
        failures.append(f"lag reached {worst:,} events (> {LAG_SECONDS:.0f} s of input)")
    if samples[-1].lag > 0:
        failures.append(f"lag {samples[-1].lag:,} at the end: the worker did not catch up")
    third = len(loaded) // 3
    middle = max(s.rss_mib for s in loaded[third : 2 * third])
    last_third = max(s.rss_mib for s in loaded[2 * third :])
    if last_third > middle * RSS_GROWTH + RSS_SLACK_MIB:
        failures.append(f"RSS still growing: peak {middle:.0f} -> {last_third:.0f} MiB")
    return failures


def report(samples: list[Sample], rate: float, seconds: float) -> str:
    rows = [
        "| minute | produced/s | consumed/s | lag at end (events) | worker RSS (MiB) "
        "| of it RocksDB (MiB) |"
    ]
    rows.append("|---|---|---|---|---|---|")
    per_minute = int(60 / SAMPLE_SECONDS)
    previous = Sample(0.0, 0, 0, samples[0].rss_mib if samples else 0.0)
    rates = []
    for start in range(0, len(samples), per_minute):
        chunk = samples[start : start + per_minute]
        last = chunk[-1]
        span = last.t - previous.t
        consumed = (last.consumed - previous.consumed) / span
        rows.append(
            f"| {start // per_minute + 1} | {(last.produced - previous.produced) / span:,.0f} "
            f"| {consumed:,.0f} | {last.lag:,} | {last.rss_mib:.0f} | {last.rocksdb_mib:.0f} |"
        )
        if last.t <= seconds:
            rates.append(consumed)
        previous = last
    loaded = [s for s in samples if s.t <= seconds]
    half = len(loaded) // 2
    first = statistics.mean(s.rss_mib for s in loaded[:half]) if half else 0.0
    second = statistics.mean(s.rss_mib for s in loaded[half:]) if half else 0.0
    summary = [
        "",
        f"offered {rate:,.0f} events/s for {seconds / 60:.0f} min;",
        f"consumed per minute: mean {statistics.mean(rates):,.0f}, min {min(rates):,.0f}, "
        f"max {max(rates):,.0f} events/s;"
        if rates
        else "no full minute measured;",
        f"lag: max {max(s.lag for s in samples):,} events, at the end of the load "
        f"{loaded[-1].lag:,};"
        if loaded
        else "",
        f"worker RSS: mean {first:.0f} MiB in the first half, {second:.0f} MiB in the second "
        f"({second - first:+.0f} MiB), peak {max(s.rss_mib for s in samples):.0f} MiB",
    ]
    return "\n".join(rows + summary)
