"""The operator page's data (streams.api.ops_page): two API processes' views of
their workers' RocksDB tables, gathered over HTTP, against the balance sheet.

Real aiohttp servers, real files and real RocksDB primaries written like the
workers' stores; the output-log feed is a fake with the same surface (the
integration test `test_ops_page_browser` runs the real one against Kafka).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from rocksdict import Options, Rdict
from test_openapi import _errors

from app.bucketing import Bucket, Master, balance_sheet, new_master
from app.catalog import parse_catalog
from app.ops_view import CampaignView
from schemas.records import RewardGranted
from streams.allocation import (
    AllocatorRecord,
    allocator_key,
    encode_allocator,
    encode_master,
    master_key,
)
from streams.api import ops_page
from streams.api.ops_feed import FeedProgress
from streams.api.routing import routing_path, write_routing
from streams.api.tables import RoutingView, SecondaryTables, allocator_paths
from streams.config import Settings
from streams.partition_state import PartitionRecord, encode_partition, partition_key

KEY = "ops-key"
PARTITIONS = 4
POOL = "cash"
CATALOG = parse_catalog([], [{"pool_id": POOL, "total": 10_000, "unit": "cents"}])


@dataclass
class FakeCatalogs:
    catalog: Any = CATALOG


@dataclass
class FakeFeed:
    """OpsFeed's surface without Kafka: a view, its lock, the watermarks."""

    view: CampaignView = field(default_factory=CampaignView)
    lock: Any = field(default_factory=threading.Lock)
    watermarks: dict[str, dict[int, int]] = field(default_factory=dict)
    started: bool = False

    def ensure_started(self) -> None:
        self.started = True

    def stop(self) -> None:
        pass

    def progress(self) -> FeedProgress:
        return FeedProgress(self.started, self.view.records, 0, True, "")


def bucket(partition: int, received: int, issued: int) -> Bucket:
    return Bucket(POOL, partition, received=received, issued=issued)


Paths = dict[str, str]


def write_worker(folder: Path, partitions: list[int], masters: bool) -> tuple[Paths, Paths]:
    """A worker's state (and allocator) databases, as its faust stores write them."""
    state, allocator = {}, {}
    for p in partitions:
        path = folder / f"state-{p}.db"
        db = Rdict(str(path), Options(raw_mode=True))
        record = PartitionRecord(
            p,
            seq=3,
            next_offset={"orders": 10 * p, "claims": 2},
            held={"orders": (10 * p, 10 * p + 1)} if p == 1 else {},
            buckets={POOL: bucket(p, received=1000, issued=300 + p)},
        )
        db[partition_key(p)] = encode_partition(record)
        db.close()
        state[str(p)] = str(path)
        path = folder / f"allocator-{p}.db"
        db = Rdict(str(path), Options(raw_mode=True))
        if masters:
            db[master_key(POOL)] = encode_master(granted_master())
            db[allocator_key(p)] = encode_allocator(AllocatorRecord(p, 5, 7))
        db.close()
        allocator[str(p)] = str(path)
    return state, allocator


def granted_master() -> Master:
    master = new_master(POOL, 10_000, PARTITIONS)
    # 1000 granted to each partition, all applied: 6000 left at the master.
    return replace(master, master=6000, granted=(1000,) * PARTITIONS, requests=4, grants=4)


@dataclass
class Worker:
    folder: Path
    settings: Settings
    ops: ops_page.Ops
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


async def start_worker(tmp: Path, name: str, service_key: str = KEY) -> Worker:
    folder = tmp / name
    folder.mkdir()
    settings = Settings(data_dir=folder, partitions=PARTITIONS, service_key=service_key)
    routing = RoutingView(routing_path(folder), recheck=0.0)
    ops = ops_page.Ops(
        settings,
        routing,
        SecondaryTables(folder / "secondary"),
        SecondaryTables(folder / "secondary-allocator", paths=allocator_paths),
        FakeCatalogs(),  # type: ignore[arg-type]
        FakeFeed(),  # type: ignore[arg-type]
    )
    application = web.Application()
    ops_page.install(application, ops)
    server = TestServer(application, host="127.0.0.1")
    await server.start_server()
    return Worker(folder, settings, ops, server)


def publish_routing(worker: Worker, owners: dict[int, str], state: Paths, allocator: Paths) -> None:
    write_routing(
        routing_path(worker.folder),
        {
            "worker": worker.url,
            "pid": 1,
            "generation": 2,
            "ready": True,
            "owners": {str(p): url for p, url in owners.items()},
            "active": state,
            "allocator": allocator,
        },
    )


@pytest_asyncio.fixture
async def two_workers(tmp_path: Path) -> AsyncIterator[tuple[Worker, Worker]]:
    a = await start_worker(tmp_path, "a")
    b = await start_worker(tmp_path, "b")
    owners = {0: a.url, 1: a.url, 2: b.url, 3: b.url}
    publish_routing(a, owners, *write_worker(a.folder, [0, 1], masters=True))
    publish_routing(b, owners, *write_worker(b.folder, [2, 3], masters=False))
    yield a, b
    for worker in (a, b):
        await worker.ops.close()
        worker.ops.state.close()
        await worker.server.close()


async def get(url: str, key: str | None = KEY) -> tuple[int, Any]:
    headers = {} if key is None else {"X-Service-Key": key}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as answer:
        if answer.content_type == "application/json":
            return answer.status, await answer.json()
        return answer.status, await answer.text()


@pytest.mark.asyncio
async def test_the_data_gathers_every_workers_partitions_into_the_balance_sheet(
    two_workers: tuple[Worker, Worker],
) -> None:
    a, b = two_workers
    a.ops.feed.watermarks.update({"orders": {0: 4, 1: 15, 2: 20, 3: 30}, "claims": {0: 2}})
    status, doc = await get(f"{b.url}/ops/data")  # asked of the worker without the master
    assert status == 200, doc
    assert _errors(doc, {"$ref": "#/components/schemas/OpsData"}) == []
    assert doc["unreachable"] == {}
    assert doc["unknown_partitions"] == []

    [pool] = doc["pools"]
    expected = balance_sheet(granted_master(), [bucket(p, 1000, 300 + p) for p in range(4)])
    assert pool["issued"] == expected.issued == 300 + 301 + 302 + 303
    assert pool["master"] == expected.master == 6000
    assert pool["in_buckets"] == sum(expected.buckets.values())
    assert pool["remaining"] == 10_000 - expected.issued
    assert pool["balanced"] is True
    assert [x["balance"] for x in pool["buckets"]] == [700, 699, 698, 697]

    rows = {row["partition"]: row for row in doc["partitions"]}
    assert [rows[p]["served_by"] for p in range(4)] == [a.url, a.url, b.url, b.url]
    # B's watermarks are what its own feed read: none yet, so the lag is unknown.
    assert rows[2]["lag"]["orders"] is None
    assert rows[1]["held"] == 2


@pytest.mark.asyncio
async def test_lag_is_the_high_watermark_minus_the_processors_next_offset(
    two_workers: tuple[Worker, Worker],
) -> None:
    a, _ = two_workers
    a.ops.feed.watermarks.update(
        {"orders": {0: 4, 1: 15, 2: 20, 3: 33}, "budget-requests": {0: 9, 2: 1}}
    )
    _, doc = await get(f"{a.url}/ops/data")
    lag = {row["partition"]: row["lag"] for row in doc["partitions"]}
    assert [lag[p]["orders"] for p in range(4)] == [4, 5, 0, 3]
    assert lag[0]["budget-requests"] == 2  # the allocator read up to 7
    assert lag[2]["budget-requests"] == 1  # B has no allocator record there: read nothing


@pytest.mark.asyncio
async def test_a_silent_owner_leaves_its_partitions_unknown(
    two_workers: tuple[Worker, Worker],
) -> None:
    a, b = two_workers
    gone = b.url
    await b.server.close()
    _, doc = await get(f"{a.url}/ops/data")
    assert list(doc["unreachable"]) == [gone]
    assert doc["unknown_partitions"] == [2, 3]
    [pool] = doc["pools"]
    # Half the buckets missing would read as grants in flight: not checked.
    assert pool["balanced"] is None


@pytest.mark.asyncio
async def test_the_log_part_comes_from_the_feed(two_workers: tuple[Worker, Worker]) -> None:
    a, _ = two_workers
    granted = RewardGranted("e1", "r1", "u1", "t1", "k1", 250, None, POOL, "done", 10**15, "c")
    a.ops.feed.view.apply(granted, CATALOG.pools)
    _, doc = await get(f"{a.url}/ops/data")
    assert _errors(doc, {"$ref": "#/components/schemas/OpsData"}) == []
    assert a.ops.feed.started
    assert doc["funnels"]["t1"]["rewards_granted"] == 1
    [pool] = doc["pools"]
    assert pool["log"]["issued"] == 250
    assert pool["log"]["series"] == [[10**15, 250]]


@pytest.mark.asyncio
async def test_the_data_needs_the_service_key(two_workers: tuple[Worker, Worker]) -> None:
    a, _ = two_workers
    assert (await get(f"{a.url}/ops/data", key=None))[0] == 401
    assert (await get(f"{a.url}/ops/data", key="wrong"))[0] == 403
    assert (await get(f"{a.url}/ops/local", key="wrong"))[0] == 403
    # The page itself holds no data: it loads without the key and asks for it.
    status, html = await get(f"{a.url}/ops", key=None)
    assert status == 200
    assert '<script src="/ops/ops.js">' in html
    status, script = await get(f"{a.url}/ops/ops.js", key=None)
    assert status == 200
    assert "X-Service-Key" in script


@pytest.mark.asyncio
async def test_without_a_configured_key_the_data_is_refused(tmp_path: Path) -> None:
    worker = await start_worker(tmp_path, "nokey", service_key="")
    try:
        status, doc = await get(f"{worker.url}/ops/data", key="anything")
        assert status == 503
        assert "TASKSTREAM_SERVICE_KEY" in doc["error"]
    finally:
        await worker.ops.close()
        await worker.server.close()
