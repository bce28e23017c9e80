"""`taskstream pools open|close|central` refuse what no worker could obey
(issue 16, problems 5 and 11), against a real broker."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from support.workers import Deployment

from taskstream import kafka_io

pytestmark = pytest.mark.integration

POOLS = [{"pool_id": "prizes", "total": 30_000, "unit": "cents"}]


def _budget_requests(deployment: Deployment) -> kafka_io.TopicSize | None:
    consumer = kafka_io.reader(deployment.settings)
    try:
        return kafka_io.topic_size(consumer, deployment.settings.topic("budget-requests"))
    except kafka_io.UnknownTopic:
        return None
    finally:
        consumer.close()


def test_before_topics_create_nothing_is_sent_and_no_topic_appears(
    kafka: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka, tmp_path, partitions=4)
    done = deployment.cli("pools", "close", "prizes")
    assert done.returncode == 1
    assert "does not exist: run `taskstream topics create` first" in done.stderr
    assert "Traceback" not in done.stderr
    # The local broker auto-creates topics on a write: none was written.
    assert _budget_requests(deployment) is None


def test_an_unpublished_pool_is_refused_with_the_published_ones(kafka: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka, tmp_path, partitions=4)
    deployment.create_topics()
    templates, pools = tmp_path / "templates.json", tmp_path / "pools.json"
    templates.write_bytes(b"[]")
    pools.write_bytes(orjson.dumps(POOLS))
    deployment.publish_templates(templates, pools)

    refused = deployment.cli("pools", "close", "no_such_pool")
    assert refused.returncode == 2
    assert "no pool 'no_such_pool' is published; the published pools: prizes" in refused.stderr
    size = _budget_requests(deployment)
    assert size is not None
    assert size.messages == 0  # nothing sent

    sent = deployment.cli("pools", "close", "prizes")
    assert sent.returncode == 0, sent.stderr
    assert "sent close for pool prizes" in sent.stderr
    size = _budget_requests(deployment)
    assert size is not None
    assert size.messages == 1
