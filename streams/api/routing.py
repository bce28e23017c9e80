"""The worker's side of the render API: what its API process needs, and the process.

The render API runs in its own process beside each worker (`taskstream api`,
streams/api/server.py), never on the worker's event loop: a request spike
then costs the worker no loop time at all, and the API process runs at a
lower CPU priority (TASKSTREAM_API_NICE) so the kernel gives the worker the
CPU first (docs/api.md "Load shedding").

The API process reads users straight from the worker's RocksDB files (as a
RocksDB secondary instance, read-only). What it cannot see in the files is
written here: the routing file `<data dir>/api-routing.json`, replaced
atomically by a 0.25 s timer whenever it changes, and touched at least
every HEARTBEAT_SECONDS otherwise: a file older than STALE_AFTER_SECONDS
means the worker is stopped (SIGSTOP, a debugger), blocked or gone, and
the API process then serves none of its partitions (they may have moved
to another worker already) until it hears from it again:

    {"worker": "http://host:api_port",   this worker's advertised API URL
     "pid": 1234,                         the worker's process id
     "generation": 7,                     the group generation the rest is of
     "ready": true,                       joined, recovered, not rebalancing
     "owners": {"0": "http://...", ...},  partition -> owner's API URL
     "active": {"0": "/data/.../state-0.db", ...},  this worker's partitions
     "allocator": {"3": "/data/.../allocator-3.db", ...}}  ... of the allocator table

`ApiSidecar` starts the API process with the worker's environment, restarts
it if it dies (backoff 1 s doubling to 30 s), and stops it with the worker;
the child also gets SIGKILL from the kernel if the worker dies first.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("taskstream.api")

ROUTING_FILE = "api-routing.json"
# The worker touches the file this often even when nothing changed...
HEARTBEAT_SECONDS = 1.0
# ...so a file older than this is a worker that cannot run its timers. Below
# the broker's smallest session timeout (6 s), so a paused worker's API stops
# serving before its partitions can move elsewhere.
STALE_AFTER_SECONDS = 4.0


def routing_path(data_dir: Path) -> Path:
    return data_dir / ROUTING_FILE


def not_ready(worker_url: str) -> dict[str, Any]:
    """What the file says before the worker has joined (or after it stopped)."""
    return {
        "worker": worker_url,
        "pid": os.getpid(),
        "generation": 0,
        "ready": False,
        "owners": {},
        "active": {},
        "allocator": {},
    }


def write_routing(path: Path, snapshot: Mapping[str, Any]) -> None:
    """Replace the file atomically (readers see the old or the new, never half)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)


class RoutingWriter:
    """Writes a snapshot when it differs from the last one written; otherwise
    touches the file once `heartbeat` seconds have passed (the API process
    reads the file's age as the worker's liveness)."""

    def __init__(
        self,
        path: Path,
        heartbeat: float = HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._heartbeat = heartbeat
        self._clock = clock
        self._last: Mapping[str, Any] | None = None
        self._written_at = 0.0

    def update(self, snapshot: Mapping[str, Any]) -> bool:
        """True when the content changed (and was written)."""
        now = self._clock()
        if snapshot == self._last:
            if now - self._written_at >= self._heartbeat:
                try:
                    os.utime(self.path)
                except FileNotFoundError:  # deleted under us (a wiped data dir)
                    write_routing(self.path, snapshot)
                self._written_at = now
            return False
        write_routing(self.path, snapshot)
        self._last = dict(snapshot)
        self._written_at = now
        return True


# ------------------------------------------------------------ the process


def _die_with_parent() -> None:
    """In the child: SIGKILL when the worker dies (Linux), even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ApiSidecar:
    """Runs `taskstream api` beside this worker until `stop`."""

    FIRST_BACKOFF = 1.0
    MAX_BACKOFF = 30.0

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="api-sidecar", daemon=True)
        self.starts = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(timeout)

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "taskstream", "api"]

    def _run(self) -> None:
        backoff = self.FIRST_BACKOFF
        while not self._stop.is_set():
            self.starts += 1
            self._proc = subprocess.Popen(
                self._command(),
                env=self._env,
                stdin=subprocess.DEVNULL,
                # Its own session: Ctrl-C in the worker's terminal stops the
                # worker, which then stops this; a child stopped first would
                # be restarted while the worker shuts down.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            log.info("render API process started (pid %d)", self._proc.pid)
            began = time.monotonic()
            code = self._proc.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - began > self.MAX_BACKOFF:
                backoff = self.FIRST_BACKOFF  # it ran fine for a while: a fresh failure
            log.error("render API process exited with %d; restarting in %.0f s", code, backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(self.MAX_BACKOFF, backoff * 2)
