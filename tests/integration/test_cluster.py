"""A three-broker KRaft cluster (issue 15): lose a broker, lose nothing.

One cluster for the module (taskstream.cluster: three combined nodes on
127.0.0.1, topics with 3 replicas and min.insync.replicas 2):

- the leader of the most input and changelog partitions is SIGKILLed under
  live traffic and started again: the outputs equal replay's (the short
  fault suite on the cluster; `make chaos` runs the long one);
- with two of the three nodes down, a worker cannot write what it read, so
  it acknowledges nothing (no input committed, nothing lost), says why in
  its log, and catches up once a second node is back: `taskstream audit`
  (the log replayed against the outputs) agrees.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from support.workers import Deployment, WorkerProcess

from chaos.suite import run_suite
from taskstream import broker, cluster
from taskstream.cluster import Cluster

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    port = broker.free_ports(1, consecutive=6)[0]
    made = Cluster.create(port, 3, home=tmp_path_factory.mktemp("cluster"))
    cluster.up(made, die_with_parent=True)
    yield made
    cluster.down(made)


@pytest.mark.timeout(600)
def test_a_leader_killed_under_traffic_loses_nothing(nodes: Cluster) -> None:
    cluster.up(nodes, die_with_parent=True)  # every node up (another test may stop some)
    report = run_suite(
        events=8_000,
        users=800,
        workers=2,
        faults=["leader"],
        seed=3,
        timeout=240,
        batch_max=50,
        rate=150,
        bootstrap=nodes.bootstrap,
        nodes=nodes,
    )
    table = report.table()
    print(table)
    assert report.ok, table
    assert report.missing == report.extra == report.different == report.two_contents == 0
    assert report.under_replicated == 0


def _orders(users: int, first: int) -> list[bytes]:
    """A claim and four qualifying orders per user: samples' clear_box_per_order
    pays on each (four rewards a user, from the cash pool)."""
    lines = []
    for n in range(users):
        user = f"u{first + n:05d}"
        at = f"2024-03-05T{10 + n % 10:02d}:00:00Z"
        lines.append(
            orjson.dumps(
                {
                    "type": "task_claim",
                    "v": 1,
                    "event_id": f"c-{user}",
                    "user_id": user,
                    "template_id": "clear_box_per_order",
                    "at": at,
                    "user_tags": ["lapsed"],
                }
            )
        )
        for k in range(4):
            lines.append(
                orjson.dumps(
                    {
                        "type": "order_paid",
                        "v": 1,
                        "event_id": f"o-{user}-{k}",
                        "order_id": f"o-{user}-{k}",
                        "user_id": user,
                        "amount_cents": 2_500,
                        "channel": "next_day_pickup",
                        "at": at.replace(":00:00Z", f":{10 + k:02d}:00Z"),
                    }
                )
            )
    return lines


def _rewards(deployment: Deployment) -> int:
    reader = deployment.reader("rewards")
    try:
        reader.read_to_end(timeout=30)
        return len(reader.messages)
    finally:
        reader.close()


def _wait(what: str, check: object, worker: WorkerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.running(), worker.log_tail()
        if check():  # type: ignore[operator]
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}\n{worker.log_tail(60)}")


@pytest.mark.timeout(600)
def test_with_one_broker_left_the_worker_acknowledges_nothing_and_catches_up_later(
    nodes: Cluster, tmp_path: Path
) -> None:
    cluster.up(nodes, die_with_parent=True)
    deployment = Deployment(nodes.bootstrap, tmp_path, partitions=4)
    deployment.create_topics()
    deployment.publish_templates(SAMPLES / "templates.json", SAMPLES / "pools.json")
    worker = deployment.worker("a").start()
    try:
        deployment.produce(_orders(40, 0))
        _wait("the first events", lambda: _rewards(deployment) >= 40 * 4, worker, 180)

        # Frozen while the next events arrive and two nodes go: it reads them
        # after, on a cluster that cannot take its writes.
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGSTOP)
        deployment.produce(_orders(40, 1_000))
        committed_before = deployment.group_lag("orders")
        for node_id in (2, 3):
            cluster.stop_node(nodes, node_id)
        worker.proc.send_signal(signal.SIGCONT)
        _wait(
            "the worker to say why it is stuck",
            lambda: "not acknowledged by the brokers" in worker.log_since_start(),
            worker,
            120,
        )

        cluster.start_node(nodes, 2, die_with_parent=True)
        _wait("the catch-up", lambda: _rewards(deployment) >= 80 * 4, worker, 240)

        def committed_all() -> bool:
            lag = deployment.group_lag("orders")
            return all(c >= end for c, end in lag.values())

        _wait("the commits", committed_all, worker, 120)
        assert any(
            c > committed_before[p][0] for p, (c, _) in deployment.group_lag("orders").items()
        )
        audit = deployment.cli("audit", "--no-progress", timeout=300)
        assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
        assert worker.running(), worker.log_tail()
    finally:
        if worker.proc is not None and worker.running():
            worker.proc.send_signal(signal.SIGCONT)
        worker.stop()
