"""Progressive bucketing, pure: buckets, the master allocator, and the messages
between them, under instant and random delivery."""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field, fields, replace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.bucket_sim import BudgetNetwork
from app.bucketing import (
    CENTRAL,
    CLOSED,
    OPEN,
    Allocation,
    AwaitingBudget,
    Bucket,
    PartitionBudget,
    PoolBalanceSheet,
    Waiting,
    _paid,
    allocate,
    apply_to_bucket,
    balance_sheet,
    credit,
    debit,
    grant_size,
    master_partition,
    new_bucket,
    new_master,
)
from app.catalog import Pool
from schemas.codec import decode, encode
from schemas.records import BucketGranted, PoolCommand, RefillDenied, RefillRequested

POOL = "hot"


@dataclass
class Demand:
    units: int
    outcome: str | None = None  # "paid" | "rejected"
    revoked: bool = False


@dataclass
class Driver:
    """Partitions paying demands from their buckets, one at a time each (a
    demand that waits for budget holds up its partition, as in a worker)."""

    total: int
    partitions: int
    params: Allocation = field(default_factory=Allocation)

    def __post_init__(self) -> None:
        self.network = BudgetNetwork(
            {POOL: Pool(POOL, self.total, "cents")}, self.partitions, self.params
        )
        self.budgets = [PartitionBudget(p, {}) for p in range(self.partitions)]
        self.queues: list[list[Demand]] = [[] for _ in range(self.partitions)]
        self.demands: list[tuple[int, Demand]] = []
        self.at = 0
        self.commands = 0
        # (index in self.demands of a rejected demand, units credited back since then)
        self.credited_since: dict[int, int] = {}

    # ------------------------------------------------------------ actions

    def add_demand(self, partition: int, units: int) -> None:
        demand = Demand(units)
        self.queues[partition].append(demand)
        self.demands.append((partition, demand))

    def advance(self, partition: int) -> bool:
        """Try the partition's next demand; False while it waits for budget."""
        queue = self.queues[partition]
        if not queue:
            return False
        budget = self.budgets[partition]
        if budget.waiting_on(POOL):
            return False
        self.at += 1_000
        before = budget.bucket(POOL)
        budget.begin(self.at)
        try:
            paid = budget.try_debit(POOL, queue[0].units)
        except AwaitingBudget as stall:
            budget.rollback(stall)
            self._flush(partition)
            return False
        budget.commit()
        demand = queue.pop(0)
        demand.outcome = "paid" if paid else "rejected"
        if not paid:
            if before.denied and demand.units >= before.denied:
                # The master refused it: judged at the end (credited_since).
                index = next(i for i, (_, d) in enumerate(self.demands) if d is demand)
                self.credited_since[index] = 0
            else:
                self._assert_local_refusal_justified(partition, demand.units)
        self._flush(partition)
        return True

    def _assert_local_refusal_justified(self, partition: int, units: int) -> None:
        """Refused in the bucket (the pool was announced dry, or closed): the
        master cannot pay it, or budget is coming back and the re-opening is
        on its way to this partition (the one window the design accepts)."""
        master = self.network.masters[POOL]
        if master.mode == CLOSED or master.master < units:
            return
        returning = any(type(m).__name__ == "BucketReturned" for m in self.network.to_master)
        reopening = any(
            type(m).__name__ == "BucketGranted" and m.request_seq == 0
            for m in self.network.to_bucket[partition]
        )
        assert returning or reopening, (units, master)

    def revoke(self, index: int) -> None:
        partition, demand = self.demands[index]
        if demand.outcome != "paid" or demand.revoked:
            return
        budget = self.budgets[partition]
        self.at += 1_000
        budget.begin(self.at)
        budget.credit(POOL, demand.units)
        budget.commit()
        demand.revoked = True
        for key in self.credited_since:
            self.credited_since[key] += demand.units
        self._flush(partition)

    def command(self, command: str) -> None:
        self.commands += 1
        self.network.send_to_master([PoolCommand(f"cmd-{self.commands}", POOL, command, 0)])

    def deliver(self, rng: random.Random) -> bool:
        """Deliver one message from a random non-empty channel."""
        channels = [-1] if self.network.to_master else []
        channels += [p for p, q in enumerate(self.network.to_bucket) if q]
        if not channels:
            return False
        channel = rng.choice(channels)
        if channel == -1:
            self.network.deliver_to_master()
        else:
            self.budgets[channel].apply(self.network.to_bucket[channel].popleft())
            self._flush(channel)
        return True

    def run_to_quiet(self, rng: random.Random) -> None:
        for _ in range(100_000):
            moved = any([self.advance(p) for p in range(self.partitions)])
            if not self.deliver(rng) and not moved:
                return
        raise AssertionError("no quiet after 100,000 steps: livelock")

    def _flush(self, partition: int) -> None:
        self.network.send_to_master(self.budgets[partition].take_outbox())

    # ------------------------------------------------------------ views

    def sheet(self) -> PoolBalanceSheet:
        buckets = [b.bucket(POOL) for b in self.budgets if POOL in b.buckets]
        return balance_sheet(self.network.masters[POOL], buckets)

    def paid_units(self) -> int:
        return sum(d.units for _, d in self.demands if d.outcome == "paid" and not d.revoked)


def _assert_conserved(driver: Driver) -> None:
    sheet = driver.sheet()
    assert sheet.balanced, sheet
    assert sheet.issued == driver.paid_units()
    assert 0 <= sheet.issued <= driver.total


# ------------------------------------------------------------- the article


def _article_setup(partitions: int = 10, per_bucket: int = 30) -> Driver:
    """300 cents left, spread as 30 cents in each of 10 buckets, master empty
    (what an up-front split of the last 300 cents would look like)."""
    driver = Driver(partitions * per_bucket, partitions)
    driver.network.masters[POOL] = replace(
        new_master(POOL, partitions * per_bucket, partitions),
        master=0,
        granted=(per_bucket,) * partitions,
        out_seq=(1,) * partitions,
    )
    driver.budgets = [
        PartitionBudget(p, {POOL: replace(new_bucket(POOL, p), received=per_bucket, in_seq=1)})
        for p in range(partitions)
    ]
    _assert_conserved(driver)
    return driver


@pytest.mark.parametrize("where", [[0, 1, 2, 3, 4], [7, 7, 7, 7, 7], [9, 0, 9, 0, 5], [3, 3, 8]])
def test_article_300_cents_over_10_buckets_pay_exactly_three_rewards_of_100(where) -> None:
    driver = _article_setup()
    for partition in where:
        driver.add_demand(partition, 100)
    driver.run_to_quiet(random.Random(0))
    outcomes = [d.outcome for _, d in driver.demands]
    assert outcomes.count("paid") == min(3, len(where))
    assert outcomes.count("rejected") == len(where) - outcomes.count("paid")
    _assert_conserved(driver)
    assert driver.network.masters[POOL].mode == CENTRAL


def test_a_static_split_would_strand_it() -> None:
    """The failure the bucketing exists for: 30 cents per bucket pays no 100."""
    bucket = replace(new_bucket(POOL, 0), received=30)
    assert debit(bucket, 100, 0)[1] != "paid"


# ------------------------------------------------------- grants and modes


def test_first_grants_are_small_and_grow_with_the_rate() -> None:
    params = Allocation()
    master = new_master(POOL, 1_000_000, 8)
    initial = params.initial(1_000_000, 8)
    master, out = allocate(master, RefillRequested("a", POOL, 0, 1, 10, 0, 0, 0, 0, 0), params)
    first = out[0].units
    assert first == initial == 1953
    # The partition spent all of it in 0.1 s of event time: at that rate 2 s
    # needs 20x, but a grant at most doubles.
    master, out = allocate(
        master, RefillRequested("b", POOL, 0, 2, 0, 0, first, 100_000, 0, 0), params
    )
    assert out[0].units == 2 * first
    # A slow partition (its grant lasted 20 s) gets what 2 s at its rate needs.
    master, out = allocate(
        master, RefillRequested("c", POOL, 1, 1, 0, 0, 1_000, 20_000_000, 0, 0), params
    )
    assert out[0].units == initial  # 100 would do, but never under the initial slice


def test_a_backlog_worked_off_fast_gets_grants_sized_by_the_workers_clock() -> None:
    """Sparse event time (the grant lasted 20 s of it) but the worker paid it
    all in 0.05 s of its own clock: sized for 2 s of that, at most doubling."""
    params = Allocation()
    master = new_master(POOL, 1_000_000, 8)
    initial = params.initial(1_000_000, 8)
    master, _ = allocate(master, RefillRequested("a", POOL, 1, 1, 10, 0, 0, 0, 0, 0), params)
    sparse = RefillRequested("b", POOL, 1, 2, 0, 0, initial, 20_000_000, 0, 50_000)
    assert allocate(master, sparse, params)[1][0].units == 2 * initial
    # The same request from a replay (no clock) or a slow worker: the floor.
    no_clock = replace(sparse, wall_span_us=0)
    assert allocate(master, no_clock, params)[1][0].units == initial
    slow = replace(sparse, wall_span_us=40_000_000)
    assert allocate(master, slow, params)[1][0].units == initial


def test_a_bucket_reports_the_workers_clock_since_its_last_grant() -> None:
    bucket = replace(new_bucket(POOL, 0), received=100, last_grant=100, in_seq=1)
    granted = BucketGranted("g", POOL, 0, 2, 100, 0, "open")
    bucket, _ = apply_to_bucket(bucket, granted, now=5_000_000)
    assert bucket.lease_wall == 5_000_000
    bucket, verdict, requests = debit(bucket, 160, at=10, now=5_250_000)  # under half left
    assert verdict == "paid"
    assert requests[0].wall_span_us == 250_000
    # Half a grant gone in the batch it arrived in (one clock reading per
    # batch): as fast as the clock can tell, not "unknown".
    same_batch, _ = apply_to_bucket(replace(bucket, waiting=0), replace(granted, seq=3), 6_000_000)
    assert debit(same_batch, 100, at=11, now=6_000_000)[2][0].wall_span_us == 1
    # Without a clock (a replay) the request says 0: unknown.
    unclocked, _ = apply_to_bucket(replace(bucket, waiting=0), replace(granted, seq=4))
    assert unclocked.lease_wall == -1
    assert debit(unclocked, 100, at=11, now=0)[2][0].wall_span_us == 0


def test_a_v1_refill_request_reads_as_one_without_a_clock() -> None:
    v1 = {
        **{"type": "refill_requested", "v": 1, "event_id": "r", "pool_id": POOL},
        **{"partition": 1, "seq": 1, "units": 0, "balance": 0, "used": 5, "span_us": 9},
        "at": "2024-03-01T00:00:00Z",
    }
    request = decode(orjson.dumps(v1))
    assert isinstance(request, RefillRequested)
    assert request.wall_span_us == 0
    assert orjson.loads(encode(request))["v"] == 2


def test_grants_shrink_as_the_master_drains() -> None:
    params = Allocation()
    master = replace(new_master(POOL, 1_000_000, 8), master=8_000)
    big = Waiting(0, 1, 0, 0, 10**9, 1)
    assert grant_size(master, big, params) == 500  # half of an equal share of 8,000
    assert grant_size(replace(master, master=800), big, params) == 50


def test_close_drains_every_bucket_and_refuses_after() -> None:
    driver = Driver(10_000, 4)
    for p in range(4):
        driver.add_demand(p, 10)
    rng = random.Random(1)
    driver.run_to_quiet(rng)
    assert driver.sheet().buckets  # buckets hold grants
    driver.command("close")
    driver.run_to_quiet(rng)
    sheet = driver.sheet()
    assert sum(sheet.buckets.values()) == 0
    assert sheet.master == 10_000 - 40
    assert driver.network.masters[POOL].mode == CLOSED
    driver.add_demand(2, 10)
    driver.run_to_quiet(rng)
    assert driver.demands[-1][1].outcome == "rejected"
    driver.command("open")
    driver.run_to_quiet(rng)  # until a bucket hears of the open, the pool is closed there
    driver.add_demand(3, 10)
    driver.run_to_quiet(rng)
    assert driver.demands[-1][1].outcome == "paid"
    assert driver.network.masters[POOL].mode == OPEN
    _assert_conserved(driver)


def test_duplicates_change_nothing() -> None:
    master = new_master(POOL, 1_000, 2)
    request = RefillRequested("a", POOL, 1, 1, 10, 0, 0, 0, 0, 0)
    master, out = allocate(master, request)
    assert allocate(master, request) == (master, [])
    bucket = new_bucket(POOL, 1)
    once, _ = apply_to_bucket(bucket, out[0])
    assert apply_to_bucket(once, out[0]) == (once, ())


def test_budget_messages_round_trip_the_wire() -> None:
    master = new_master(POOL, 1_000, 2)
    _, out = allocate(master, RefillRequested("a", POOL, 1, 1, 10, 0, 0, 0, 0, 0))
    assert decode(encode(out[0])) == out[0]


def test_master_partition_is_stable() -> None:
    assert master_partition("cash", 8) == master_partition("cash", 8)
    assert {master_partition(f"pool-{i}", 8) for i in range(100)} == set(range(8))


# --------------------------------------------------------- properties


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int, int]], int]:
    partitions = draw(st.integers(1, 8))
    total = draw(st.integers(0, 5_000))
    # Uneven rates: a few hot partitions get most demands.
    weights = draw(st.lists(st.integers(1, 20), min_size=partitions, max_size=partitions))
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["demand", "demand", "demand", "deliver", "revoke"]),
                st.integers(0, 10**6),
                st.integers(1, 400),
            ),
            max_size=120,
        )
    )
    seed = draw(st.integers(0, 2**32 - 1))
    bounds = list(itertools.accumulate(weights))
    placed = [
        (kind, bisect.bisect_right(bounds, pick % bounds[-1]), units) for kind, pick, units in ops
    ]
    return partitions, total, placed, seed


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_conservation_no_oversell_no_stranding_under_random_delays(scenario) -> None:
    partitions, total, ops, seed = scenario
    rng = random.Random(seed)
    driver = Driver(total, partitions)
    for kind, partition, units in ops:
        if kind == "demand":
            driver.add_demand(partition, units)
            driver.advance(partition)
        elif kind == "deliver":
            for _ in range(units % 7):
                driver.deliver(rng)
                for p in range(partitions):
                    driver.advance(p)
        elif driver.demands:
            driver.revoke(units % len(driver.demands))
        _assert_conserved(driver)  # after every step, messages in flight or not
    driver.run_to_quiet(rng)
    _assert_conserved(driver)
    sheet = driver.sheet()
    assert not any(driver.queues), "a demand still waits after every message was delivered"
    left = sheet.master + sum(sheet.buckets.values())
    for index, credited in driver.credited_since.items():
        _, demand = driver.demands[index]
        if credited == 0:
            # Refused, and nothing came back since: the pool truly could not pay it.
            assert left < demand.units, (demand, sheet)


def test_central_command_drains_the_buckets_and_pays_from_the_master() -> None:
    driver = Driver(10_000, 3)
    rng = random.Random(2)
    for p in range(3):
        driver.add_demand(p, 10)
    driver.run_to_quiet(rng)
    driver.command("central")
    driver.run_to_quiet(rng)
    assert driver.network.masters[POOL].mode == CENTRAL
    assert sum(driver.sheet().buckets.values()) == 0
    requests = driver.network.masters[POOL].requests
    for p in range(3):
        driver.add_demand(p, 10)
    driver.run_to_quiet(rng)
    assert driver.network.masters[POOL].requests == requests + 3  # one per reward
    assert sum(driver.sheet().buckets.values()) == 0
    _assert_conserved(driver)


def test_open_during_a_close_round_reopens_the_buckets_when_the_round_ends() -> None:
    driver = Driver(1_000, 2)
    rng = random.Random(3)
    driver.command("open")
    driver.run_to_quiet(rng)
    driver.command("close")
    driver.network.deliver_to_master()  # the recalls (mode closed) are on their way
    driver.command("open")
    driver.network.deliver_to_master()  # applied mid-round: nothing sent yet
    driver.run_to_quiet(rng)
    assert all(b.bucket(POOL).mode == OPEN for b in driver.budgets)
    driver.add_demand(1, 5)
    driver.run_to_quiet(rng)
    assert driver.demands[-1][1].outcome == "paid"
    _assert_conserved(driver)


def test_close_during_a_central_round_makes_buckets_refuse_locally() -> None:
    driver = Driver(1_000, 2)
    rng = random.Random(4)
    driver.command("central")
    driver.network.deliver_to_master()  # recalls say "central"
    driver.command("close")
    driver.network.deliver_to_master()
    driver.run_to_quiet(rng)
    requests = driver.network.masters[POOL].requests
    driver.add_demand(0, 5)
    driver.run_to_quiet(rng)
    assert driver.demands[-1][1].outcome == "rejected"
    assert driver.network.masters[POOL].requests == requests  # refused without asking


def test_a_refusal_the_retry_did_not_need_does_not_outlive_the_event() -> None:
    """An event stalls on Y, Y's master refuses, but the retry pays from X
    instead (a lottery's fallback): Y's refusal must not reject a later reward."""
    budget = PartitionBudget(
        0,
        {
            "x": replace(new_bucket("x", 0), received=500),
            "y": replace(new_bucket("y", 0), waiting=1, out_seq=1, denied=0),
        },
    )
    budget.apply(RefillDenied("d", "y", 0, 1, 100, 1))  # answers y's request
    assert budget.bucket("y").denied == 100
    budget.begin(0)
    assert budget.try_debit("x", 100)  # the retry never touches y
    budget.commit()
    assert budget.bucket("y").denied == 0
    budget.begin(1)
    with pytest.raises(AwaitingBudget):  # asks y's master again, not refused
        budget.try_debit("y", 100)


def test_a_central_grant_left_unused_goes_back_to_the_master() -> None:
    budget = PartitionBudget(0, {"y": replace(new_bucket("y", 0), waiting=1, out_seq=1)})
    budget.apply(BucketGranted("g", "y", 0, 1, 100, 1, CENTRAL))
    budget.begin(0)
    budget.commit()  # an event that did not need y
    assert budget.bucket("y").balance == 0
    assert [m.TYPE for m in budget.take_outbox()] == ["bucket_returned"]


def test_a_clock_behind_the_grants_reads_as_no_clock() -> None:
    """A partition moved to a host whose clock is behind: unknown, not 'fast'."""
    bucket = replace(new_bucket(POOL, 0), received=100, last_grant=100, in_seq=1)
    bucket, _ = apply_to_bucket(bucket, BucketGranted("g", POOL, 0, 2, 100, 0, "open"), 9_000_000)
    assert debit(bucket, 160, at=10, now=8_000_000)[2][0].wall_span_us == 0


def _any_bucket() -> st.SearchStrategy[Bucket]:
    """Every field of Bucket drawn, so a field added later is drawn too."""

    def draw(name: str, kind: object) -> st.SearchStrategy[object]:
        if name == "mode":
            return st.sampled_from([OPEN, CLOSED, CENTRAL])
        return st.text(max_size=3) if kind in ("str", str) else st.integers(-5, 10**12)

    return st.builds(Bucket, **{f.name: draw(f.name, f.type) for f in fields(Bucket)})


@given(_any_bucket(), st.integers(0, 10**9), st.integers(0, 10**12))
def test_paying_and_crediting_change_the_fields_that_replace_would(
    bucket: Bucket, units: int, at: int
) -> None:
    """`debit` and `credit` build the new bucket with one positional
    constructor call (it runs for every reward paid from a pool); it must
    equal what `dataclasses.replace` gives, whatever fields Bucket has."""
    assert _paid(bucket, units, at) == replace(
        bucket,
        issued=bucket.issued + units,
        used=bucket.used + units,
        last_at=max(bucket.last_at, at),
    )
    assert credit(bucket, units) == replace(bucket, issued=bucket.issued - units)
