"""The render API on two real workers (real broker, RocksDB, faust web servers).

The sample templates (their windows widened to include today: the API uses
the server's clock) are published; 12 users claim the clear box
(per_order) and the dark box (cumulative) two hours ago and pay one order an
hour ago. Then, against both workers:
- every user's tasks are answered by the worker owning the user's partition,
  whichever worker is asked (X-Served-By), with the same content, and the
  owners are both workers;
- a user token reads its own user only (403 for another), an expired or
  forged token and no credentials get 401, the service key reads anyone;
- bad input gets 400 with a message (413 for a huge body), an unknown user
  empty lists;
- a claim POSTed to the non-owner comes back claimed with its task id, is
  then rendered, a second claim of the template is rejected already_claimed,
  a retry with the same request_id gives the same task; a claim produced
  outside the API is answered by the poll URL.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.workers import TASKSTREAM, Deployment, WorkerProcess

from app.access import sign_token
from schemas.timestamps import format_utc
from streams.kafka.partitioner import partition_for

pytestmark = pytest.mark.integration

SECRET = "render-api-test-secret"
SERVICE_KEY = "render-api-test-service-key"
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
USERS = [f"api-u{n:02d}" for n in range(12)]
PARTITIONS = 4
CLEAR, DARK = "clear_box_per_order", "dark_box_3_days"


@dataclass
class Answer:
    status: int
    headers: Message
    body: dict[str, Any]

    @property
    def served_by(self) -> str | None:
        return self.headers.get("X-Served-By")


def call(
    worker: WorkerProcess,
    path: str,
    *,
    token: str | None = None,
    service_key: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> Answer:
    request = urllib.request.Request(f"{worker.api_url}{path}", data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if service_key is not None:
        request.add_header("X-Service-Key", service_key)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return Answer(response.status, response.headers, json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, json.loads(error.read() or b"{}"))


def token_for(user: str, ttl: int = 600) -> str:
    return sign_token(user, int(time.time()) + ttl, SECRET.encode())


@dataclass
class Api:
    deployment: Deployment
    a: WorkerProcess
    b: WorkerProcess
    now: int  # epoch seconds when the events were made

    @property
    def workers(self) -> tuple[WorkerProcess, WorkerProcess]:
        return self.a, self.b

    def other(self, worker: WorkerProcess) -> WorkerProcess:
        return self.b if worker is self.a else self.a

    def owner_of(self, user: str) -> WorkerProcess:
        """Who answers for the user (asked with the service key)."""
        answer = call(self.a, f"/users/{user}/tasks?scene=home", service_key=SERVICE_KEY)
        assert answer.status == 200, answer.body
        return self.a if answer.served_by == self.a.api_url else self.b

    def logs(self) -> str:
        return "\n".join(f"--- {w.label} ---\n{w.log_tail(30)}" for w in self.workers)


def _event(kind: str, user: str, at: int, **fields: Any) -> bytes:
    return orjson.dumps(
        {"type": kind, "v": 1, "user_id": user, "at": format_utc(at * 1_000_000), **fields}
    )


def _templates(root: Path) -> Path:
    docs = orjson.loads((SAMPLES / "templates.json").read_bytes())
    for doc in docs:  # the API judges claims at the server's clock: today
        doc["active_from"], doc["active_until"] = "2020-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
    path = root / "templates.json"
    path.write_bytes(orjson.dumps(docs))
    return path


def _all_served(api: Api) -> bool:
    """Every user answered by the owner of their partition, through both workers."""
    owners: dict[int, set[str | None]] = {}
    for user in USERS:
        for worker in api.workers:
            try:
                answer = call(worker, f"/users/{user}/tasks?scene=home", service_key=SERVICE_KEY)
            except (urllib.error.URLError, ConnectionError):  # not listening yet
                return False
            if answer.status != 200 or len(answer.body["tasks"]) != 2:
                return False
            owners.setdefault(partition_for(user.encode(), PARTITIONS), set()).add(answer.served_by)
    # one owner per partition, and both workers own some
    return all(len(o) == 1 for o in owners.values()) and len(set.union(*owners.values())) == 2


@pytest.fixture(scope="module")
def api(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("render-api")
    deployment = Deployment(kafka, root, partitions=PARTITIONS)
    deployment.create_topics()
    deployment.publish_templates(_templates(root), SAMPLES / "pools.json")
    now = int(time.time())
    lines = []
    for user in USERS:
        for template in (CLEAR, DARK):
            lines.append(
                _event("task_claim", user, now - 7200, event_id=f"c-{template}-{user}",
                       template_id=template, user_tags=["lapsed"])
            )  # fmt: skip
    for user in USERS:
        lines.append(
            _event("order_paid", user, now - 3600, event_id=f"o-{user}", order_id=f"ord-{user}",
                   amount_cents=2_000, channel="next_day_pickup")
        )  # fmt: skip
    deployment.produce(lines)
    extra = {
        "TASKSTREAM_API_SECRET": SECRET,
        "TASKSTREAM_SERVICE_KEY": SERVICE_KEY,
        "TASKSTREAM_WEB_HOST": "127.0.0.1",
    }
    a = deployment.worker("a", **extra).start()
    b = deployment.worker("b", **extra).start()
    started = Api(deployment, a, b, now)
    rewards = deployment.reader("rewards")
    try:
        # Processed: each user's order paid the clear box's first step.
        rewards.wait_until(
            lambda seen: sum(m["type"] == "reward_granted" for m in seen) >= len(USERS),
            90,
            why="the first step's reward of every user",
            workers=(a, b),
        )
        deadline = time.monotonic() + 90
        while not _all_served(started):
            assert a.running(), started.logs()
            assert b.running(), started.logs()
            assert time.monotonic() < deadline, "workers never served every user\n" + started.logs()
            time.sleep(0.5)
        yield started
    finally:
        rewards.close()
        a.stop()
        b.stop()


def test_a_user_is_served_by_the_owner_of_their_partition_whichever_worker_is_asked(
    api: Api,
) -> None:
    owners = {}
    for user in USERS:
        token = token_for(user)
        answers = [call(w, f"/users/{user}/tasks?scene=home", token=token) for w in api.workers]
        assert [a.status for a in answers] == [200, 200]
        assert answers[0].served_by == answers[1].served_by  # one owner, asked twice
        owner = answers[0].served_by
        owners[user] = owner
        for answer in answers:
            assert (answer.body["user_id"], answer.body["scene"]) == (user, "home")
            assert answer.body["at"] >= format_utc(api.now * 1_000_000)  # the server's clock
        assert answers[0].body["tasks"] == answers[1].body["tasks"]
        # Same priority and claim time: ordered by task id, so look them up by template.
        tasks = {t["template_id"]: t for t in answers[0].body["tasks"]}
        clear, dark = tasks[CLEAR], tasks[DARK]
        assert clear == {
            "display": "visible",
            "template_id": CLEAR,
            "title": clear["title"],
            "task_id": clear["task_id"],
            "status": "in_progress",
            "progress": 1,
            "target": 4,
            "count_by": "order",
            "left": 3,
            "next_reward": {"at_progress": 2, "kind": "order_step", "amount_cents": 200},
            "deadline": format_utc((api.now - 7200 + 5 * 86_400) * 1_000_000),
            "accrued_cents": 100,
        }
        # The dark box: only what has accrued (its reward comes at completion).
        assert set(dark) == {"display", "template_id", "title", "task_id", "accrued_cents"}
        assert (dark["display"], dark["template_id"], dark["accrued_cents"]) == ("hidden", DARK, 0)
    by_partition: dict[int, set[str | None]] = {}
    for user, owner in owners.items():
        by_partition.setdefault(partition_for(user.encode(), PARTITIONS), set()).add(owner)
    assert all(len(o) == 1 for o in by_partition.values())
    assert set.union(*by_partition.values()) == {api.a.api_url, api.b.api_url}


def test_scenes_and_offers(api: Api) -> None:
    user = USERS[0]
    token = token_for(user)
    checkin = call(api.a, f"/users/{user}/tasks?scene=checkin", token=token).body
    assert [t["template_id"] for t in checkin["tasks"]] == [DARK]  # the clear box is not there
    assert checkin["offers"] == []  # no tags given: no offers
    offers = call(api.b, f"/users/{user}/tasks?scene=checkin&tags=lapsed", token=token).body
    # Highest priority first; the dark box is held already, the clear box not in this scene.
    assert [o["template_id"] for o in offers["offers"]] == [
        "milestones_exclusive",
        "lottery_exclusive",
    ]
    nowhere = call(api.a, f"/users/{user}/tasks?scene=no_such_scene", token=token)
    assert (nowhere.status, nowhere.body["tasks"], nowhere.body["offers"]) == (200, [], [])


def test_tokens_read_their_own_user_only(api: Api) -> None:
    alice, bob = USERS[0], USERS[1]
    # A token from the command operators use.
    printed = subprocess.run(
        [TASKSTREAM, "token", alice, "--ttl", "60"],
        env={**os.environ, **api.deployment.env, "TASKSTREAM_API_SECRET": SECRET},
        capture_output=True,
        check=True,
    )
    token = printed.stdout.decode().strip()
    for worker in api.workers:  # refused by whichever worker is asked, owner or not
        assert call(worker, f"/users/{alice}/tasks?scene=home", token=token).status == 200
        cross = call(worker, f"/users/{bob}/tasks?scene=home", token=token)
        assert (cross.status, cross.body) == (403, {"error": "this token is for another user"})
        expired = sign_token(alice, int(time.time()) - 1, SECRET.encode())
        late = call(worker, f"/users/{alice}/tasks?scene=home", token=expired)
        assert (late.status, late.body) == (401, {"error": "token expired"})
        assert late.headers["WWW-Authenticate"] == "Bearer"
        forged = sign_token(alice, int(time.time()) + 60, b"not the secret")
        assert call(worker, f"/users/{alice}/tasks?scene=home", token=forged).status == 401
        assert call(worker, f"/users/{alice}/tasks?scene=home").status == 401
        wrong_key = call(worker, f"/users/{alice}/tasks?scene=home", service_key="guess")
        assert (wrong_key.status, wrong_key.body) == (401, {"error": "invalid service key"})
        claim = b'{"template_id": "%s"}' % CLEAR.encode()
        assert (
            call(worker, f"/users/{bob}/claims", token=token, method="POST", body=claim).status
            == 403
        )


def test_bad_input_gets_400_with_a_message(api: Api) -> None:
    user = "api-nobody"
    token = token_for(user)
    for worker in api.workers:
        unknown = call(worker, f"/users/{user}/tasks?scene=home&tags=", token=token)
        assert (unknown.status, unknown.body["tasks"]) == (200, [])
        assert unknown.body["offers"]  # an unknown user may claim: the offers are listed
        no_scene = call(worker, f"/users/{user}/tasks", token=token)
        assert no_scene.status == 400
        assert "scene" in no_scene.body["error"]
        claims = f"/users/{user}/claims"
        cases = {
            b"{not json": "not JSON",
            b"[1, 2]": "JSON object",
            b"{}": "template_id",
            b'{"template_id": 7}': "template_id",
            b'{"template_id": "x", "user_tags": "lapsed"}': "user_tags",
            b'{"template_id": "x", "request_id": ""}': "request_id",
            b'{"template_id": "x", "colour": "red"}': "unknown field",
        }
        for body, says in cases.items():
            answer = call(worker, claims, token=token, method="POST", body=body)
            assert answer.status == 400, body
            assert says in answer.body["error"], (body, answer.body)
        huge = b'{"template_id": "%s"}' % (b"x" * 70_000)
        assert call(worker, claims, token=token, method="POST", body=huge).status == 413
        poll = call(worker, f"/users/{user}/claims/c1?offset=minus", token=token)
        assert poll.status == 400
        assert "offset" in poll.body["error"]


def test_claim_round_trip_through_the_other_worker(api: Api) -> None:
    user = "api-claimer"
    owner = api.owner_of(user)
    entry = api.other(owner)  # the request has to be routed
    token = token_for(user)
    claims = f"/users/{user}/claims"

    def post(doc: dict[str, Any]) -> Answer:  # the back end vouches for the user's tags
        return call(entry, claims, service_key=SERVICE_KEY, method="POST", body=orjson.dumps(doc))

    # A user's own token cannot vouch for tags (eligibility reads them).
    self_tagged = orjson.dumps({"template_id": CLEAR, "user_tags": ["lapsed"]})
    vouched = call(entry, claims, token=token, method="POST", body=self_tagged)
    assert vouched.status == 403, vouched.body
    assert "user_tags" in vouched.body["error"]

    first = post({"template_id": CLEAR, "user_tags": ["lapsed"], "request_id": "r-1"})
    assert first.status == 200, first.body
    assert first.served_by == owner.api_url
    assert first.body["outcome"] == "claimed"
    assert first.body["reason"] is None
    task_id = first.body["task_id"]
    shown = call(entry, f"/users/{user}/tasks?scene=home", token=token).body["tasks"]
    assert [(t["task_id"], t["progress"], t["left"]) for t in shown] == [(task_id, 0, 4)]

    again = post({"template_id": CLEAR, "user_tags": ["lapsed"], "request_id": "r-2"})
    assert (again.status, again.body["outcome"], again.body["reason"]) == (
        200,
        "rejected",
        "already_claimed",
    )
    assert again.body["task_id"] is None
    retry = post({"template_id": CLEAR, "user_tags": ["lapsed"], "request_id": "r-1"})
    assert (retry.status, retry.body) == (200, first.body)
    # A retried rejection: the engine ignores the duplicate; the answer is the
    # first judgement, read from the task-events topic.
    retry = post({"template_id": CLEAR, "user_tags": ["lapsed"], "request_id": "r-2"})
    assert (retry.status, retry.body) == (200, again.body)

    stranger = "api-stranger"  # no state at all: the rejection is read from task-events
    unknown = call(
        api.a,
        f"/users/{stranger}/claims",
        service_key=SERVICE_KEY,
        method="POST",
        body=b'{"template_id": "no_such_template"}',
    )
    assert (unknown.status, unknown.body["outcome"], unknown.body["reason"]) == (
        200,
        "rejected",
        "unknown_template",
    )


def test_a_claim_produced_upstream_is_answered_by_its_poll_url(api: Api) -> None:
    user = "api-upstream"
    at = int(time.time())
    claim_id = "upstream-claim-1"
    api.deployment.produce(
        [_event("task_claim", user, at, event_id=claim_id, template_id=DARK, user_tags=[])]
    )
    _, offset = api.deployment.positions[claim_id]
    path = f"/users/{user}/claims/{claim_id}?offset={offset}&since_ms={(at - 1) * 1000}"
    deadline = time.monotonic() + 30
    while True:
        answer = call(api.b, path, token=token_for(user))
        if answer.status == 200 or time.monotonic() > deadline:
            break
        assert answer.status == 202, answer.body
        assert answer.headers["Location"] == path
    assert answer.body["outcome"] == "claimed", answer.body
    assert answer.body["task_id"].startswith("task-")

    # A claim older than one already processed: the engine takes it for a
    # redelivery and says nothing; the poll says so.
    late_id = "upstream-claim-0"
    api.deployment.produce(
        [_event("task_claim", user, at - 60, event_id=late_id, template_id=CLEAR, user_tags=[])]
    )
    _, offset = api.deployment.positions[late_id]
    path = f"/users/{user}/claims/{late_id}?offset={offset}&since_ms={(at - 61) * 1000}"
    deadline = time.monotonic() + 30
    while (answer := call(api.a, path, token=token_for(user))).status == 202:
        assert time.monotonic() < deadline, answer.body
    assert (answer.status, answer.body["outcome"], answer.body["task_id"]) == (200, "ignored", None)
