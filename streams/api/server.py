"""The render API: its own process beside each worker (`taskstream api`; docs/api.md).

    GET  /users/{user_id}/tasks?scene=S[&tags=a,b]   what the front end shows
    POST /users/{user_id}/claims                     claim a task; its outcome
    GET  /users/{user_id}/claims/{claim_id}?offset=N&since_ms=T   poll a pending claim
    GET  /metrics, /health, /ready                   this process's own

Why a process of its own: on the worker's event loop, every request (even
one refused by the load limit) took loop time from event processing, and a
spike far above capacity delayed processing by seconds. Here it takes none;
the process runs niced (TASKSTREAM_API_NICE) so the kernel gives the worker
the CPU first, and `taskstream worker` starts, restarts and stops it.

A user lives in partition murmur2(user_id) % N of every input topic and of
the state table's changelog, so exactly one worker holds their state. This
process reads its worker's routing file (streams.api.routing: the group's
partition -> owner URL map and the partitions active here) and the worker's
RocksDB state databases as read-only secondary instances
(streams.api.tables). Any API process accepts a request, checks it
(credentials, input, load limit), and forwards it to the owner's API URL
(the worker's advertised canonical_url, http://TASKSTREAM_WEB_HOST:
TASKSTREAM_API_PORT) when its worker is not the owner; a forwarded request
carries X-Taskstream-Routed and is never forwarded again. Every answer says
in X-Served-By which worker answered.

A claim is produced to the claims topic (keyed and partitioned like every
input) and answered from what the processor recorded: the partition record
says when the claim's offset was processed, the user's state whether it
created a task; a rejection's reason is read from the claim_rejected in the
task-events topic.

Load shedding: each API process admits at most TASKSTREAM_API_RATE
requests/s (bursts of TASKSTREAM_API_BURST) and TASKSTREAM_API_CONCURRENCY
in flight, checked right after the credentials and before any table read or
forwarding (streams/api/shedding.py, O(1)). The excess is answered 200 with
X-Taskstream-Fallback: the last answer this process gave for that user,
scene and tags (cached), else an empty, `degraded` one (static); a claim is
still produced but answered 202 with its poll URL at once (deferred), and a
poll 202 without looking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from app.access import MAX_USER_ID_LENGTH, check_access, service_key_matches
from app.catalog import Catalog
from app.render import render
from app.render_json import (
    claim_body,
    claim_event_id,
    claimed_task_id,
    pending_body,
    tasks_body,
)
from app.state import UserState
from schemas.codec import encode
from schemas.records import TaskClaim
from streams import rocksdb_memory
from streams.api import ops_page
from streams.api.ops_page import Ops
from streams.api.routing import routing_path
from streams.api.shedding import Admission, AnswerCache, mark_fallback
from streams.api.tables import RoutingView, SecondaryTables
from streams.catalog_feed import CatalogFeed
from streams.config import CLAIMS, TASK_EVENTS, TEMPLATES, Settings
from streams.kafka.partitioner import partition_for
from streams.partition_state import PartitionRecord, decode_partition, decode_user, partition_key
from streams.partition_state import user_key as state_user_key

log = logging.getLogger("taskstream.api")

MAX_BODY_BYTES = 64 * 1024
CLAIM_WAIT_SECONDS = 5.0  # how long a POST waits for its outcome before answering 202
POLL_WAIT_SECONDS = 1.0  # how long a poll GET waits
MAX_TAGS = 64
MAX_TEXT = 256
ROUTED_HEADER = "X-Taskstream-Routed"
SERVED_BY_HEADER = "X-Served-By"
FALLBACK_HEADER = "X-Taskstream-Fallback"  # cached | static | deferred
_FORWARDED_REQUEST_HEADERS = ("Authorization", "X-Service-Key", "Content-Type")
_FORWARDED_RESPONSE_HEADERS = (
    SERVED_BY_HEADER,
    FALLBACK_HEADER,
    "Location",
    "Retry-After",
    "WWW-Authenticate",
)
# Output timestamps come from this host's clock, like the claim's `at`: look a
# little earlier than the claim for its rejection, in case the clock stepped.
_CLOCK_MARGIN_MS = 1_000
# Scans of task-events for a claim's rejection (each a short-lived consumer):
# at most this many at once per process, so polling cannot swamp it.
MAX_CONCURRENT_SCANS = 4
CacheKey = tuple[str, str, tuple[str, ...] | None]  # user id, scene, tags


class BadRequest(Exception):
    """Input the API refuses with 400 (the message says what is wrong)."""


class Unavailable(Exception):
    """This process cannot answer for the user now (503 with Retry-After)."""


# ---------------------------------------------------------------- metrics

# No *_created series, like the worker's registry (streams.monitor.metrics).
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=False)
API_REQUESTS = Counter(
    "taskstream_api_requests",
    "Render API requests this API process answered, by route (tasks, claims, claim_poll) "
    "and answer: served (in full), forwarded (to the owner), cached / static (fallbacks "
    "under load), deferred (a claim accepted, its outcome left to the poll URL).",
    ["route", "answer"],
    registry=REGISTRY,
)
API_IN_FLIGHT = Gauge(
    "taskstream_api_in_flight",
    "Render API requests admitted by the load limit and not answered yet.",
    registry=REGISTRY,
)


# ---------------------------------------------------------------- context


class Kafka:
    """What the API needs of Kafka: produce a claim, scan for its rejection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap.split(","),
            # On every in-sync replica before the claim is acknowledged, and no
            # duplicate from the client's own retries (a leader moving).
            acks="all",
            enable_idempotence=True,
            **settings.kafka_security.aiokafka_config(),
        )

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def produce_claim(self, claim: TaskClaim, partition: int) -> int:
        sent = await self.producer.send_and_wait(
            self.settings.topic(CLAIMS), encode(claim), claim.user_id.encode(), partition
        )
        return int(sent.offset)

    def rejections_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap.split(","),
            enable_auto_commit=False,
            **self.settings.kafka_security.aiokafka_config(),
        )


@dataclass
class Api:
    """Everything a request handler uses; one per API process."""

    settings: Settings
    routing: RoutingView
    tables: SecondaryTables
    catalogs: CatalogFeed
    kafka: Kafka
    admission: Admission = field(init=False)
    # The answers fallbacks come from (memory only: a restarted API process
    # answers `static` until it has served again).
    answers: AnswerCache = field(init=False)
    http: aiohttp.ClientSession | None = None
    scans: asyncio.Semaphore | None = None

    def __post_init__(self) -> None:
        s = self.settings
        self.admission = Admission(s.api_rate, s.api_burst, s.api_concurrency)
        self.answers = AnswerCache(s.api_cache)

    @property
    def catalog(self) -> Catalog:
        return self.catalogs.catalog

    def me(self) -> str:
        return self.routing.current().worker

    def partition(self, user_id: str) -> int:
        """Where the user's inputs and state live (keyed like `taskstream produce`)."""
        return partition_for(user_id.encode(), self.settings.partitions)

    def waiting_for(self) -> list[str]:
        """What this process waits for before it can answer (empty: ready)."""
        routing = self.routing.current()
        waiting = []
        if not routing.worker:
            waiting.append("the worker's routing file")
        elif routing.silent_for:
            waiting.append(
                f"the worker (silent for {routing.silent_for:.0f} s: stopped or blocked)"
            )
        elif not routing.ready:
            waiting.append("the worker (joining, recovering or rebalancing)")
        if not self.catalogs.wait_ready(0):
            waiting.append("catalog")
        return waiting


API_KEY = web.AppKey("api", Api)


def build_app(api: Api, ops: Ops | None = None) -> web.Application:
    application = web.Application(client_max_size=MAX_BODY_BYTES + 1)
    application[API_KEY] = api
    if ops is not None:
        ops_page.install(application, ops)
    application.add_routes(API_ROUTES)
    application.add_routes(
        [
            web.get("/metrics", get_metrics),
            web.get("/health", get_health),
            web.get("/ready", get_ready),
        ]
    )
    return application


# ------------------------------------------------------------------ views

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json_errors(handler: Handler) -> Handler:
    """A failure inside a view answers 500 with a JSON error (and is logged
    with its traceback here), never aiohttp's plain-text page; 503 when the
    worker's state cannot be read now."""

    @functools.wraps(handler)
    async def guarded(req: web.Request) -> web.Response:
        try:
            return await handler(req)
        except Unavailable as exc:
            return _unavailable(req.app[API_KEY], str(exc))
        except Exception:
            log.exception("render API: %s %s failed", req.method, req.url.path)
            return _error(
                req.app[API_KEY], 500, "internal error; the API process's log has the details"
            )

    return guarded


@_json_errors
async def get_tasks(req: web.Request) -> web.Response:
    api: Api = req.app[API_KEY]
    user_id = req.match_info["user_id"]
    try:
        scene, tags = _render_query(req)
    except BadRequest as exc:
        return _error(api, 400, str(exc))
    refused = _check_caller(api, req, user_id)
    if refused is not None:
        return refused
    key: CacheKey = (user_id, scene, tags)
    if not _admit(api):
        return _tasks_fallback(api, key)
    try:
        routed = await _route(api, req, user_id, None)
        if routed is not None:
            API_REQUESTS.labels("tasks", "forwarded").inc()
            relayed = routed.body
            fresh = routed.status == 200 and FALLBACK_HEADER not in routed.headers
            if fresh and isinstance(relayed, bytes):
                api.answers.put(key, relayed)  # this process's fallback for the user
            return routed
        at = _now_micros()
        user = _known_templates_only(api.catalog, _read_user(api, user_id))
        views = render(user, api.catalog, scene, at, tags)
        body = orjson.dumps(tasks_body(user_id, scene, at, views))
        api.answers.put(key, body)
        API_REQUESTS.labels("tasks", "served").inc()
        return _reply_bytes(api, 200, body)
    finally:
        _release(api)


@_json_errors
async def post_claim(req: web.Request) -> web.Response:
    api: Api = req.app[API_KEY]
    user_id = req.match_info["user_id"]
    body = await _read_body(req)
    if body is None:
        return _error(api, 413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        template_id, user_tags, request_id = _claim_request(body)
    except BadRequest as exc:
        return _error(api, 400, str(exc))
    refused = _check_caller(api, req, user_id)
    if refused is not None:
        return refused
    if user_tags and not _from_service(api, req):
        # Eligibility rules read the tags: a user's own token cannot vouch
        # for them (anyone could claim a "lapsed users only" task).
        return _error(
            api,
            403,
            "user_tags may only be sent by a service (X-Service-Key); "
            "a user token claims with no tags",
        )
    claim_id = claim_event_id(user_id, request_id, uuid.uuid4().hex)
    if not _admit(api):
        # Over the limit: no table read, no wait, no forwarding; the claim
        # is still produced (any process may) and judged by the processor.
        # A retry of a claim that created a task is produced again, and
        # the engine ignores it; the poll URL then answers `claimed`.
        offset, since_ms = await _produce_claim(api, claim_id, user_id, template_id, user_tags)
        API_REQUESTS.labels("claims", "deferred").inc()
        return _pending(api, user_id, claim_id, offset, since_ms, {FALLBACK_HEADER: "deferred"})
    try:
        routed = await _route(api, req, user_id, body)
        if routed is not None:
            API_REQUESTS.labels("claims", "forwarded").inc()
            return routed
        API_REQUESTS.labels("claims", "served").inc()
        task_id = claimed_task_id(_read_user(api, user_id, fresh=True), claim_id)
        if task_id is not None:  # a retry of a claim that created a task
            return _reply(api, 200, claim_body(claim_id, task_id, None))
        offset, since_ms = await _produce_claim(api, claim_id, user_id, template_id, user_tags)
        return await _outcome(api, user_id, claim_id, offset, since_ms, CLAIM_WAIT_SECONDS)
    finally:
        _release(api)


@_json_errors
async def get_claim(req: web.Request) -> web.Response:
    api: Api = req.app[API_KEY]
    user_id, claim_id = req.match_info["user_id"], req.match_info["claim_id"]
    try:
        offset = _int_param(req, "offset")
        since_ms = _int_param(req, "since_ms")
    except BadRequest as exc:
        return _error(api, 400, str(exc))
    refused = _check_caller(api, req, user_id)
    if refused is not None:
        return refused
    if not _admit(api):  # over the limit: still pending, as far as this answer goes
        API_REQUESTS.labels("claim_poll", "deferred").inc()
        return _pending(api, user_id, claim_id, offset, since_ms, {FALLBACK_HEADER: "deferred"})
    try:
        routed = await _route(api, req, user_id, None)
        if routed is not None:
            API_REQUESTS.labels("claim_poll", "forwarded").inc()
            return routed
        API_REQUESTS.labels("claim_poll", "served").inc()
        return await _outcome(api, user_id, claim_id, offset, since_ms, POLL_WAIT_SECONDS)
    finally:
        _release(api)


# What docs/openapi.json describes (tests/unit/test_openapi.py).
API_ROUTES = [
    web.get("/users/{user_id}/tasks", get_tasks, name="render_tasks"),
    web.post("/users/{user_id}/claims", post_claim, name="claims"),
    web.get("/users/{user_id}/claims/{claim_id}", get_claim, name="claim"),
]


async def get_metrics(req: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(req.headers.get("Accept", ""))
    # As a header: aiohttp refuses a content_type argument with a charset in it.
    return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})


async def get_health(req: web.Request) -> web.Response:
    return web.json_response({"alive": True})


async def get_ready(req: web.Request) -> web.Response:
    waiting = req.app[API_KEY].waiting_for()
    if waiting:
        return web.json_response({"ready": False, "waiting_for": waiting}, status=503)
    return web.json_response({"ready": True})


# ----------------------------------------------------------- input checks


def _render_query(req: web.Request) -> tuple[str, tuple[str, ...] | None]:
    scene = req.query.get("scene")
    if scene is None or not scene.strip():
        raise BadRequest("the query parameter 'scene' is required (e.g. ?scene=home)")
    if len(scene) > MAX_TEXT:
        raise BadRequest(f"'scene' is over {MAX_TEXT} characters")
    raw_tags = req.query.get("tags")
    if raw_tags is None:
        return scene, None  # no tags: tasks only, no offers
    tags = tuple(t.strip() for t in raw_tags.split(",") if t.strip())
    if len(tags) > MAX_TAGS or any(len(t) > MAX_TEXT for t in tags):
        raise BadRequest(f"'tags' takes at most {MAX_TAGS} tags of {MAX_TEXT} characters")
    return scene, tags


def _claim_request(body: bytes) -> tuple[str, tuple[str, ...], str | None]:
    """(template_id, user_tags, request_id) of a claim's JSON body."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(doc) - {"template_id", "user_tags", "request_id"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    template_id = doc.get("template_id")
    if not isinstance(template_id, str) or not template_id or len(template_id) > MAX_TEXT:
        raise BadRequest(f"'template_id' must be a string of 1 to {MAX_TEXT} characters")
    tags = doc.get("user_tags", [])
    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and 0 < len(t) <= MAX_TEXT for t in tags)
    ):
        raise BadRequest(f"'user_tags' must be a list of at most {MAX_TAGS} non-empty strings")
    request_id = doc.get("request_id")
    if request_id is not None and (
        not isinstance(request_id, str) or not request_id or len(request_id) > MAX_TEXT
    ):
        raise BadRequest(f"'request_id' must be a string of 1 to {MAX_TEXT} characters")
    return template_id, tuple(tags), request_id


def _from_service(api: Api, req: web.Request) -> bool:
    return service_key_matches(req.headers.get("X-Service-Key") or "", api.settings.service_key)


def _int_param(req: web.Request, name: str) -> int:
    raw = req.query.get(name)
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise BadRequest(f"the query parameter '{name}' must be an integer >= 0")
    return int(raw)


async def _read_body(req: web.Request) -> bytes | None:
    """The body, or None when it is over MAX_BODY_BYTES (read no further)."""
    if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
        return None
    body = bytearray()
    while chunk := await req.content.read(MAX_BODY_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


# ------------------------------------------------- credentials and routing


def _check_caller(api: Api, req: web.Request, user_id: str) -> web.Response | None:
    """None when the API is on and the caller may act for `user_id`; else the refusal."""
    if not api.settings.api_secret:
        return _error(
            api,
            503,
            "the render API is disabled: set TASKSTREAM_API_SECRET (or TASKSTREAM_API_SECRET_FILE)",
        )
    if len(user_id) > MAX_USER_ID_LENGTH:
        return _error(api, 400, f"a user id is at most {MAX_USER_ID_LENGTH} characters")
    denied = check_access(
        user_id,
        authorization=req.headers.get("Authorization"),
        service_key=req.headers.get("X-Service-Key"),
        secret=api.settings.api_secret.encode(),
        configured_service_key=api.settings.service_key,
        now=int(time.time()),
    )
    if denied is not None:
        headers = {"WWW-Authenticate": "Bearer"} if denied.status == 401 else None
        return _error(api, denied.status, denied.message, headers)
    return None


async def _route(
    api: Api, req: web.Request, user_id: str, body: bytes | None
) -> web.Response | None:
    """None when this process's worker owns the user and it can answer;
    otherwise the owner's answer (forwarded), or 503 while the owner is not
    known or ready."""
    routing = api.routing.current()
    partition = api.partition(user_id)
    owner = routing.owners.get(partition)
    if owner is None or not routing.worker:
        return _unavailable(api, f"no worker owns partition {partition} yet (rebalancing)")
    if owner != routing.worker:
        if ROUTED_HEADER in req.headers:  # the assignment moved while it travelled
            return _unavailable(api, f"partition {partition} is moving between workers")
        return await _forward(api, req, owner, body)
    if routing.silent_for:
        return _unavailable(
            api, f"this worker has been silent for {routing.silent_for:.0f} s (stopped or blocked)"
        )
    if not routing.ready or partition not in routing.active:
        return _unavailable(api, f"partition {partition} is being recovered on this worker")
    if not api.catalogs.wait_ready(0):
        return _unavailable(api, "this worker has not read the templates topic yet")
    return None


async def _forward(api: Api, req: web.Request, owner: str, body: bytes | None) -> web.Response:
    url = f"{owner.rstrip('/')}{req.rel_url}"
    headers = {h: req.headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in req.headers}
    headers[ROUTED_HEADER] = api.me()
    if api.http is None:
        api.http = aiohttp.ClientSession()
    timeout = aiohttp.ClientTimeout(total=CLAIM_WAIT_SECONDS + 5)
    try:
        async with api.http.request(
            req.method, url, headers=headers, data=body, timeout=timeout
        ) as answer:
            payload = await answer.read()
            kept = {
                h: answer.headers[h] for h in _FORWARDED_RESPONSE_HEADERS if h in answer.headers
            }
            return web.Response(
                body=payload, status=answer.status, content_type=answer.content_type, headers=kept
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("forwarding %s %s to %s failed: %r", req.method, req.rel_url.path, owner, exc)
        return _error(api, 502, f"the worker owning this user ({owner}) did not answer")


# ---------------------------------------------------------- load shedding


def _admit(api: Api) -> bool:
    """Whether this process takes the request on (then `_release` once answered)."""
    if not api.admission.enter(time.monotonic_ns() // 1000):
        return False
    API_IN_FLIGHT.inc()
    return True


def _release(api: Api) -> None:
    api.admission.leave()
    API_IN_FLIGHT.dec()


def _tasks_fallback(api: Api, key: CacheKey) -> web.Response:
    """The answer over the limit: the last one served for this user, scene
    and tags, else no tasks and no offers; both say `degraded`."""
    cached = api.answers.get(key)
    if cached is not None:
        API_REQUESTS.labels("tasks", "cached").inc()
        return _reply_bytes(api, 200, mark_fallback(cached, "cached"), {FALLBACK_HEADER: "cached"})
    user_id, scene, _ = key
    doc = {**tasks_body(user_id, scene, _now_micros(), ()), "degraded": True, "fallback": "static"}
    API_REQUESTS.labels("tasks", "static").inc()
    return _reply(api, 200, doc, {FALLBACK_HEADER: "static"})


async def _produce_claim(
    api: Api, claim_id: str, user_id: str, template_id: str, user_tags: tuple[str, ...]
) -> tuple[int, int]:
    """Produce the claim (`at` = this host's clock); (its offset, since_ms for the poll)."""
    at = _now_micros()
    claim = TaskClaim(claim_id, user_id, template_id, at, user_tags)
    offset = await api.kafka.produce_claim(claim, api.partition(user_id))
    return offset, at // 1000 - _CLOCK_MARGIN_MS


# ------------------------------------------------------------- the owner


def _read(api: Api, key: bytes, partition: int, fresh: bool = False) -> bytes | None:
    """A key of one of this worker's active partitions, from its database."""
    try:
        return api.tables.get(api.routing.current(), partition, key, fresh)
    except KeyError:
        raise Unavailable(f"partition {partition} is not active on this worker") from None
    except Exception as exc:  # rocksdict raises plain Exceptions for I/O errors
        log.warning("reading partition %d of the worker's state failed: %s", partition, exc)
        raise Unavailable(f"partition {partition}'s state cannot be read yet") from None


def _read_user(api: Api, user_id: str, fresh: bool = False) -> UserState | None:
    return decode_user(_read(api, state_user_key(user_id), api.partition(user_id), fresh))


def _known_templates_only(catalog: Catalog, user: UserState | None) -> UserState | None:
    """Instances of templates removed from the catalog since are not shown
    (render looks every shown instance's template up)."""
    if user is None:
        return None
    known = catalog.templates
    if all(i.template_id in known for i in user.instances):
        return user
    return dataclasses.replace(
        user, instances=tuple(i for i in user.instances if i.template_id in known)
    )


def _claim_processed(api: Api, partition: int, offset: int) -> bool:
    raw = _read(api, partition_key(partition), partition, fresh=True)
    record = PartitionRecord(partition) if raw is None else decode_partition(raw)
    return record.next_offset.get(CLAIMS, 0) > offset and offset not in record.held.get(CLAIMS, ())


async def _outcome(
    api: Api, user_id: str, claim_id: str, offset: int, since_ms: int, wait: float
) -> web.Response:
    """The claim's outcome once the processor has applied it, else 202 with a poll URL."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    partition = api.partition(user_id)
    while not _claim_processed(api, partition, offset):
        if loop.time() >= deadline:
            return _pending(api, user_id, claim_id, offset, since_ms)
        await asyncio.sleep(0.05)
    user = _read_user(api, user_id, fresh=True)
    task_id = claimed_task_id(user, claim_id)
    if task_id is not None:
        return _reply(api, 200, claim_body(claim_id, task_id, None))
    last = None if user is None else user.last_claim
    judged_last = last is not None and last[1] == claim_id
    if last is not None and judged_last:  # a retry: its first judgement may be older
        since_ms = min(since_ms, last[0] // 1000 - _CLOCK_MARGIN_MS)
    reason = await _find_rejection(api, partition, user_id, claim_id, since_ms, deadline)
    if reason is not None:
        return _reply(api, 200, claim_body(claim_id, None, reason))
    if user is None or judged_last:  # rejected; the output is still on its way to the broker
        return _pending(api, user_id, claim_id, offset, since_ms)
    # No task, no rejection, and the user's last judged claim is another one:
    # the engine took it for a redelivery (its id judged before, or older
    # than a claim already processed) and emitted nothing.
    return _reply(api, 200, claim_body(claim_id, None, None))


async def _find_rejection(
    api: Api, partition: int, user_id: str, claim_id: str, since_ms: int, deadline: float
) -> str | None:
    """The reason of `user_id`'s claim_rejected caused by `claim_id`, read
    from the task-events partition from `since_ms` on, until `deadline`
    (loop time); at most MAX_CONCURRENT_SCANS scans at once."""
    if api.scans is None:  # created in the running loop
        api.scans = asyncio.Semaphore(MAX_CONCURRENT_SCANS)
    async with api.scans:
        return await _scan_for_rejection(api, partition, user_id, claim_id, since_ms, deadline)


async def _scan_for_rejection(
    api: Api, partition: int, user_id: str, claim_id: str, since_ms: int, deadline: float
) -> str | None:
    loop = asyncio.get_running_loop()
    tp = TopicPartition(api.settings.topic(TASK_EVENTS), partition)
    consumer = api.kafka.rejections_consumer()
    await consumer.start()
    try:
        consumer.assign([tp])
        positioned = False
        # At least one full read, even when the deadline has passed already.
        while not positioned or loop.time() < deadline + 1.0:
            if not positioned:
                found = (await consumer.offsets_for_times({tp: max(0, since_ms)}))[tp]
                if found is None:  # nothing that recent yet
                    if loop.time() >= deadline:
                        return None
                    await asyncio.sleep(0.1)
                    continue
                consumer.seek(tp, found.offset)
                positioned = True
            batch = await consumer.getmany(tp, timeout_ms=200)
            for message in batch.get(tp, []):
                reason = _rejection_reason(message.value, user_id, claim_id)
                if reason is not None:
                    return reason
            if loop.time() >= deadline:
                return None
        return None
    finally:
        await consumer.stop()


def _rejection_reason(value: bytes | None, user_id: str, claim_id: str) -> str | None:
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("type") != "claim_rejected":
        return None
    if doc.get("caused_by") != claim_id or doc.get("user_id") != user_id:
        return None  # another claim, or another user's (ids are not secrets)
    return str(doc.get("reason"))


# -------------------------------------------------------------- answers


def _now_micros() -> int:
    return time.time_ns() // 1000


def _reply(
    api: Api, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return _reply_bytes(api, status, orjson.dumps(doc), headers)


def _reply_bytes(
    api: Api, status: int, body: bytes, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers={SERVED_BY_HEADER: api.me(), **(headers or {})},
    )


def _error(
    api: Api, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return _reply(api, status, {"error": message}, headers)


def _unavailable(api: Api, message: str) -> web.Response:
    return _error(api, 503, message, {"Retry-After": "1"})


def _pending(
    api: Api,
    user_id: str,
    claim_id: str,
    offset: int,
    since_ms: int,
    headers: dict[str, str] | None = None,
) -> web.Response:
    path = f"/users/{quote(user_id, safe='')}/claims/{quote(claim_id, safe='')}"
    location = f"{path}?offset={offset}&since_ms={since_ms}"
    return _reply(api, 202, pending_body(claim_id), {"Location": location, **(headers or {})})


# ---------------------------------------------------------------- process


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the API for the worker whose data dir is `settings.data_dir` until `stop`."""
    budget = rocksdb_memory.MemoryBudget(settings.rocksdb_memory_mb * rocksdb_memory.MIB)
    consumer_config = {
        "bootstrap.servers": settings.bootstrap,
        **settings.kafka_security.confluent_config(),
    }
    catalogs = CatalogFeed(consumer_config, settings.topic(TEMPLATES))
    api = Api(
        settings=settings,
        routing=RoutingView(routing_path(settings.data_dir)),
        tables=SecondaryTables(settings.data_dir / "api-secondary", budget=budget),
        catalogs=catalogs,
        kafka=Kafka(settings),
    )
    ops = Ops.build(settings, api.routing, api.tables, catalogs, consumer_config)
    catalogs.start()
    await api.kafka.start()
    runner = web.AppRunner(build_app(api, ops), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.web_host, settings.api_port)
        await site.start()
        log.info(
            "render API on http://%s:%d for the worker in %s (limit %d/s, burst %d, %d in flight)",
            settings.web_host,
            settings.api_port,
            settings.data_dir,
            settings.api_rate,
            settings.api_burst,
            settings.api_concurrency,
        )
        await stop.wait()
    finally:
        await runner.cleanup()
        await ops.close()
        if api.http is not None:
            await api.http.close()
        await api.kafka.stop()
        catalogs.stop()
        api.tables.close()
