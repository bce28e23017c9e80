"""The render API process beside a real worker: started, restarted, stopped with it.

One worker (real broker, RocksDB) with an API secret. Its API process must
answer /ready on the API port (web port + 1), not be the worker's process,
run at a lower CPU priority; come back by itself after a SIGKILL; answer a
user's tasks from the worker's state (a claim processed by the worker shows
up); answer 503 while its worker is SIGSTOPped (the routing file's
heartbeat stops) and serve again after SIGCONT; and be gone when the
worker is SIGKILLed (no orphan holding the port).
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from support.workers import Deployment, WorkerProcess

from app.access import sign_token
from schemas.timestamps import format_utc
from streams.api.routing import STALE_AFTER_SECONDS

pytestmark = pytest.mark.integration

SECRET = "api-process-test-secret"
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def get(url: str, token: str | None = None) -> tuple[int, dict[str, object]] | None:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def api_pid(worker: WorkerProcess) -> int | None:
    assert worker.proc is not None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == worker.proc.pid:
            return int(stat.parent.name)
    return None


def wait_for(
    what: str, check: Callable[[], bool], worker: WorkerProcess, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        assert worker.running(), worker.log_tail()
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{worker.log_tail()}")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def widened_templates(root: Path) -> Path:
    """The sample templates, active now (the API renders at the server's clock)."""
    docs = orjson.loads((SAMPLES / "templates.json").read_bytes())
    for doc in docs:
        doc["active_from"], doc["active_until"] = "2020-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
    path = root / "templates.json"
    path.write_bytes(orjson.dumps(docs))
    return path


def test_the_api_process_lives_beside_the_worker(kafka: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka, tmp_path, partitions=2)
    deployment.create_topics()
    deployment.publish_templates(widened_templates(tmp_path), SAMPLES / "pools.json")
    worker = deployment.worker("a", TASKSTREAM_API_SECRET=SECRET).start()
    token = sign_token("u-api-1", int(time.time()) + 600, SECRET.encode())
    try:
        ready = (200, {"ready": True})
        wait_for("the API's /ready", lambda: get(f"{worker.api_url}/ready") == ready, worker)
        first = api_pid(worker)
        assert first is not None
        assert worker.proc is not None
        assert (
            os.getpriority(os.PRIO_PROCESS, first)
            >= os.getpriority(os.PRIO_PROCESS, worker.proc.pid) + 10
        )

        # The worker's state, read by the other process: a claim it processed.
        now = time.time_ns() // 1000
        claim = {
            "type": "task_claim",
            "v": 1,
            "event_id": "c-api-1",
            "user_id": "u-api-1",
            "template_id": "clear_box_per_order",
            "at": format_utc(now - 1_000_000),
            "user_tags": ["lapsed"],
        }
        deployment.produce([orjson.dumps(claim)])

        def shows_the_task() -> bool:
            answer = get(f"{worker.api_url}/users/u-api-1/tasks?scene=home", token)
            if answer is None or answer[0] != 200:
                return False
            tasks = answer[1]["tasks"]
            assert isinstance(tasks, list)
            return [t["template_id"] for t in tasks] == ["clear_box_per_order"]

        wait_for("the claimed task in the API's answer", shows_the_task, worker)

        os.kill(first, signal.SIGKILL)
        wait_for(
            "a new API process",
            lambda: api_pid(worker) not in (None, first) and shows_the_task(),
            worker,
            timeout=60,
        )
        second = api_pid(worker)
        assert second is not None

        # A worker that cannot run (SIGSTOP; a debugger, a blocked loop) stops
        # touching the routing file: its API then serves none of its users.
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGSTOP)
        try:
            paused = time.monotonic()
            silent = None
            while time.monotonic() - paused < STALE_AFTER_SECONDS + 4:
                silent = get(f"{worker.api_url}/users/u-api-1/tasks?scene=home", token)
                if silent is not None and silent[0] == 503:
                    break
                time.sleep(0.2)
            assert silent is not None
            assert silent[0] == 503, silent
            assert "silent" in str(silent[1]["error"])
            ready = get(f"{worker.api_url}/ready")
            assert ready is not None
            assert ready[0] == 503
            assert "silent" in str(ready[1])
        finally:
            worker.proc.send_signal(signal.SIGCONT)
        wait_for("the API serving again after SIGCONT", shows_the_task, worker, timeout=60)

        worker.kill()
        deadline = time.monotonic() + 10
        while alive(second) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(second), "the API process outlived its worker"
        assert get(f"{worker.api_url}/health") is None  # nothing holds the port
    finally:
        worker.stop()
