"""`python -m chaos`: the fault suite; prints the summary table, exit 0 on PASS."""

from __future__ import annotations

import argparse
import sys

from chaos.suite import FAULTS, run_suite


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="input lines (default 200,000)")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--faults",
        default="kill,stop,broker,wipe,kill,stop",
        help=f"comma list, injected in random order at random moments; kinds: {', '.join(FAULTS)}",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--batch-max",
        type=int,
        default=50,
        help="TASKSTREAM_BATCH_MAX of the workers: smaller batches stretch the run "
        "so the faults land while it works (default 50)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1_000.0,
        help="input lines/s, produced as live traffic while the faults hit (default 1,000; "
        "0: the whole log before the workers start, a backlog)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    args = parser.parse_args(argv)
    report = run_suite(
        events=args.events,
        users=args.users,
        workers=args.workers,
        faults=[f for f in args.faults.split(",") if f],
        seed=args.seed,
        timeout=args.timeout,
        batch_max=args.batch_max,
        rate=args.rate or None,
    )
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
