"""`python -m bench audit`: how fast `taskstream audit` and `explain` read and replay.

A generated log (default 200,000 events, 8 partitions, the sample templates
with ample pools, warm buckets) is produced and processed by one worker;
then `taskstream audit --no-progress --json` (without and with the tables
check) and `taskstream explain` for one user run as the operators would run
them. Prints a Markdown table: wall time, messages read per second, the
audit process's peak RSS, and its verdict (which must be "agrees").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import orjson

from bench.loggen import LogShape, generate
from bench.stream import TASKSTREAM, Deployment, bench_broker, say

# Runs the command in a fresh Python process that reports its one child's
# peak RSS (RUSAGE_CHILDREN of this process would include the workers).
_MEASURE = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(done.returncode)"
)


def _timed(dep: Deployment, args: list[str]) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Run one taskstream command; (wall seconds, peak RSS KiB of it, result)."""
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, TASKSTREAM, *args],
        env=dep.env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - began
    lines = done.stderr.strip().splitlines()
    peak = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return seconds, peak, done


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench audit")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=100_000)
    args, _ = parser.parse_known_args(argv)
    rows: list[str] = []
    status = 0
    with bench_broker("bench-audit-") as (bootstrap, root):
        dep = Deployment(bootstrap, root)
        try:
            dep.produce(generate(LogShape(events=args.events, users=args.users, seed=20261124)))
            _, inputs = dep.input_counts()
            dep.start_worker("a")
            dep.wait_consumed(900)
            time.sleep(3)  # the last batch's outputs and changelog writes land
        finally:
            dep.stop()
        report = root / "audit.json"
        for label, extra in (("audit --no-tables", ["--no-tables"]), ("audit", [])):
            seconds, peak, done = _timed(
                dep, ["audit", "--no-progress", "--json", str(report), *extra]
            )
            if done.returncode != 0:
                say(f"{label} exit {done.returncode}:\n{done.stdout}\n{done.stderr}")
                status = 1
            doc = orjson.loads(report.read_bytes()) if report.exists() else {}
            read = doc.get("input_messages", 0) + doc.get("found", 0)
            rows.append(
                f"| `taskstream {label}`, {inputs:,} input messages, "
                f"{doc.get('found', 0):,} outputs | {seconds:.1f} s "
                f"({(inputs + doc.get('found', 0)) / seconds:,.0f} msg/s read and checked), "
                f"peak RSS {peak / 1024:.0f} MiB, agrees: {doc.get('agrees')} |"
            )
            say(f"{label}: {seconds:.1f}s, {read} messages")
        user = "u000010"
        seconds, _peak, done = _timed(dep, ["explain", user, "--no-progress"])
        if done.returncode != 0:
            say(f"explain exit {done.returncode}:\n{done.stdout}\n{done.stderr}")
            status = 1
        rows.append(
            f"| `taskstream explain {user}` (reads 1 of 8 partitions) | {seconds:.1f} s, "
            f"{len(done.stdout.splitlines())} lines |"
        )
    print("| measurement | result |\n|---|---|")
    print("\n".join(rows))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
