"""Load shedding of the render API on one real worker with a tiny limit.

TASKSTREAM_API_RATE=2, TASKSTREAM_API_BURST=4: a burst of concurrent GETs
(hundreds, far above the limit) while claims are produced to the worker:
- every answer is 200 (never an error page), some in full, the rest
  fallbacks saying so (X-Taskstream-Fallback, `degraded`), and no more in
  full than the limit allows;
- a user served before the burst gets that answer again (cached); a user
  never served gets the empty static answer;
- a claim POSTed over the limit is produced and answered 202 at once
  (deferred) with its poll URL, which later answers `claimed`;
- the claims produced during the burst are processed (their outputs appear);
- the worker's metrics count the answers by kind.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.workers import Deployment, TopicReader, WorkerProcess

from schemas.timestamps import format_utc

pytestmark = pytest.mark.integration

SECRET = "shedding-test-secret"
SERVICE_KEY = "shedding-test-service-key"
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
DARK = "dark_box_3_days"
RATE, BURST = 2, 4
SEEN, NEVER = "shed-seen", "shed-never"  # served before the burst / never served
KEY = {"X-Service-Key": SERVICE_KEY}


@dataclass
class Reply:
    status: int
    fallback: str | None
    body: dict[str, Any]


@dataclass
class Shedding:
    deployment: Deployment
    worker: WorkerProcess
    events: TopicReader
    seen_tasks: list[dict[str, Any]]  # SEEN's tasks as served in full before the burst


def _claim(user: str, event_id: str, at: int) -> bytes:
    return orjson.dumps(
        {"type": "task_claim", "v": 1, "event_id": event_id, "user_id": user,
         "at": format_utc(at * 1_000_000), "template_id": DARK, "user_tags": []}
    )  # fmt: skip


def _templates(root: Path) -> Path:
    docs = orjson.loads((SAMPLES / "templates.json").read_bytes())
    for doc in docs:  # the API renders at the server's clock: today
        doc["active_from"], doc["active_until"] = "2020-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
    path = root / "templates.json"
    path.write_bytes(orjson.dumps(docs))
    return path


async def _request(
    session: aiohttp.ClientSession, url: str, method: str = "GET", body: bytes | None = None
) -> Reply:
    async with session.request(method, url, headers=KEY, data=body) as answer:
        doc = orjson.loads(await answer.read())
        if answer.status == 202:
            doc["Location"] = answer.headers.get("Location")
        return Reply(answer.status, answer.headers.get("X-Taskstream-Fallback"), doc)


def _get(worker: WorkerProcess, path: str) -> Reply:
    async def once() -> Reply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            return await _request(session, f"{worker.api_url}{path}")

    return asyncio.run(once())


@pytest.fixture(scope="module")
def shedding(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shedding]:
    root = tmp_path_factory.mktemp("shedding")
    deployment = Deployment(kafka, root, partitions=2)
    deployment.create_topics()
    deployment.publish_templates(_templates(root), SAMPLES / "pools.json")
    deployment.produce([_claim(SEEN, "c-seen", int(time.time()) - 600)])
    worker = deployment.worker(
        "a",
        TASKSTREAM_API_SECRET=SECRET,
        TASKSTREAM_SERVICE_KEY=SERVICE_KEY,
        TASKSTREAM_API_RATE=str(RATE),
        TASKSTREAM_API_BURST=str(BURST),
    ).start()
    events = deployment.reader("task-events")
    try:
        deadline = time.monotonic() + 60
        while True:  # SEEN served in full once: its answer is now in the cache
            assert worker.running(), worker.log_tail()
            assert time.monotonic() < deadline, "SEEN never served\n" + worker.log_tail()
            try:
                reply = _get(worker, f"/users/{SEEN}/tasks?scene=home")
            except aiohttp.ClientError:  # not listening yet
                reply = Reply(0, None, {})
            if reply.status == 200 and reply.fallback is None and reply.body["tasks"]:
                break
            time.sleep(0.6)  # slower than the rate: the polling itself is not shed
        yield Shedding(deployment, worker, events, reply.body["tasks"])
    finally:
        events.close()
        worker.stop()


def _burst(url: str, paths: list[str], waves: int) -> tuple[list[tuple[str, Reply]], float]:
    """`waves` rounds of every path at once; the replies and the seconds it took."""

    async def run() -> tuple[list[tuple[str, Reply]], float]:
        connector = aiohttp.TCPConnector(limit=100)
        timeout = aiohttp.ClientTimeout(total=30)
        replies: list[tuple[str, Reply]] = []
        began = time.monotonic()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for _ in range(waves):
                got = await asyncio.gather(*(_request(session, url + p) for p in paths))
                replies.extend(zip(paths, got, strict=True))
        return replies, time.monotonic() - began

    return asyncio.run(run())


def test_a_burst_far_above_the_limit_gets_200s_and_fallbacks_and_events_keep_flowing(
    shedding: Shedding,
) -> None:
    worker = shedding.worker
    # SEEN, and as many users never served (a user served in full during the
    # burst would be cached from then on).
    paths = [f"/users/{who}/tasks?scene=home" for n in range(40) for who in (SEEN, f"{NEVER}{n}")]
    claim_ids = [f"c-burst-{n}" for n in range(30)]
    now = int(time.time())

    def produce_during_the_burst() -> None:
        for n in range(0, len(claim_ids), 5):
            shedding.deployment.produce(
                _claim(f"burst-user-{i}", claim_ids[i], now) for i in range(n, n + 5)
            )
            time.sleep(0.2)

    producer = threading.Thread(target=produce_during_the_burst)
    producer.start()
    replies, seconds = _burst(worker.api_url, paths, waves=8)
    producer.join()

    assert [r.status for _, r in replies] == [200] * len(replies)
    full = [r for _, r in replies if r.fallback is None]
    shed = [(p, r) for p, r in replies if r.fallback is not None]
    assert shed, "nothing was shed"
    # The limit: the bucket's burst plus what the rate refilled meanwhile
    # (+1: the last refill may complete just as the burst ends).
    assert 1 <= len(full) <= BURST + RATE * seconds + 1, (len(full), seconds)
    for path, reply in shed:
        assert reply.body["degraded"] is True
        assert reply.body["fallback"] == reply.fallback
        if SEEN in path:  # the answer it was served before
            assert reply.fallback == "cached"
            assert reply.body["tasks"] == shedding.seen_tasks
        else:  # served in full in an earlier wave (then cached), or never: static
            assert reply.fallback in ("cached", "static")
            assert (reply.body["tasks"], reply.body["offers"]) == ([], [])
    assert any(r.fallback == "static" for _, r in shed)

    # Processing went on: every claim produced during the burst has its output.
    wanted = set(claim_ids)
    shedding.events.wait_until(
        lambda seen: wanted <= {str(m.get("caused_by")) for m in seen},
        30,
        why="the outputs of the claims produced during the burst",
        workers=(worker,),
    )


def test_a_claim_over_the_limit_is_deferred_and_its_poll_url_answers_later(
    shedding: Shedding,
) -> None:
    worker = shedding.worker
    user = "shed-claimer"
    body = orjson.dumps({"template_id": DARK, "request_id": "r-1"})
    filler = [f"/users/{NEVER}/tasks?scene=home"] * 30

    async def claim_after_the_bucket_is_empty() -> tuple[Reply, int]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(1, 6):  # the same claim each time (request_id)
                await asyncio.gather(*(_request(session, worker.api_url + p) for p in filler))
                url = f"{worker.api_url}/users/{user}/claims"
                reply = await _request(session, url, "POST", body)
                if reply.fallback == "deferred":
                    return reply, attempt
                assert (reply.status, reply.body["outcome"]) == (200, "claimed"), reply
        raise AssertionError("no claim was deferred in 5 emptied buckets")

    deferred, _ = asyncio.run(claim_after_the_bucket_is_empty())
    assert deferred.status == 202
    assert deferred.body["outcome"] == "pending"
    location = deferred.body["Location"]
    assert location.startswith(f"/users/{user}/claims/api-")

    deadline = time.monotonic() + 30
    while (reply := _get(worker, location)).status == 202:  # pending, or itself deferred
        assert time.monotonic() < deadline, reply
        time.sleep(0.6)
    assert (reply.status, reply.body["outcome"]) == (200, "claimed"), reply
    assert reply.body["task_id"].startswith("task-")


def test_metrics_count_the_answers_by_kind(shedding: Shedding) -> None:
    # A burst of its own, so this test does not depend on the others having run.
    users = [SEEN] * 20 + [f"{NEVER}-metrics{n}" for n in range(20)]  # at most BURST in full
    paths = [f"/users/{who}/tasks?scene=home" for who in users]
    replies, _ = _burst(shedding.worker.api_url, paths, waves=1)
    assert {r.fallback for _, r in replies} >= {"cached", "static"}

    async def scrape() -> str:
        url = f"{shedding.worker.api_url}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as answer:
            return await answer.text()

    counted: dict[str, float] = {}
    for family in text_string_to_metric_families(asyncio.run(scrape())):
        for sample in family.samples:
            if (sample.name, sample.labels.get("route")) == (
                "taskstream_api_requests_total",
                "tasks",
            ):
                counted[sample.labels["answer"]] = sample.value
    assert counted.get("served", 0) >= 1
    assert counted.get("cached", 0) >= 1
    assert counted.get("static", 0) >= 1
    assert "taskstream_api_in_flight 0.0" in asyncio.run(scrape())
