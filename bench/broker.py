"""`python -m bench broker`: how long the local Kafka broker takes to start and stop.

Each run formats a fresh KRaft home in a temporary folder, starts the broker
on free ports, waits until a metadata request succeeds (the same readiness
test `make kafka-up` and the test suite use), then stops it. The jars must be
in the cache already (`make kafka-up` once); their download is not timed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from taskstream import broker


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench broker")
    parser.add_argument("--runs", type=int, default=3)
    args, _ = parser.parse_known_args(argv)
    version = broker.BrokerSpec.create().version
    broker.fetch_jars(version)
    starts, reuses, stops = [], [], []
    for run in range(1, args.runs + 1):
        home = Path(tempfile.mkdtemp(prefix="bench-broker-"))
        spec = broker.BrokerSpec.create(port=broker.free_port(), home=home)
        try:
            started = broker.up(spec, die_with_parent=True)
            began = time.monotonic()
            again = broker.up(spec)
            reuses.append(time.monotonic() - began)
            assert not again.started
            began = time.monotonic()
            broker.down(spec)
            stops.append(time.monotonic() - began)
            starts.append(started.seconds)
            print(
                f"run {run}: start {started.seconds:.2f}s (format + start + metadata ready), "
                f"reuse check {reuses[-1]:.3f}s, stop {stops[-1]:.2f}s",
                file=sys.stderr,
            )
        finally:
            broker.down(spec)
            shutil.rmtree(home, ignore_errors=True)
    print(
        f"Kafka {version} local broker over {args.runs} runs: start median "
        f"{statistics.median(starts):.2f}s (min {min(starts):.2f}, max {max(starts):.2f}); "
        f"reuse check median {statistics.median(reuses):.3f}s; "
        f"stop median {statistics.median(stops):.2f}s"
    )
    return 0
