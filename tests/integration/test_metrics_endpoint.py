"""A worker's /metrics, /health and /ready pages on a real broker.

One worker, four partitions, the sample templates and pools (the `cash`
pool opened, so every bucket gets a first grant), a generated log of a few
hundred events with malformed lines among them. Once the worker has read
everything, its /metrics page must parse with prometheus_client's parser
and agree with what the topics hold: events applied by type, rewards and
cents by template and pool, dead letters by reason class; the lag gauges
of every input partition are 0, the `cash` pool adds up (master + buckets
+ issued = total), and the latency histograms counted every batch/event.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from support.workers import Deployment, TopicReader, WorkerProcess

from bench.loggen import Line, LogShape, mixed_log
from streams.monitor.metrics_core import reason_class

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
PARTITIONS = 4
SHAPE = LogShape(
    events=400,
    users=60,
    task_user_every=2,
    task_order_share=0.6,
    claim_share=0.1,
    refund_share=0.06,
    tick_every=100,
    seconds_per_event=600.0,
    seed=6,
)
INPUT_TOPICS = ("claims", "orders", "refunds", "ticks", "budget-grants")


@dataclass
class Status:
    code: int
    body: bytes
    content_type: str


def get(worker: WorkerProcess, path: str) -> Status | None:
    """GET a page of the worker's web server; None while nothing listens."""
    url = f"http://127.0.0.1:{worker.env['TASKSTREAM_WEB_PORT']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return Status(response.status, response.read(), response.headers["Content-Type"])
    except urllib.error.HTTPError as error:
        return Status(error.code, error.read(), error.headers["Content-Type"])
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def samples(worker: WorkerProcess) -> list[Sample]:
    page = get(worker, "/metrics")
    assert page is not None
    assert page.code == 200
    assert page.content_type.startswith("text/plain")
    return [
        s for family in text_string_to_metric_families(page.body.decode()) for s in family.samples
    ]


def values(found: list[Sample], name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for s in found
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def total(found: list[Sample], name: str, **labels: str) -> float:
    return sum(v for _, v in values(found, name, **labels))


@dataclass
class Run:
    deployment: Deployment
    worker: WorkerProcess
    lines: list[Line]
    readiness_seen: list[tuple[int, dict[str, object]]]
    rewards: list[dict[str, object]]
    dead_letters: list[dict[str, object]]
    final: list[Sample]


def _wait(what: str, done: object, worker: WorkerProcess, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(done) and done():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{worker.log_tail()}")


def _distinct(reader: TopicReader) -> list[dict[str, object]]:
    reader.read_to_end()
    by_id = {str(m["event_id"]): m for m in reader.messages}
    return list(by_id.values())


@pytest.fixture(scope="module")
def run(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("metrics")
    deployment = Deployment(kafka, root, partitions=PARTITIONS)
    deployment.create_topics()
    deployment.publish_templates(SAMPLES / "templates.json", SAMPLES / "pools.json")
    deployment.open_pools("cash")
    lines = mixed_log(SHAPE, malformed_every=97)
    deployment.produce(lines)
    worker = deployment.worker("a")
    readers = {t: deployment.reader(t) for t in ("rewards", "dead-letters")}
    try:
        worker.start()
        readiness_seen: list[tuple[int, dict[str, object]]] = []

        def ready() -> bool:
            page = get(worker, "/ready")
            if page is None:
                return False
            readiness_seen.append((page.code, orjson.loads(page.body)))
            return page.code == 200

        _wait("/ready to answer 200", ready, worker)
        expected_applied = _well_formed_events(lines)

        def caught_up() -> bool:
            found = samples(worker)
            lags = values(found, "taskstream_input_lag_messages")
            return (
                total(found, "taskstream_input_events_total") == sum(expected_applied.values())
                and len(lags) == len(INPUT_TOPICS) * PARTITIONS
                and all(v == 0 for _, v in lags)
                and _cash_adds_up(found)
            )

        _wait("every input applied, no lag, the pool settled", caught_up, worker)
        yield Run(
            deployment,
            worker,
            lines,
            readiness_seen,
            _distinct(readers["rewards"]),
            _distinct(readers["dead-letters"]),
            samples(worker),
        )
    finally:
        worker.stop()
        for reader in readers.values():
            reader.close()


def _well_formed_events(lines: list[Line]) -> Counter[str]:
    """Input messages the engine must apply, by type (a tick goes to every partition)."""
    applied: Counter[str] = Counter()
    for line in lines:
        if not line.malformed:
            kind = orjson.loads(line.value)["type"]
            applied[kind] += PARTITIONS if kind == "tick" else 1
    return applied


def _cash_adds_up(found: list[Sample]) -> bool:
    """Nothing in flight: the cash pool's master, buckets and payouts make its total."""
    pool = next(
        p for p in orjson.loads((SAMPLES / "pools.json").read_bytes()) if p["pool_id"] == "cash"
    )
    master = values(found, "taskstream_master_level_units", pool_id="cash")
    buckets = values(found, "taskstream_bucket_balance_units", pool_id="cash")
    issued = total(found, "taskstream_bucket_issued_units", pool_id="cash")
    return (
        len(master) == 1
        and len(buckets) == PARTITIONS
        and master[0][1] + sum(v for _, v in buckets) + issued == pool["total"]
    )


def test_ready_only_after_joining_recovery_and_the_catalog(run: Run) -> None:
    code, body = run.readiness_seen[-1]
    assert (code, body) == (200, {"ready": True})
    for code, body in run.readiness_seen[:-1]:  # what a scrape saw while it started, if any
        assert code == 503
        assert body["ready"] is False
        assert body["waiting_for"]
    health = get(run.worker, "/health")
    assert health is not None
    assert health.code == 200
    assert total(run.final, "taskstream_worker_ready") == 1


def test_input_events_and_dead_letters_by_type_and_reason(run: Run) -> None:
    found = run.final
    expected = _well_formed_events(run.lines)
    applied = {
        labels["type"]: value for labels, value in values(found, "taskstream_input_events_total")
    }
    assert applied == expected
    assert all(v > 0 for v in applied.values())
    # Dead letters: as many per reason class as the topic holds, every malformed line one.
    in_topic = Counter(reason_class(str(d["reason"])) for d in run.dead_letters)
    counted = {
        labels["reason"]: value
        for labels, value in values(found, "taskstream_dead_letters_total", agent="processor")
    }
    assert counted == in_topic
    assert sum(counted.values()) == sum(line.malformed for line in run.lines) > 0
    assert {"malformed_json", "schema"} <= set(counted)


def test_rewards_and_cents_by_template_and_pool(run: Run) -> None:
    found = run.final
    in_topic: Counter[tuple[str, str, str]] = Counter()
    cents: Counter[tuple[str, str, str]] = Counter()
    for reward in run.rewards:
        key = (
            str(reward["type"]).removeprefix("reward_"),
            str(reward["template_id"]),
            str(reward["pool_id"] or ""),
        )
        in_topic[key] += 1
        cents[key] += int(str(reward["amount_cents"]))
    counted = {
        (s["outcome"], s["template_id"], s["pool_id"]): v
        for s, v in values(found, "taskstream_rewards_total")
    }
    counted_cents = {
        (s["outcome"], s["template_id"], s["pool_id"]): v
        for s, v in values(found, "taskstream_reward_amount_cents_total")
    }
    assert counted == in_topic
    assert counted_cents == cents
    granted_cash = [k for k in counted if k[0] == "granted" and k[2] == "cash"]
    assert granted_cash
    assert all(counted_cents[k] > 0 for k in granted_cash)
    outputs = {s["type"]: v for s, v in values(found, "taskstream_output_events_total")}
    assert outputs["reward_granted"] == sum(v for k, v in counted.items() if k[0] == "granted")
    assert outputs["task_claimed"] > 0


def test_lag_buckets_refills_and_latency(run: Run) -> None:
    found = run.final
    lags = values(found, "taskstream_input_lag_messages")
    assert {(s["topic"], s["partition"]) for s, _ in lags} == {
        (topic, str(p)) for topic in INPUT_TOPICS for p in range(PARTITIONS)
    }
    assert all(v == 0 for _, v in lags)
    assert _cash_adds_up(found)
    # Every bucket got the opening grant, and the master handled the requests.
    grants = values(
        found, "taskstream_budget_messages_total", pool_id="cash", type="bucket_granted"
    )
    assert sum(v for _, v in grants) >= PARTITIONS
    assert total(found, "taskstream_master_grants_total", pool_id="cash") >= PARTITIONS
    # Latency: one observation per partition batch, one per applied event.
    batches = total(found, "taskstream_batch_processing_seconds_count", agent="processor")
    assert batches > 0
    events = total(found, "taskstream_event_lag_seconds_count")
    assert events == total(found, "taskstream_input_events_total")
    inf = values(found, "taskstream_event_lag_seconds_bucket", le="+Inf")
    assert [v for _, v in inf] == [events]
    # The log's events are from 2024: older than the last bound (60 s).
    assert values(found, "taskstream_event_lag_seconds_bucket", le="60.0")[0][1] == 0
