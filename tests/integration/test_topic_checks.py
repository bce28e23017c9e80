"""Topics that disagree with the deployment stop `topics create` and the
worker; the local broker creates no topic by itself (issue 16, problem 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from support.workers import Deployment

pytestmark = pytest.mark.integration


def test_a_mis_partitioned_topic_stops_topics_create_and_the_worker(
    kafka: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka, tmp_path, partitions=4)
    admin = AdminClient({"bootstrap.servers": kafka})
    requests = deployment.settings.topic("budget-requests")
    # What a broker that auto-creates topics made of a write before `topics create`.
    admin.create_topics([NewTopic(requests, num_partitions=1, replication_factor=1)])[
        requests
    ].result()

    created = deployment.cli("topics", "create")
    assert created.returncode == 1
    assert f"{requests} has 1 partition(s), not 4" in created.stderr
    assert f"{requests} has retention.ms=" in created.stderr  # kept for good: -1
    assert "Traceback" not in created.stderr

    worker = deployment.cli("worker", timeout=180)
    assert worker.returncode == 1
    assert f"{requests} has 1 partition(s), not 4" in worker.stderr

    listed = deployment.cli("topics", "list")  # the rest was created meanwhile
    assert listed.returncode == 0, listed.stderr


def test_the_local_broker_creates_no_topic_on_a_write(kafka: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka, tmp_path, partitions=4)
    topic = deployment.settings.topic("claims")
    producer = Producer({"bootstrap.servers": kafka, "message.timeout.ms": 3000})
    failures: list[object] = []
    producer.produce(topic, b"{}", on_delivery=lambda err, _msg: failures.append(err))
    producer.flush(10)
    assert len(failures) == 1
    assert failures[0] is not None  # not delivered: there is no such topic
    assert topic not in AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=10).topics


def test_produce_refuses_before_topics_create(kafka: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka, tmp_path, partitions=4)
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b'{"type":"task_claim","v":1,"event_id":"c1","user_id":"u1","template_id":"t",'
        b'"at":"2024-03-07T08:00:00Z","user_tags":[]}\n'
    )
    done = deployment.cli("produce", "--no-progress", str(events))
    assert done.returncode == 1
    assert "does not exist: run `taskstream topics create` first" in done.stderr
    listed = AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=10).topics
    assert deployment.settings.topic("claims") not in listed
