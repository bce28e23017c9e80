"""The live operator page, served by the render API process (docs/operating.md).

    GET /ops              the page (static HTML and script; holds no data)
    GET /ops/ops.js       its script
    GET /ops/data         everything the page shows, as JSON (X-Service-Key)
    GET /ops/local        this worker's share of it (X-Service-Key; for /ops/data)

Read-only: nothing here writes to a table or a topic.

Where the numbers come from:
- **pools and lag**, from the workers' tables, the same records `pools
  status` reads from their changelogs: the process asks every worker's API
  process that owns a partition (the routing file's owners, this one
  included) for `/ops/local`, which reads its worker's RocksDB databases as
  a secondary instance: each partition's record (input positions, held
  events, buckets) and each allocator partition's masters and position. The
  pool lines are `app.bucketing.balance_sheet` of those, as in `pools
  status`. Lag = an input partition's high watermark (read by the feed)
  minus the processor's next offset in that partition's record. A worker
  that does not answer within OWNER_TIMEOUT_SECONDS leaves its partitions
  marked unknown; the page says which.
- **funnels, burn-downs and dead letters**, from the output log
  (`streams.api.ops_feed`, `app.ops_view`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from app.access import service_key_matches
from app.bucketing import Bucket, Master, balance_sheet
from streams.allocation import MASTER_PREFIX, allocator_key, decode_allocator, decode_master
from streams.api.ops_feed import OpsFeed
from streams.api.tables import Routing, RoutingView, SecondaryTables, allocator_paths
from streams.catalog_feed import CatalogFeed
from streams.config import (
    BUDGET_REQUESTS,
    DEAD_LETTERS,
    PROCESSOR_INPUTS,
    REWARDS,
    TASK_EVENTS,
    Settings,
)
from streams.partition_state import PartitionRecord, decode_partition, partition_key

STATIC = Path(__file__).with_name("static")
OWNER_TIMEOUT_SECONDS = 2.0
SERVICE_KEY_HEADER = "X-Service-Key"


@dataclass
class Ops:
    """What the page's views use; one per API process."""

    settings: Settings
    routing: RoutingView
    state: SecondaryTables  # shared with the render views
    allocator: SecondaryTables
    catalogs: CatalogFeed
    feed: OpsFeed
    http: aiohttp.ClientSession | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        routing: RoutingView,
        state: SecondaryTables,
        catalogs: CatalogFeed,
        consumer_config: dict[str, Any],
    ) -> Ops:
        feed = OpsFeed(
            consumer_config,
            [settings.topic(t) for t in (TASK_EVENTS, REWARDS, DEAD_LETTERS)],
            {short: settings.topic(short) for short in (*PROCESSOR_INPUTS, BUDGET_REQUESTS)},
            lambda: catalogs.catalog.pools,
        )
        allocator = SecondaryTables(
            settings.data_dir / "api-secondary-allocator",
            paths=allocator_paths,
            budget=state.budget,  # one RocksDB memory budget per process
        )
        return cls(settings, routing, state, allocator, catalogs, feed)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        self.feed.stop()
        self.allocator.close()


OPS_KEY = web.AppKey("ops", Ops)


def install(application: web.Application, ops: Ops) -> None:
    application[OPS_KEY] = ops
    application.add_routes(OPS_ROUTES)


# ------------------------------------------------------- this worker's share


def local_share(
    routing: Routing, state: SecondaryTables, allocator: SecondaryTables
) -> dict[str, Any]:
    """The raw records of this worker's partitions (JSON text, as stored)."""
    partitions = {}
    for partition in sorted(routing.active):
        raw = state.get(routing, partition, partition_key(partition), fresh=True)
        partitions[str(partition)] = None if raw is None else raw.decode()
    allocators = {}
    for partition in sorted(routing.allocator):
        record = allocator.get(routing, partition, allocator_key(partition), fresh=True)
        masters = allocator.scan(routing, partition, MASTER_PREFIX)
        allocators[str(partition)] = {
            "record": None if record is None else record.decode(),
            "masters": [value.decode() for _, value in masters],
        }
    return {
        "worker": routing.worker,
        "generation": routing.generation,
        "partitions": partitions,
        "allocator": allocators,
    }


# --------------------------------------------------------- the whole group


async def gather(
    routing: Routing,
    me: dict[str, Any],
    http: aiohttp.ClientSession,
    service_key: str,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every owner's share (this process's `me` included) and, per owner URL
    that did not answer, why."""
    others = sorted({url for url in routing.owners.values() if url != routing.worker})
    shares = [me] if routing.worker else []
    failed: dict[str, str] = {}

    async def ask(url: str) -> None:
        try:
            async with http.get(
                f"{url.rstrip('/')}/ops/local",
                headers={SERVICE_KEY_HEADER: service_key},
                timeout=aiohttp.ClientTimeout(total=OWNER_TIMEOUT_SECONDS),
            ) as answer:
                if answer.status != 200:
                    failed[url] = f"answered {answer.status}"
                    return
                shares.append(orjson.loads(await answer.read()))
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            failed[url] = f"did not answer ({type(exc).__name__})"

    await asyncio.gather(*(ask(url) for url in others))
    return shares, failed


@dataclass
class GroupTables:
    """The workers' shares, decoded: what the tables hold for the whole group."""

    records: dict[int, PartitionRecord | None] = field(default_factory=dict)
    served_by: dict[int, str] = field(default_factory=dict)
    next_requests: dict[int, int] = field(default_factory=dict)  # allocator positions
    masters: dict[str, Master] = field(default_factory=dict)

    @classmethod
    def of(cls, shares: list[dict[str, Any]]) -> GroupTables:
        tables = cls()
        for share in shares:
            for key, raw in share.get("partitions", {}).items():
                tables.served_by[int(key)] = str(share.get("worker", ""))
                tables.records[int(key)] = None if raw is None else decode_partition(raw.encode())
            for key, part in share.get("allocator", {}).items():
                # No record yet: the allocator has read nothing there.
                raw = part.get("record")
                position = None if raw is None else decode_allocator(raw.encode()).next_offset
                tables.next_requests[int(key)] = position or 0
                for raw in part.get("masters", []):
                    master = decode_master(raw.encode())
                    tables.masters[master.pool_id] = master
        return tables

    def buckets(self) -> dict[str, list[Bucket]]:
        found: dict[str, list[Bucket]] = {}
        for record in self.records.values():
            for pool_id, bucket in ({} if record is None else record.buckets).items():
                found.setdefault(pool_id, []).append(bucket)
        return found


def _lag(high: int | None, position: int | None) -> int | None:
    return None if high is None or position is None else max(0, high - position)


def partition_rows(
    partitions: int, routing: Routing, tables: GroupTables, marks: dict[str, dict[int, int]]
) -> list[dict[str, Any]]:
    rows = []
    for partition in range(partitions):
        record = tables.records.get(partition)
        lag = {
            role: _lag(
                marks.get(role, {}).get(partition),
                None if record is None else record.next_offset.get(role, 0),
            )
            for role in PROCESSOR_INPUTS
        }
        lag[BUDGET_REQUESTS] = _lag(
            marks.get(BUDGET_REQUESTS, {}).get(partition), tables.next_requests.get(partition)
        )
        rows.append(
            {
                "partition": partition,
                "owner": routing.owners.get(partition),
                "served_by": tables.served_by.get(partition),
                "known": partition in tables.records,
                "lag": lag,
                "held": None if record is None else sum(map(len, record.held.values())),
            }
        )
    return rows


def pool_rows(
    tables: GroupTables,
    totals: dict[str, int],
    burns: dict[str, dict[str, Any]],
    unknown: list[int],
) -> list[dict[str, Any]]:
    """One line per pool: `pools status`'s balance sheet, the buckets, the log's
    burn-down. With partitions unknown (their worker did not answer) their
    buckets read as grants in flight, so `balanced` is None: not checked."""
    buckets = tables.buckets()
    rows = []
    for pool_id in sorted(set(tables.masters) | set(totals) | set(burns)):
        row: dict[str, Any] = {"pool_id": pool_id, "total": totals.get(pool_id), "seen": False}
        master = tables.masters.get(pool_id)
        if master is not None:
            sheet = balance_sheet(master, buckets.get(pool_id, []))
            row.update(
                seen=True,
                total=sheet.total,
                mode=master.mode,
                master=sheet.master,
                issued=sheet.issued,
                remaining=sheet.total - sheet.issued,
                in_buckets=sum(sheet.buckets.values()),
                in_flight=sheet.in_flight,
                balanced=None if unknown else sheet.balanced,
                requests=master.requests,
                grants=master.grants,
                requests_refused=master.denials,
                recall_rounds=master.rounds,
                buckets=[
                    {
                        "partition": b.partition,
                        "balance": b.balance,
                        "issued": b.issued,
                        "received": b.received,
                        "dry_from": b.refuse_from,
                    }
                    for b in sorted(buckets.get(pool_id, []), key=lambda b: b.partition)
                ],
            )
        row["log"] = burns.get(pool_id)
        rows.append(row)
    return rows


def log_part(feed: OpsFeed) -> tuple[dict[str, Any], dict[str, dict[int, int]]]:
    """The feed's view as the page shows it, and the input watermarks."""
    progress = feed.progress()
    with feed.lock:
        view = feed.view
        marks = {short: dict(by_partition) for short, by_partition in feed.watermarks.items()}
        doc = {
            "funnels": {t: dataclasses.asdict(f) for t, f in sorted(view.funnels.items())},
            "burns": {
                pool_id: {
                    "granted": burn.granted,
                    "revoked": burn.revoked,
                    "issued": burn.issued,
                    "rejected": burn.rejected,
                    "series": burn.series(),
                }
                for pool_id, burn in view.pools.items()
            },
            "dead_letters": {
                "total": view.dead_letter_count,
                "latest": [dataclasses.asdict(d) for d in reversed(view.dead_letters)],
            },
            "log": {
                "records": view.records,
                "copies": view.copies,
                "unreadable": view.unreadable,
                "read": progress.read,
                "behind": progress.behind,
                "caught_up": progress.caught_up,
                "error": progress.error,
            },
        }
    return doc, marks


def combine(
    settings: Settings,
    routing: Routing,
    shares: list[dict[str, Any]],
    failed: dict[str, str],
    feed: OpsFeed,
    totals: dict[str, int],
) -> dict[str, Any]:
    """The page's document from the workers' shares and the log feed."""
    tables = GroupTables.of(shares)
    logged, marks = log_part(feed)
    partitions = partition_rows(settings.partitions, routing, tables, marks)
    unknown = [row["partition"] for row in partitions if not row["known"]]
    return {
        "generation": routing.generation,
        "worker": routing.worker,
        "unreachable": failed,
        "unknown_partitions": unknown,
        "funnels": logged["funnels"],
        "pools": pool_rows(tables, totals, logged["burns"], unknown),
        "partitions": partitions,
        "dead_letters": logged["dead_letters"],
        "log": logged["log"],
    }


# ------------------------------------------------------------------ views


def refusal(settings: Settings, req: web.Request) -> web.Response | None:
    """None when the request carries the service key; else the refusal."""
    if not settings.service_key:
        return web.json_response(
            {"error": "the operator page needs TASKSTREAM_SERVICE_KEY (or _FILE) to be set"},
            status=503,
        )
    given = req.headers.get(SERVICE_KEY_HEADER)
    if given is None:
        return web.json_response(
            {"error": f"send the service key as {SERVICE_KEY_HEADER}"}, status=401
        )
    if not service_key_matches(given, settings.service_key):
        return web.json_response({"error": "wrong service key"}, status=403)
    return None


async def get_page(_req: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "ops.html", headers={"Cache-Control": "no-cache"})


async def get_script(_req: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "ops.js", headers={"Cache-Control": "no-cache"})


async def get_local(req: web.Request) -> web.Response:
    ops = req.app[OPS_KEY]
    refused = refusal(ops.settings, req)
    if refused is not None:
        return refused
    routing = ops.routing.current()
    if not routing.ready:
        return web.json_response({"error": "this worker is not ready"}, status=503)
    return web.Response(
        body=orjson.dumps(local_share(routing, ops.state, ops.allocator)),
        content_type="application/json",
    )


async def get_data(req: web.Request) -> web.Response:
    ops = req.app[OPS_KEY]
    refused = refusal(ops.settings, req)
    if refused is not None:
        return refused
    ops.feed.ensure_started()
    routing = ops.routing.current()
    me: dict[str, Any] = {"worker": routing.worker, "partitions": {}, "allocator": {}}
    if routing.ready:
        me = local_share(routing, ops.state, ops.allocator)
    if ops.http is None:
        ops.http = aiohttp.ClientSession()
    shares, failed = await gather(routing, me, ops.http, ops.settings.service_key)
    totals = {pool_id: pool.total for pool_id, pool in ops.catalogs.catalog.pools.items()}
    doc = combine(ops.settings, routing, shares, failed, ops.feed, totals)
    return web.Response(
        body=orjson.dumps(doc),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


OPS_ROUTES = [
    web.get("/ops", get_page),
    web.get("/ops/ops.js", get_script),
    web.get("/ops/data", get_data),
    web.get("/ops/local", get_local),
]
