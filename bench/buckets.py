"""`python -m bench buckets`: one hot prize pool, three ways to pay from it.

Three parts, results as Markdown rows on stdout (BENCHMARKS.md keeps them):

1. **Real broker, real workers** (`taskstream worker`, 8 partitions unless
   told): a lottery whose one prize draws on a hot items pool; every user
   claims and orders once, so every order is one deduction; the pool holds
   80% of the demand, so it runs dry during the run. Measured per partition
   count (1, 2, 4, 8), in one run of this command:
   - *progressive*: the pool as it ships (buckets refilled by the master);
   - *central*: `taskstream pools central` first, so every deduction is a
     round trip to the master (the hot spot bucketing avoids).
   Deductions/s = granted rewards / (last - first granted reward's
   CreateTime), the paying phase; the refusals that follow are counted;
   refill requests per 1,000 deductions from `pools status`.
2. **Simulation** (the pure core, `app.bucketing`, no broker): the same
   demand shape over 1-8 partitions with skewed traffic (partition p gets
   weight 1/(p+1)), for progressive bucketing and for a naive up-front static
   split (total / N per partition, never refilled): paid, rejected, and the
   budget the static split strands (left in buckets while rewards were
   refused); messages to and from the master per 1,000 deductions.
3. **Model** of 1,000,000 deductions/s: the simulation at 1,000 partitions
   and 1M deductions/s of event time gives the master's message rate; with
   the measured per-worker rate it says how many worker cores and how many
   master messages/s that takes (assumptions printed with it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from app.bucket_sim import BudgetNetwork
from app.bucketing import AwaitingBudget, PartitionBudget
from app.catalog import Pool
from bench.stream import TASKSTREAM, Deployment, bench_broker
from schemas.records import OrderPaid, PoolCommand, TaskClaim

POOL = "hot"
BASE_US = 1_709_800_000_000_000  # 2024-03-07, inside the template's window


def say(message: str) -> None:
    print(f"[bench buckets] {message}", file=sys.stderr, flush=True)


LOTTERY = {
    "template_id": "spin",
    "title": "order once, spin once",
    "scenes": ["home"],
    "active_from": "2024-03-01T00:00:00Z",
    "active_until": "2024-04-01T00:00:00Z",
    "timezone": "UTC",
    "duration_days": 7,
    "target": 1,
    "count_by": "order",
    "order_rule": {"min_amount_cents": 100, "channels": None},
    "claim_rule": {"user_tags_any": [], "user_tags_none": [], "max_claims": 1},
    "reward": {
        "mode": "lottery",
        "draws_per": "completion",
        "pool_id": None,
        "prizes": [{"prize_id": "coupon", "amount_cents": 500, "weight": 1, "pool_id": POOL}],
    },
    "display": "visible",
    "refund_policy": "ignore",
    "priority": 0,
    "exclusive": False,
}


# ------------------------------------------------------------ 1. real broker


@dataclass
class StreamRun:
    mode: str
    partitions: int
    users: int
    granted: int
    rejected: int
    seconds: float
    requests: int
    rounds: int

    @property
    def rate(self) -> float:
        return self.granted / self.seconds if self.seconds > 0 else float("nan")

    @property
    def refills_per_1000(self) -> float:
        return 1000 * self.requests / self.granted if self.granted else float("nan")


def stream_run(bootstrap: str, root: Path, mode: str, partitions: int, users: int) -> StreamRun:
    dep = Deployment(bootstrap, root, partitions=partitions)
    try:
        templates, pools = root / f"{dep.name}-t.json", root / f"{dep.name}-p.json"
        templates.write_bytes(orjson.dumps([LOTTERY]))
        total = users * 8 // 10
        pools.write_bytes(orjson.dumps([{"pool_id": POOL, "total": total, "unit": "items"}]))
        subprocess.run(
            [
                TASKSTREAM,
                "templates",
                "publish",
                "--templates",
                str(templates),
                "--pools",
                str(pools),
            ],
            env=dep.env,
            check=True,
            capture_output=True,
        )
        if mode == "central":
            subprocess.run(
                [TASKSTREAM, "pools", "central", POOL], env=dep.env, check=True, capture_output=True
            )
        claims = (TaskClaim(f"c{n}", f"u{n:07d}", "spin", BASE_US + n, ()) for n in range(users))
        dep.produce(claims)
        orders = (
            OrderPaid(f"o{n}", f"ord{n}", f"u{n:07d}", 1_000, "app", BASE_US + 10**9 + n)
            for n in range(users)
        )
        dep.produce(orders)
        dep.start_worker("a")
        dep.wait_consumed(1800)
        paid: list[int] = []  # CreateTime of each granted reward
        refused: list[int] = []
        deadline = time.monotonic() + 120
        while len(paid) + len(refused) < users and time.monotonic() < deadline:
            paid, refused = [], []
            for short, doc, ts in dep.outputs():
                if short == "rewards" and doc["type"] == "reward_granted":
                    paid.append(ts)
                elif short == "rewards" and doc["type"] == "reward_rejected":
                    refused.append(ts)
            time.sleep(0.5)
        granted, rejected = len(paid), len(refused)
        status = subprocess.run(
            [TASKSTREAM, "pools", "status", "--json", "--no-progress"],
            env=dep.env,
            capture_output=True,
            check=False,
        )
        sheets = [orjson.loads(line) for line in status.stdout.splitlines() if line.strip()]
        # The deployment also opens the sample pools: read this bench's pool.
        sheet = next((s for s in sheets if s["pool_id"] == POOL), {})
        if not sheet.get("balanced"):
            say(f"warning: pool not balanced at the end: {sheet}")
        # The paying phase: first to last paid reward (refusals come after it).
        seconds = (max(paid) - min(paid)) / 1000 if paid else 0.0
        tail = (max(refused) - max(paid)) / 1000 if refused and paid else 0.0
        run = StreamRun(
            mode,
            partitions,
            users,
            granted,
            rejected,
            seconds,
            int(sheet.get("requests", 0)),
            int(sheet.get("recall_rounds", 0)),
        )
        say(
            f"{mode}, {partitions} partition(s): {granted} granted in {seconds:.1f}s = "
            f"{run.rate:,.0f} deductions/s; then {rejected} refused within {tail:.1f}s; "
            f"{run.requests} refill requests"
        )
        return run
    finally:
        dep.stop()


# ------------------------------------------------------------- 2. simulation


@dataclass
class SimResult:
    strategy: str
    partitions: int
    deductions: int
    paid: int
    rejected: int
    stranded: int
    to_master: int
    from_master: int
    rounds: int
    seconds: float  # CPU time of the simulation

    def per_1000(self, count: int) -> float:
        return 1000 * count / self.paid if self.paid else float("nan")


def _demands(
    partitions: int, count: int, rate_per_s: float, skewed: bool = True
) -> list[tuple[int, int]]:
    """(partition, event time µs) of each deduction, evenly paced per partition;
    skewed: partition p gets weight 1/(p+1), else all the same."""
    weights = [1 / (p + 1) if skewed else 1.0 for p in range(partitions)]
    total = sum(weights)
    # Deterministic interleaving: each partition's deductions at its own steady rate.
    out: list[tuple[int, int]] = []
    for p, weight in enumerate(weights):
        share = round(count * weight / total)
        step = 1e6 / (rate_per_s * weight / total)
        out += [(p, int(n * step)) for n in range(share)]
    out.sort(key=lambda d: (d[1], d[0]))
    return out


def simulate_progressive(partitions: int, total: int, demands: list[tuple[int, int]]) -> SimResult:
    network = BudgetNetwork({POOL: Pool(POOL, total, "items")}, partitions)
    budgets = [PartitionBudget(p, {}) for p in range(partitions)]

    network.send_to_master([PoolCommand("open", POOL, "open", 0)])
    network.pump(budgets)
    paid = rejected = 0
    sent_when_dry = -1  # messages sent before the first refusal
    began = time.process_time()
    for partition, at in demands:
        budget = budgets[partition]
        while True:
            budget.begin(at)
            try:
                ok = budget.try_debit(POOL, 1)
            except AwaitingBudget as stall:
                budget.rollback(stall)
                network.pump(budgets)
                continue
            budget.commit()
            break
        paid += ok
        if not ok and not rejected:
            sent_when_dry = len(network.sent)
        rejected += not ok
        if budget.outbox:
            network.pump(budgets)
    seconds = time.process_time() - began
    # Count the messages of the paying phase: once the pool is dry each
    # refusal is one request and one refusal, whatever the strategy.
    paying = network.sent[1 : sent_when_dry if sent_when_dry >= 0 else None]  # not the open
    to_master = sum(1 for m in paying if m.TYPE in ("refill_requested", "bucket_returned"))
    return SimResult(
        "progressive", partitions, len(demands), paid, rejected, 0, to_master,
        len(paying) - to_master, network.masters[POOL].rounds, seconds,
    )  # fmt: skip


def simulate_static(partitions: int, total: int, demands: list[tuple[int, int]]) -> SimResult:
    base, extra = divmod(total, partitions)
    shares = [base + (1 if p < extra else 0) for p in range(partitions)]
    paid = rejected = 0
    began = time.process_time()
    for partition, _ in demands:
        if shares[partition] >= 1:
            shares[partition] -= 1
            paid += 1
        else:
            rejected += 1
    seconds = time.process_time() - began
    stranded = sum(shares) if rejected else 0
    return SimResult("static split", partitions, len(demands), paid, rejected, stranded, 0, 0, 0,
                     seconds)  # fmt: skip


# ------------------------------------------------------------------ 3. model

MODEL_PARTITIONS = 100
MODEL_RATE = 1_000  # deductions/s per partition
MODEL_SECONDS = 5


def model(per_worker: float) -> list[str]:
    """Steady state of one pool at 1,000 deductions/s per partition, simulated
    on 100 partitions (the master's work per partition does not depend on how
    many there are) and scaled to 1,000 partitions = 1M deductions/s."""
    count = MODEL_PARTITIONS * MODEL_RATE * MODEL_SECONDS
    demands = _demands(MODEL_PARTITIONS, count, MODEL_PARTITIONS * MODEL_RATE, skewed=False)
    result = simulate_progressive(MODEL_PARTITIONS, 10 * count, demands)  # never runs dry
    say(f"model: {result}")
    per_partition_s = (result.to_master + result.from_master) / MODEL_PARTITIONS / MODEL_SECONDS
    partitions = 1_000_000 // MODEL_RATE
    rows = [
        "| model: one pool at 1,000,000 deductions/s | value |",
        "|---|---|",
        f"| simulated: {MODEL_PARTITIONS} partitions x {MODEL_RATE:,} deductions/s for "
        f"{MODEL_SECONDS} s of event time ({count:,} deductions, slow start included) "
        f"| {result.paid:,} paid, {result.per_1000(result.to_master + result.from_master):.2f} "
        "master messages / 1,000 |",
        f"| master messages/s per partition | {per_partition_s:.2f} |",
        f"| at 1M deductions/s = {partitions:,} partitions x {MODEL_RATE:,}/s: "
        f"master messages/s (one allocator partition) | {per_partition_s * partitions:,.0f} |",
        f"| core CPU per deduction in the simulation (bucket + master, one process) "
        f"| {1e6 * result.seconds / count:.1f} µs |",
    ]
    if per_worker == per_worker and per_worker > 0:
        rows.append(
            f"| worker cores at the measured {per_worker:,.0f} deductions/s per worker "
            f"(claim + order per deduction) | {1_000_000 / per_worker:,.0f} |"
        )
    return rows


# ------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench buckets")
    parser.add_argument("--users", type=int, default=10_000, help="progressive run's users")
    parser.add_argument("--central-users", type=int, default=1_000, help="central run's users")
    parser.add_argument("--partitions", default="1,2,4,8")
    parser.add_argument("--skip", default="", help="comma list of: stream,simulation,model")
    args, _ = parser.parse_known_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    counts = [int(p) for p in args.partitions.split(",")]
    rows: list[str] = []
    progressive_rate = 0.0
    if "stream" not in skip:
        with bench_broker("bench-buckets-") as (bootstrap, root):
            rows.append(
                "| real broker, 1 worker | partitions | deductions/s "
                "| refill requests / 1,000 deductions | recall rounds |"
            )
            rows.append("|---|---|---|---|---|")
            for partitions in counts:
                for mode, users in (("progressive", args.users), ("central", args.central_users)):
                    run = stream_run(bootstrap, root, mode, partitions, users)
                    if mode == "progressive" and partitions == max(counts):
                        progressive_rate = run.rate
                    rows.append(
                        f"| {mode} ({run.granted:,} paid, {run.rejected:,} refused) | {partitions} "
                        f"| {run.rate:,.0f} | {run.refills_per_1000:,.1f} | {run.rounds} |"
                    )
        rows.append("")
    if "simulation" not in skip:
        rows.append(
            "| simulation: 100,000 deductions, pool 80,000 items, skewed | partitions | paid "
            "| refused | stranded | to master / 1,000 paid | from master / 1,000 paid "
            "| recall rounds |"
        )
        rows.append("|---|---|---|---|---|---|---|---|")
        for partitions in counts:
            demands = _demands(partitions, 100_000, 10_000.0)
            for result in (
                simulate_progressive(partitions, 80_000, demands),
                simulate_static(partitions, 80_000, demands),
            ):
                say(f"{result}")
                rows.append(
                    f"| {result.strategy} | {partitions} | {result.paid:,} | {result.rejected:,} "
                    f"| {result.stranded:,} ({100 * result.stranded / 80_000:.1f}%) "
                    f"| {result.per_1000(result.to_master):.2f} "
                    f"| {result.per_1000(result.from_master):.2f} | {result.rounds} |"
                )
        rows.append("")
    if "model" not in skip:
        rows += model(progressive_rate)
    print("\n".join(rows))
    return 0
