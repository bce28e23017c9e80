"""The render API process's view of its worker: the routing file, the tables, the sidecar.

Real files and real RocksDB (rocksdict): a primary written like the
worker's faust store (raw keys and values), read as a secondary instance.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import orjson
import pytest
from rocksdict import Options, Rdict

from streams.api.routing import ApiSidecar, RoutingWriter, not_ready, routing_path
from streams.api.tables import Routing, RoutingView, SecondaryTables
from taskstream.cpu import autogroup_nice


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def primary(path: Path) -> Rdict:
    return Rdict(str(path), Options(raw_mode=True))


def routing_with(active: dict[int, Path], generation: int = 1) -> Routing:
    return Routing(
        worker="http://w1",
        generation=generation,
        ready=True,
        owners={p: "http://w1" for p in active},
        active=active,
    )


def test_the_writer_writes_only_changes_and_readers_see_whole_snapshots(tmp_path: Path) -> None:
    path = routing_path(tmp_path)
    writer = RoutingWriter(path)
    first = {**not_ready("http://w1"), "generation": 3, "ready": True, "owners": {"0": "http://w1"}}
    assert writer.update(first)
    assert not writer.update(dict(first))  # same content: no write
    assert not (tmp_path / "api-routing.json.tmp").exists()
    clock = Clock()
    view = RoutingView(path, recheck=0.1, clock=clock)
    seen = view.current()
    assert (seen.worker, seen.generation, seen.ready, seen.owners) == (
        "http://w1",
        3,
        True,
        {0: "http://w1"},
    )

    assert writer.update({**first, "generation": 4, "active": {"0": "/x/state-0.db"}})
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a coarse mtime clock
    assert view.current().generation == 3  # re-read at most every 0.1 s
    clock.now += 0.2
    assert view.current().generation == 4
    assert view.current().active == {0: Path("/x/state-0.db")}


def test_an_unchanged_snapshot_is_touched_every_heartbeat(tmp_path: Path) -> None:
    path = routing_path(tmp_path)
    clock = Clock()
    writer = RoutingWriter(path, heartbeat=1.0, clock=clock)
    snapshot = {**not_ready("http://w1"), "ready": True}
    assert writer.update(snapshot)
    os.utime(path, (1, 1))  # long ago
    clock.now += 0.5
    assert not writer.update(dict(snapshot))
    assert path.stat().st_mtime == 1  # within the heartbeat: left alone
    clock.now += 0.6
    assert not writer.update(dict(snapshot))  # same content, but touched
    assert time.time() - path.stat().st_mtime < 5
    path.unlink()  # a wiped data dir: written again at the next heartbeat
    clock.now += 1.0
    writer.update(dict(snapshot))
    assert orjson.loads(path.read_bytes())["ready"] is True


def test_a_file_older_than_the_staleness_limit_is_a_silent_worker(tmp_path: Path) -> None:
    path = routing_path(tmp_path)
    active = {"0": str(tmp_path / "state-0.db")}
    RoutingWriter(path).update(
        {**not_ready("http://w1"), "ready": True, "generation": 2, "active": active}
    )
    wall = Clock()
    wall.now = path.stat().st_mtime_ns / 1e9
    view = RoutingView(path, recheck=0.0, clock=Clock(), wall=wall, stale_after=4.0)
    assert view.current().ready
    assert view.current().active
    wall.now += 3.9
    assert view.current().ready
    assert not view.current().silent_for
    wall.now += 0.2  # 4.1 s without a write or a touch: stopped or blocked
    silent = view.current()
    assert not silent.ready
    assert silent.active == {}
    assert silent.silent_for == pytest.approx(4.1)
    assert (silent.worker, silent.generation) == ("http://w1", 2)  # still routes to others
    os.utime(path, ns=(int(wall.now * 1e9), int(wall.now * 1e9)))  # the worker's heartbeat
    heard = view.current()
    assert heard.ready
    assert heard.active
    assert not heard.silent_for


def test_a_missing_file_means_not_ready_and_garbage_keeps_the_last_good(tmp_path: Path) -> None:
    path = routing_path(tmp_path)
    clock = Clock()
    view = RoutingView(path, recheck=0.0, clock=clock)
    assert view.current() == Routing()
    RoutingWriter(path).update({**not_ready("http://w1"), "ready": True, "generation": 2})
    assert view.current().ready
    path.write_bytes(b"[1, 2")  # not something the worker writes
    assert view.current().ready
    assert view.current().generation == 2


def test_secondary_reads_see_the_workers_writes_within_the_staleness_bound(
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "tables" / "state-0.db"
    db_path.parent.mkdir()
    worker_db = primary(db_path)
    worker_db[b"u:alice"] = b"v1"
    clock = Clock()
    tables = SecondaryTables(tmp_path / "scratch", max_staleness=0.1, clock=clock)
    routing = routing_with({0: db_path})
    try:
        assert tables.get(routing, 0, b"u:alice") == b"v1"
        worker_db[b"u:alice"] = b"v2"
        assert tables.get(routing, 0, b"u:alice") == b"v1"  # caught up < 0.1 s ago
        assert tables.get(routing, 0, b"u:alice", fresh=True) == b"v2"  # a claim's poll
        worker_db[b"u:bob"] = b"b1"
        clock.now += 0.15
        assert tables.get(routing, 0, b"u:bob") == b"b1"
        assert tables.get(routing, 0, b"u:nobody") is None
        with pytest.raises(KeyError):
            tables.get(routing, 1, b"u:alice")  # not active on this worker
    finally:
        tables.close()
        worker_db.close()


def test_a_new_generation_reopens_so_a_rebuilt_database_is_read_afresh(tmp_path: Path) -> None:
    db_path = tmp_path / "state-0.db"
    worker_db = primary(db_path)
    worker_db[b"k"] = b"old"
    tables = SecondaryTables(tmp_path / "scratch", clock=Clock())
    try:
        assert tables.get(routing_with({0: db_path}, generation=1), 0, b"k") == b"old"
        worker_db.close()
        Rdict.destroy(str(db_path))  # recovery rebuilt the partition from the changelog
        worker_db = primary(db_path)
        worker_db[b"k"] = b"new"
        assert tables.get(routing_with({0: db_path}, generation=2), 0, b"k") == b"new"
    finally:
        tables.close()
        worker_db.close()


class ScriptedSidecar(ApiSidecar):
    """Runs a script that appends a line to a file, then exits with 3."""

    FIRST_BACKOFF = 0.05
    MAX_BACKOFF = 0.1

    def __init__(self, marker: Path) -> None:
        super().__init__(dict(os.environ))
        self.marker = marker

    def _command(self) -> list[str]:
        script = f"open({str(self.marker)!r}, 'a').write('run\\n'); raise SystemExit(3)"
        return [sys.executable, "-c", script]


def test_the_sidecar_restarts_a_process_that_dies_and_stops_with_the_worker(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "runs"
    sidecar = ScriptedSidecar(marker)
    sidecar.start()
    deadline = time.monotonic() + 20

    def runs() -> int:
        return marker.read_text().count("run") if marker.exists() else 0

    while runs() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    sidecar.stop()
    done = runs()
    assert done >= 3, done
    time.sleep(0.3)
    assert runs() in (done, done + 1)  # nothing started after stop


def test_not_ready_lists_nothing_to_read(tmp_path: Path) -> None:
    path = routing_path(tmp_path)
    RoutingWriter(path).update(not_ready("http://w1"))
    doc = orjson.loads(path.read_bytes())
    assert doc["ready"] is False
    assert doc["active"] == doc["owners"] == {}


REPORT = (
    "import os; from taskstream.cpu import autogroup_nice, lower_cpu_priority; "
    "lower_cpu_priority(5); "
    "print(os.getpriority(os.PRIO_PROCESS, 0)); "
    "print(autogroup_nice())"
)


def _niceness_after(new_session: bool) -> tuple[int, int | None]:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", REPORT],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=new_session,
    ).stdout.split()
    return int(out[0]), None if out[1] == "None" else int(out[1])


def test_lowering_priority_nices_the_process_and_its_own_session_only() -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    own_group = autogroup_nice()
    nice, group = _niceness_after(new_session=True)
    assert nice == min(19, mine + 5)
    if group is not None:  # autogroup scheduling: the session's nice counts first
        assert group == 5
    nice, group = _niceness_after(new_session=False)
    assert nice == min(19, mine + 5)
    assert group == own_group  # a shell's session is left alone


def test_autogroup_nice_reads_the_kernels_line_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taskstream.cpu as cpu

    fake = tmp_path / "autogroup"
    monkeypatch.setattr(cpu, "AUTOGROUP", fake)
    assert cpu.autogroup_nice() is None  # no such file: kernel without autogroups
    fake.write_text("")  # a task in a cgroup of its own (CI runners, containers)
    assert cpu.autogroup_nice() is None
    fake.write_text("/autogroup-4 nice 7\n")
    assert cpu.autogroup_nice() == 7
