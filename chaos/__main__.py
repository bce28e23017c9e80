"""`python -m chaos`: the fault suite; prints the summary table, exit 0 on PASS."""

from __future__ import annotations

import argparse
import sys

from chaos.suite import FAULTS, run_suite

ONE_BROKER_FAULTS = "kill,stop,broker,wipe,kill,stop"
CLUSTER_RUN_FAULTS = "leader,rolling,node-stop,node-wipe,kill,stop,wipe"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="input lines (default 200,000)")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--faults",
        default=None,
        help="comma list, injected in random order at random moments; kinds: "
        f"{', '.join(FAULTS)} (default: {ONE_BROKER_FAULTS}; "
        f"with --brokers 3: {CLUSTER_RUN_FAULTS})",
    )
    parser.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="1: one broker (the broker fault restarts it); 3: a KRaft cluster, replication "
        "factor 3, min.insync.replicas 2, with the cluster faults",
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
    default = CLUSTER_RUN_FAULTS if args.brokers > 1 else ONE_BROKER_FAULTS
    report = run_suite(
        events=args.events,
        users=args.users,
        workers=args.workers,
        faults=[f for f in (args.faults or default).split(",") if f],
        seed=args.seed,
        timeout=args.timeout,
        batch_max=args.batch_max,
        rate=args.rate or None,
        brokers=args.brokers,
    )
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
