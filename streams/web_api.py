"""The render API, on every worker's faust web server (docs/api.md, docs/openapi.json).

    GET  /users/{user_id}/tasks?scene=S[&tags=a,b]   what the front end shows
    POST /users/{user_id}/claims                     claim a task; its outcome
    GET  /users/{user_id}/claims/{claim_id}?offset=N&since_ms=T   poll a pending claim

A user lives in partition murmur2(user_id) % N of every input topic and of
the state table's changelog, so exactly one worker holds their state: the
one faust's assignor gave that changelog partition to. Any worker accepts a
request, checks it (credentials, input), and forwards it to the owner's
advertised URL (canonical_url, http://TASKSTREAM_WEB_HOST:TASKSTREAM_WEB_PORT)
when it is not the owner itself; a forwarded request carries
X-Taskstream-Routed and is never forwarded again. Every answer says in
X-Served-By which worker answered. faust's own `table_route` does not fit:
it hashes the table key (b"u:" + user id), not the user id the inputs are
keyed by.

A claim is produced to the claims topic (keyed and partitioned like every
input) and answered from what the processor recorded: the partition record
says when the claim's offset was processed, the user's state whether it
created a task; a rejection's reason is read from the claim_rejected in the
task-events topic.

Load shedding (docs/api.md "Load shedding"): each worker admits at most
TASKSTREAM_API_RATE requests/s (bursts of TASKSTREAM_API_BURST) and
TASKSTREAM_API_CONCURRENCY in flight, checked right after the credentials
and before any table read or forwarding (streams/shedding.py, O(1)). The
excess is answered 200 with X-Taskstream-Fallback: the last answer this
worker gave for that user, scene and tags (cached), else an empty,
`degraded` one (static); a claim is still produced but answered 202 with
its poll URL at once (deferred), and a poll 202 without looking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.types import TP
from faust.web import Request, Response, View

from app.access import MAX_USER_ID_LENGTH, check_access, service_key_matches
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
from streams import metrics
from streams.app import app, catalog_feed, settings, state
from streams.config import CLAIMS, TASK_EVENTS
from streams.partition_state import PartitionRecord, decode_partition, decode_user, partition_key
from streams.partition_state import user_key as state_user_key
from streams.shedding import Admission, AnswerCache, mark_fallback
from taskstream.partitioner import partition_for

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
# at most this many at once per worker, so polling cannot swamp it.
MAX_CONCURRENT_SCANS = 4
_scans: asyncio.Semaphore | None = None
# This worker's load limit and the answers its fallbacks come from (memory
# only: a restarted worker answers `static` until it has served again).
_admission = Admission(settings.api_rate, settings.api_burst, settings.api_concurrency)
_answers = AnswerCache(settings.api_cache)
CacheKey = tuple[str, str, tuple[str, ...] | None]  # user id, scene, tags


class BadRequest(Exception):
    """Input the API refuses with 400 (the message says what is wrong)."""


# ------------------------------------------------------------------ views

Handler = Callable[..., Awaitable[Response]]


def _json_errors(handler: Handler) -> Handler:
    """A failure inside a view answers 500 with a JSON error (and is logged
    with its traceback here), never aiohttp's plain-text page."""

    @functools.wraps(handler)
    async def guarded(view: View, request: Request, **match: Any) -> Response:
        try:
            return await handler(view, request, **match)
        except Exception:
            log.exception("render API: %s %s failed", request.method, request.url.path)
            return _error(500, "internal error; the worker's log has the details")

    return guarded


@app.page("/users/{user_id}/tasks", name="render_tasks")
class TasksView(View):
    @_json_errors
    async def get(self, request: Request, **match: Any) -> Response:
        req = cast(web.Request, request)
        user_id = str(match["user_id"])
        try:
            scene, tags = _render_query(req)
        except BadRequest as exc:
            return _error(400, str(exc))
        refused = _check_caller(req, user_id)
        if refused is not None:
            return refused
        key: CacheKey = (user_id, scene, tags)
        if not _admit():
            return _tasks_fallback(key)
        try:
            routed = await _route(req, user_id, None)
            if routed is not None:
                metrics.API_REQUESTS.labels("tasks", "forwarded").inc()
                relayed = cast(web.Response, routed).body  # bytes: see _forward
                fresh = routed.status == 200 and FALLBACK_HEADER not in routed.headers
                if fresh and isinstance(relayed, bytes):
                    _answers.put(key, relayed)  # this worker's fallback for the user
                return routed
            at = _now_micros()
            user = _known_templates_only(await _read_user(user_id))
            views = render(user, catalog_feed.catalog, scene, at, tags)
            body = orjson.dumps(tasks_body(user_id, scene, at, views))
            _answers.put(key, body)
            metrics.API_REQUESTS.labels("tasks", "served").inc()
            return _reply_bytes(200, body)
        finally:
            _release()


@app.page("/users/{user_id}/claims", name="claims")
class ClaimsView(View):
    @_json_errors
    async def post(self, request: Request, **match: Any) -> Response:
        req = cast(web.Request, request)
        user_id = str(match["user_id"])
        body = await _read_body(req)
        if body is None:
            return _error(413, f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            template_id, user_tags, request_id = _claim_request(body)
        except BadRequest as exc:
            return _error(400, str(exc))
        refused = _check_caller(req, user_id)
        if refused is not None:
            return refused
        if user_tags and not _from_service(req):
            # Eligibility rules read the tags: a user's own token cannot vouch
            # for them (anyone could claim a "lapsed users only" task).
            return _error(
                403,
                "user_tags may only be sent by a service (X-Service-Key); "
                "a user token claims with no tags",
            )
        claim_id = claim_event_id(user_id, request_id, uuid.uuid4().hex)
        if not _admit():
            # Over the limit: no table read, no wait, no forwarding; the claim
            # is still produced (any worker may) and judged by the processor.
            # A retry of a claim that created a task is produced again, and
            # the engine ignores it; the poll URL then answers `claimed`.
            offset, since_ms = await _produce_claim(claim_id, user_id, template_id, user_tags)
            metrics.API_REQUESTS.labels("claims", "deferred").inc()
            return _pending(user_id, claim_id, offset, since_ms, {FALLBACK_HEADER: "deferred"})
        try:
            routed = await _route(req, user_id, body)
            if routed is not None:
                metrics.API_REQUESTS.labels("claims", "forwarded").inc()
                return routed
            metrics.API_REQUESTS.labels("claims", "served").inc()
            before = await _read_user(user_id)
            task_id = claimed_task_id(before, claim_id)
            if task_id is not None:  # a retry of a claim that created a task
                return _reply(200, claim_body(claim_id, task_id, None))
            offset, since_ms = await _produce_claim(claim_id, user_id, template_id, user_tags)
            return await _outcome(user_id, claim_id, offset, since_ms, CLAIM_WAIT_SECONDS)
        finally:
            _release()


@app.page("/users/{user_id}/claims/{claim_id}", name="claim")
class ClaimView(View):
    @_json_errors
    async def get(self, request: Request, **match: Any) -> Response:
        req = cast(web.Request, request)
        user_id, claim_id = str(match["user_id"]), str(match["claim_id"])
        try:
            offset = _int_param(req, "offset")
            since_ms = _int_param(req, "since_ms")
        except BadRequest as exc:
            return _error(400, str(exc))
        refused = _check_caller(req, user_id)
        if refused is not None:
            return refused
        if not _admit():  # over the limit: still pending, as far as this answer goes
            metrics.API_REQUESTS.labels("claim_poll", "deferred").inc()
            return _pending(user_id, claim_id, offset, since_ms, {FALLBACK_HEADER: "deferred"})
        try:
            routed = await _route(req, user_id, None)
            if routed is not None:
                metrics.API_REQUESTS.labels("claim_poll", "forwarded").inc()
                return routed
            metrics.API_REQUESTS.labels("claim_poll", "served").inc()
            return await _outcome(user_id, claim_id, offset, since_ms, POLL_WAIT_SECONDS)
        finally:
            _release()


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


def _from_service(req: web.Request) -> bool:
    return service_key_matches(req.headers.get("X-Service-Key") or "", settings.service_key)


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


def _check_caller(req: web.Request, user_id: str) -> Response | None:
    """None when the API is on and the caller may act for `user_id`; else the refusal."""
    if not settings.api_secret:
        return _error(
            503,
            "the render API is disabled on this worker: set TASKSTREAM_API_SECRET "
            "(or TASKSTREAM_API_SECRET_FILE)",
        )
    if len(user_id) > MAX_USER_ID_LENGTH:
        return _error(400, f"a user id is at most {MAX_USER_ID_LENGTH} characters")
    denied = check_access(
        user_id,
        authorization=req.headers.get("Authorization"),
        service_key=req.headers.get("X-Service-Key"),
        secret=settings.api_secret.encode(),
        configured_service_key=settings.service_key,
        now=int(time.time()),
    )
    if denied is not None:
        headers = {"WWW-Authenticate": "Bearer"} if denied.status == 401 else None
        return _error(denied.status, denied.message, headers)
    return None


async def _route(req: web.Request, user_id: str, body: bytes | None) -> Response | None:
    """None when this worker owns the user and can answer; otherwise the
    owner's answer (forwarded), or 503 while the owner is not known or ready."""
    partition = _partition(user_id)
    owner = _owner_url(partition)
    if owner is None:
        return _unavailable(f"no worker owns partition {partition} yet (rebalancing)")
    if owner != _me():
        if ROUTED_HEADER in req.headers:  # the assignment moved while it travelled
            return _unavailable(f"partition {partition} is moving between workers")
        return await _forward(req, owner, body)
    if app.rebalancing or app.in_recovery or not _active_here(partition):
        return _unavailable(f"partition {partition} is being recovered on this worker")
    if not catalog_feed.wait_ready(0):
        return _unavailable("this worker has not read the templates topic yet")
    return None


def _partition(user_id: str) -> int:
    """Where the user's inputs and state live (keyed like `taskstream produce`)."""
    return partition_for(user_id.encode(), settings.partitions)


def _changelog() -> str:
    return state.changelog_topic.get_topic_name()


def _owner_url(partition: int) -> str | None:
    """The advertised URL of the worker the group gave this state partition to."""
    topic = _changelog()
    for url, topics in app.assignor.tables_metadata().items():
        if partition in topics.get(topic, ()):
            return str(url)
    return None


def _active_here(partition: int) -> bool:
    return TP(_changelog(), partition) in app.assignor.assigned_actives()


def _me() -> str:
    return str(app.conf.canonical_url)


async def _forward(req: web.Request, owner: str, body: bytes | None) -> Response:
    url = f"{owner.rstrip('/')}{req.rel_url}"
    headers = {h: req.headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in req.headers}
    headers[ROUTED_HEADER] = _me()
    session = app.http_client
    timeout = aiohttp.ClientTimeout(total=CLAIM_WAIT_SECONDS + 5)
    try:
        async with session.request(
            req.method, url, headers=headers, data=body, timeout=timeout
        ) as answer:
            payload = await answer.read()
            kept = {
                h: answer.headers[h] for h in _FORWARDED_RESPONSE_HEADERS if h in answer.headers
            }
            response = web.Response(
                body=payload, status=answer.status, content_type=answer.content_type, headers=kept
            )
            return cast(Response, response)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("forwarding %s %s to %s failed: %r", req.method, req.rel_url.path, owner, exc)
        return _error(502, f"the worker owning this user ({owner}) did not answer")


# ---------------------------------------------------------- load shedding


def _admit() -> bool:
    """Whether this worker takes the request on (then `_release` once answered)."""
    if not _admission.enter(time.monotonic_ns() // 1000):
        return False
    metrics.API_IN_FLIGHT.inc()
    return True


def _release() -> None:
    _admission.leave()
    metrics.API_IN_FLIGHT.dec()


def _tasks_fallback(key: CacheKey) -> Response:
    """The answer over the limit: the last one served for this user, scene
    and tags, else no tasks and no offers; both say `degraded`."""
    cached = _answers.get(key)
    if cached is not None:
        metrics.API_REQUESTS.labels("tasks", "cached").inc()
        return _reply_bytes(200, mark_fallback(cached, "cached"), {FALLBACK_HEADER: "cached"})
    user_id, scene, _ = key
    doc = {**tasks_body(user_id, scene, _now_micros(), ()), "degraded": True, "fallback": "static"}
    metrics.API_REQUESTS.labels("tasks", "static").inc()
    return _reply(200, doc, {FALLBACK_HEADER: "static"})


async def _produce_claim(
    claim_id: str, user_id: str, template_id: str, user_tags: tuple[str, ...]
) -> tuple[int, int]:
    """Produce the claim (`at` = this worker's clock); (its offset, since_ms for the poll)."""
    at = _now_micros()
    claim = TaskClaim(claim_id, user_id, template_id, at, user_tags)
    sent = await app.producer.send_and_wait(
        settings.topic(CLAIMS), user_id.encode(), encode(claim), _partition(user_id), None, None
    )
    return sent.offset, at // 1000 - _CLOCK_MARGIN_MS


# ------------------------------------------------------------- the owner


def _read(key: bytes, partition: int) -> bytes | None:
    """A key of this worker's partition, read from that partition's database
    (faust reads from every open database when outside an agent's event,
    which could find a stale copy of a partition that moved away)."""
    store: Any = state.data
    if hasattr(store, "_db_for_partition"):
        value = store._db_for_partition(partition).get(key)
        return None if value is None else bytes(value)
    value = state.get(key)  # the memory store (tests)
    return None if value is None else bytes(value)


async def _read_user(user_id: str) -> UserState | None:
    return decode_user(_read(state_user_key(user_id), _partition(user_id)))


def _known_templates_only(user: UserState | None) -> UserState | None:
    """Instances of templates removed from the catalog since are not shown
    (render looks every shown instance's template up)."""
    if user is None:
        return None
    known = catalog_feed.catalog.templates
    if all(i.template_id in known for i in user.instances):
        return user
    return dataclasses.replace(
        user, instances=tuple(i for i in user.instances if i.template_id in known)
    )


def _claim_processed(partition: int, offset: int) -> bool:
    raw = _read(partition_key(partition), partition)
    record = PartitionRecord(partition) if raw is None else decode_partition(raw)
    return record.next_offset.get(CLAIMS, 0) > offset and offset not in record.held.get(CLAIMS, ())


async def _outcome(
    user_id: str, claim_id: str, offset: int, since_ms: int, wait: float
) -> Response:
    """The claim's outcome once the processor has applied it, else 202 with a poll URL."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    partition = _partition(user_id)
    while not _claim_processed(partition, offset):
        if loop.time() >= deadline:
            return _pending(user_id, claim_id, offset, since_ms)
        await asyncio.sleep(0.05)
    user = await _read_user(user_id)
    task_id = claimed_task_id(user, claim_id)
    if task_id is not None:
        return _reply(200, claim_body(claim_id, task_id, None))
    last = None if user is None else user.last_claim
    judged_last = last is not None and last[1] == claim_id
    if last is not None and judged_last:  # a retry: its first judgement may be older
        since_ms = min(since_ms, last[0] // 1000 - _CLOCK_MARGIN_MS)
    reason = await _find_rejection(partition, user_id, claim_id, since_ms, deadline)
    if reason is not None:
        return _reply(200, claim_body(claim_id, None, reason))
    if user is None or judged_last:  # rejected; the output is still on its way to the broker
        return _pending(user_id, claim_id, offset, since_ms)
    # No task, no rejection, and the user's last judged claim is another one:
    # the engine took it for a redelivery (its id judged before, or older
    # than a claim already processed) and emitted nothing.
    return _reply(200, claim_body(claim_id, None, None))


async def _find_rejection(
    partition: int, user_id: str, claim_id: str, since_ms: int, deadline: float
) -> str | None:
    """The reason of `user_id`'s claim_rejected caused by `claim_id`, read
    from the task-events partition from `since_ms` on, until `deadline`
    (loop time); at most MAX_CONCURRENT_SCANS scans at once."""
    global _scans
    if _scans is None:  # created in the running loop
        _scans = asyncio.Semaphore(MAX_CONCURRENT_SCANS)
    async with _scans:
        return await _scan_for_rejection(partition, user_id, claim_id, since_ms, deadline)


async def _scan_for_rejection(
    partition: int, user_id: str, claim_id: str, since_ms: int, deadline: float
) -> str | None:
    loop = asyncio.get_running_loop()
    tp = TopicPartition(settings.topic(TASK_EVENTS), partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap.split(","),
        enable_auto_commit=False,
        **settings.kafka_security.aiokafka_config(),
    )
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


def _reply(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return _reply_bytes(status, orjson.dumps(doc), headers)


def _reply_bytes(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    response = web.Response(
        body=body,
        status=status,
        content_type="application/json",
        headers={SERVED_BY_HEADER: _me(), **(headers or {})},
    )
    return cast(Response, response)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _reply(status, {"error": message}, headers)


def _unavailable(message: str) -> Response:
    return _error(503, message, {"Retry-After": "1"})


def _pending(
    user_id: str,
    claim_id: str,
    offset: int,
    since_ms: int,
    headers: dict[str, str] | None = None,
) -> Response:
    path = f"/users/{quote(user_id, safe='')}/claims/{quote(claim_id, safe='')}"
    location = f"{path}?offset={offset}&since_ms={since_ms}"
    return _reply(202, pending_body(claim_id), {"Location": location, **(headers or {})})
