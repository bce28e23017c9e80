"""The fault suite: a long run on a real broker while faults hit it at random moments.

    python -m chaos [--events 200000] [--workers 3] [--faults kill,stop,broker,wipe,kill] [--seed N]

A generated log (bench.loggen.mixed_log: duplicates, refunds before their
order, malformed lines, ticks) is produced to a deployment on a broker this
suite starts, as live traffic at `rate` lines/s while the workers run (or,
without a rate, before they start: a backlog); `taskstream replay` gives
the expected answer. Live traffic is what found the event-time merge's
late-producer gap (fixed by TASKSTREAM_MAX_IDLE_MS, docs/streams.md).
Workers (real `taskstream worker` processes, RocksDB, each with its render
API process) process it while faults are injected as the outputs pass
random fractions of the expected total:

- kill:   SIGKILL a random worker (no shutdown hooks), restart it;
- stop:   SIGSTOP a random worker past the session timeout, then SIGCONT
          (its partitions move away and back; it must notice and recover);
- broker: restart the broker (SIGTERM, then up again on the same data);
- wipe:   SIGKILL a random worker, delete its RocksDB folder, restart it.

On a cluster (`--brokers 3`: three KRaft nodes, topics with 3 replicas and
min.insync.replicas 2), the cluster faults, each while traffic flows:

- leader:    SIGKILL the node leading the most input and changelog
             partitions, start it again NODE_DOWN_SECONDS later;
- rolling:   restart every node one by one (SIGTERM, wait, start), the
             next only once no partition is under-replicated;
- node-stop: SIGSTOP a node past the brokers' session timeout, then SIGCONT;
- node-wipe: SIGKILL a node, delete its data folder, start it: it is
             formatted into the cluster again and re-replicates.

and at the end no partition may be under-replicated.

A worker that exits on its own is restarted too (counted as a crash). At
the end: the de-duplicated outputs equal replay's, no id carries two
contents, every malformed line is a dead letter, the group's lag is zero
on every input and budget partition, every pool balances (`pools status`),
`taskstream audit` agrees, no worker exited on its own, every faulted
worker is back (ready in a new group generation, its render API ready)
and random workers' render APIs answer users from their owners. Prints a
summary table; exit 0 only when all of that holds.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.loggen import Line, LogShape, ample_sample_pools, mixed_log
from streams.api.routing import routing_path
from streams.config import BUDGET_TOPICS, INPUT_TOPICS
from streams.kafka.partitioner import partition_for
from taskstream import broker, cluster
from taskstream.cluster import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.workers import TASKSTREAM, Deployment, TopicReader, WorkerProcess

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
OUTPUTS = ("task-events", "rewards")
WORKER_FAULTS = ("kill", "stop", "wipe")
CLUSTER_FAULTS = ("leader", "rolling", "node-stop", "node-wipe")
FAULTS = (*WORKER_FAULTS, "broker", *CLUSTER_FAULTS)
NODE_DOWN_SECONDS = 10.0  # a killed leader stays down this long
CLUSTER_MAX_IDLE_MS = "3000"  # docs/DEPLOY.md: the idle wait on a replicated cluster
# broker.session.timeout.ms is 9 s: a node stopped longer is fenced.
NODE_STOP_SECONDS = 15.0
PRODUCE_CHUNK = 500  # lines per producer flush
API_SECRET = "chaos-api-secret"
SERVICE_KEY = "chaos-service-key"


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@dataclass
class Fault:
    kind: str
    at_fraction: float  # of the expected outputs seen when it was injected
    target: str = ""
    injected_at: float = 0.0  # monotonic
    # How long the fault itself lasted: the broker's stop and start, the
    # pause; 0 for a kill (the restart is immediate).
    lasted: float = 0.0
    recovered_after: float | None = None  # seconds until outputs grew again
    # Seconds until the faulted worker (every worker, for the broker) was
    # back: ready in a group generation after the fault, and its render API
    # answering /ready. Not just "the others went on".
    rejoined_after: float | None = None
    generation_before: int = 0  # the target's group generation when it was hit


@dataclass
class Report:
    events: int = 0
    messages: int = 0
    expected_outputs: int = 0
    found_outputs: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    two_contents: int = 0
    duplicate_copies: int = 0
    duplicated_effects: int = 0  # a reward id granted by two distinct events
    dead_expected: int = 0
    dead_found: int = 0
    # Inputs the workers applied after a later event (recorded for the audit).
    # With this suite's in-order producer they are other users' events
    # appended a moment later: outputs still equal the file's replay.
    applied_late: int = 0
    lag_behind: dict[str, Any] = field(default_factory=dict)
    pools_balanced: bool = False
    audit_exit: int | None = None
    worker_crashes: int = 0
    api_asked: int = 0  # users asked of a random worker's render API at the end
    api_answered: int = 0  # ... answered 200 by the worker owning the user
    under_replicated: int | None = None  # partitions, at the end (None: one broker)
    seconds: float = 0.0
    faults: list[Fault] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.missing == self.extra == self.different == self.two_contents == 0
            and self.duplicated_effects == 0
            and self.dead_found == self.dead_expected
            and not self.lag_behind
            and self.pools_balanced
            and self.audit_exit == 0
            and self.worker_crashes == 0
            and self.api_answered == self.api_asked > 0
            and not self.under_replicated
            and all(f.recovered_after is not None for f in self.faults)
            and all(f.rejoined_after is not None for f in self.faults)
        )

    def table(self) -> str:
        rows = [
            ("events (input lines)", f"{self.events:,}"),
            ("Kafka messages produced", f"{self.messages:,}"),
            ("faults injected", ", ".join(f"{k} {n}" for k, n in self.fault_counts().items())),
            ("worker crashes (restarted)", str(self.worker_crashes)),
            ("outputs expected (replay)", f"{self.expected_outputs:,}"),
            ("outputs found (distinct ids)", f"{self.found_outputs:,}"),
            ("lost (missing)", str(self.missing)),
            ("extra / different from replay", f"{self.extra} / {self.different}"),
            ("ids with two contents", str(self.two_contents)),
            ("duplicated effects (a reward paid twice)", str(self.duplicated_effects)),
            ("duplicate copies (same id, same bytes)", f"{self.duplicate_copies:,}"),
            ("dead letters expected / found", f"{self.dead_expected} / {self.dead_found}"),
            ("inputs applied late (late-inputs topic)", str(self.applied_late)),
            ("consumer lag at the end", "0" if not self.lag_behind else str(self.lag_behind)),
            ("pools balanced (pools status)", str(self.pools_balanced)),
            (
                "under-replicated partitions at the end",
                "-" if self.under_replicated is None else str(self.under_replicated),
            ),
            ("taskstream audit exit", str(self.audit_exit)),
            (
                "render API: answered by the owner / asked",
                f"{self.api_answered} / {self.api_asked}",
            ),
            ("wall time", f"{self.seconds:.0f} s"),
        ]
        lines = ["| measure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        lines += [
            "",
            "| fault | at outputs | target | fault lasted | outputs grew again after "
            "| target back after |",
            "|---|---|---|---|---|---|",
        ]
        for f in self.faults:
            grew = "NOT RECOVERED" if f.recovered_after is None else f"{f.recovered_after:.1f} s"
            back = "NOT BACK" if f.rejoined_after is None else f"{f.rejoined_after:.1f} s"
            lines.append(
                f"| {f.kind} | {f.at_fraction:.0%} | {f.target} | {f.lasted:.1f} s "
                f"| {grew} | {back} |"
            )
        lines += [
            "",
            "Times from the fault's start. Outputs grew again: the first new "
            "output this suite's reader saw (its reconnects after a broker "
            "restart add seconds). Target back: ready in a group generation "
            "after the fault, render API ready (every worker, for the broker).",
        ]
        verdict = "PASS" if self.ok else "FAIL"
        return "\n".join(lines) + f"\n\nchaos {verdict}"

    def fault_counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.faults))


def say(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


class Chaos:
    def __init__(
        self,
        bootstrap: str,
        spec: broker.BrokerSpec | None,
        nodes: Cluster | None,
        root: Path,
        shape: LogShape,
        workers: int,
        faults: list[str],
        seed: int,
        batch_max: int,
        rate: float | None,
    ) -> None:
        self.spec = spec
        self.nodes = nodes
        self.node_faults: dict[int, threading.Thread] = {}  # id(fault) -> its thread
        self.rate = rate
        self.produce_error: BaseException | None = None
        self.batch_max = batch_max
        self.root = root
        self.rng = random.Random(seed)
        self.report = Report()
        self.partitions = 8
        self.deployment = Deployment(bootstrap, root, partitions=self.partitions)
        self.lines = mixed_log(shape)
        self.expected, self.dead_expected = self._replay()
        self.fault_plan = self._plan(faults)
        self.labels = [chr(ord("a") + n) for n in range(workers)]
        self.workers: dict[str, WorkerProcess] = {}
        self.to_resume: list[tuple[float, WorkerProcess]] = []  # (when, stopped worker)
        self.readers = {
            t: TopicReader(bootstrap, self.deployment.settings.topic(t), quiet=True)
            for t in (*OUTPUTS, "dead-letters", "late-inputs")
        }

    # ---------------------------------------------------------------- setup

    def _replay(self) -> tuple[dict[str, bytes], int]:
        log = self.root / "events.jsonl"
        log.write_bytes(b"".join(line.value + b"\n" for line in self.lines))
        pools = self.root / "pools.json"
        pools.write_bytes(orjson.dumps(ample_sample_pools()))
        out = self.root / "replay.jsonl"
        subprocess.run(
            [
                *(TASKSTREAM, "replay", "--templates", str(SAMPLES / "templates.json")),
                *("--pools", str(pools), "--events", str(log), "--out", str(out)),
                "--no-progress",
            ],
            check=True,
            capture_output=True,
        )
        expected: dict[str, bytes] = {}
        for raw in out.read_bytes().splitlines():
            doc = orjson.loads(raw)
            if doc["type"] != "dead_letter":
                expected[doc["event_id"]] = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        # One dead letter per malformed message sent (not replay's count: a
        # line of random bytes may hold newlines, which split it in the file).
        return expected, sum(1 for line in self.lines if line.malformed)

    def _plan(self, faults: list[str]) -> list[Fault]:
        """Each fault at a random fraction of the outputs, spread over the run."""
        slots = len(faults)
        plan = []
        for n, kind in enumerate(self.rng.sample(faults, len(faults))):
            low, high = 0.05 + 0.85 * n / slots, 0.05 + 0.85 * (n + 1) / slots
            plan.append(Fault(kind, round(self.rng.uniform(low, high - 0.03), 3)))
        return plan

    # ------------------------------------------------------------------ run

    def run(self, timeout: float) -> Report:
        began = time.monotonic()
        report = self.report
        report.events = len(self.lines)
        report.expected_outputs = len(self.expected)
        report.dead_expected = self.dead_expected
        report.faults = self.fault_plan
        deployment = self.deployment
        deployment.create_topics()
        deployment.publish_templates(SAMPLES / "templates.json", self.root / "pools.json")
        producing = threading.Thread(target=self._produce, name="chaos-producer", daemon=True)
        if self.rate is None:  # a backlog, worked off while the faults hit
            producing.run()
        for label in self.labels:
            self._start(label)
        deployment.open_pools("cash", "small_budget", "grand_prizes")
        if self.rate is not None:  # live traffic while the faults hit
            producing.start()
        pending = list(self.fault_plan)
        deadline = began + timeout
        last_seen, waiting_recovery = 0, []  # faults whose recovery is not seen yet
        while time.monotonic() < deadline:
            seen = self._seen()
            # Recovered: outputs grow again, or (late in the run) everything
            # is out and the group has consumed every input again.
            if waiting_recovery and (
                seen > last_seen or (self._complete() and not self._lag_behind(wait=0))
            ):
                for fault in waiting_recovery:
                    fault.recovered_after = time.monotonic() - fault.injected_at
                waiting_recovery = []
            self._note_rejoined()
            last_seen = max(last_seen, seen)
            self._resume_due()
            self._restart_exited()
            if pending and seen >= pending[0].at_fraction * len(self.expected):
                fault = pending.pop(0)
                self._inject(fault)
                waiting_recovery.append(fault)
                last_seen = self._seen()
            if (
                not pending
                and not waiting_recovery
                and not self.to_resume
                and all(f.rejoined_after is not None for f in self.fault_plan)
                and self._complete()
            ):
                break
            time.sleep(0.3)
        if producing.ident is not None:
            producing.join(timeout=max(1.0, deadline - time.monotonic()))
        if self.produce_error is not None:
            raise RuntimeError("producing the log failed") from self.produce_error
        say(f"produced {report.messages:,} messages ({report.events:,} lines)")
        self._finish(began)
        return report

    def _produce(self) -> None:
        """The whole log at once, or at `rate` lines/s in chunks (each
        flushed before the next: a topic's order is the file's)."""
        if self.rate is None:
            self.report.messages = self.deployment.produce(self.lines)
            return
        began, done = time.monotonic(), 0
        try:
            for start in range(0, len(self.lines), PRODUCE_CHUNK):
                chunk = self.lines[start : start + PRODUCE_CHUNK]
                # As an upstream keeping each user's events in order
                # (DESIGN's precondition; DEPLOY.md "Producing in order"):
                # events in flight together can be appended in either order
                # (a broker restart retries them; on a cluster, partitions'
                # leaders make them readable at different moments).
                self.report.messages += self.deployment.produce(chunk)
                done += len(chunk)
                ahead = began + done / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as exc:  # re-raised by run()
            self.produce_error = exc

    def _seen(self) -> int:
        for reader in self.readers.values():
            reader.poll(0.2)
        return len({m["event_id"] for t in OUTPUTS for m in self.readers[t].messages})

    def _note_rejoined(self) -> None:
        """Faults whose target is back: ready in a generation after the fault
        (a restarted or resumed worker always causes a new one) with its
        render API ready; for the broker, every worker ready again."""
        for fault in self.fault_plan:
            if not fault.injected_at or fault.rejoined_after is not None:
                continue
            if fault.kind == "broker" or fault.kind in CLUSTER_FAULTS:
                thread = self.node_faults.get(id(fault))
                back = (
                    (thread is None or not thread.is_alive())
                    and fault.recovered_after is not None
                    and all(self._worker_back(w, 0) for w in self.workers.values())
                )
            else:
                worker = self.workers[fault.target.removeprefix("worker ")]
                stopped = any(item[1] is worker for item in self.to_resume)
                back = not stopped and self._worker_back(worker, fault.generation_before)
            if back:
                fault.rejoined_after = time.monotonic() - fault.injected_at

    @staticmethod
    def _routing(worker: WorkerProcess) -> dict[str, Any]:
        """What the worker last wrote for its render API (streams.api.routing)."""
        try:
            doc = orjson.loads(routing_path(worker.data_dir).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _worker_back(self, worker: WorkerProcess, after_generation: int) -> bool:
        routing = self._routing(worker)
        if not (routing.get("ready") and int(routing.get("generation", 0)) > after_generation):
            return False
        return _http_status(f"{worker.api_url}/ready") == 200

    def _complete(self) -> bool:
        got = {m["event_id"] for t in OUTPUTS for m in self.readers[t].messages}
        dead = {m["event_id"] for m in self.readers["dead-letters"].messages}
        return got >= set(self.expected) and len(dead) >= self.dead_expected

    # --------------------------------------------------------------- faults

    def _start(self, label: str, *, wipe: bool = False) -> None:
        # On a cluster, the idle wait DEPLOY.md asks for (unless set): leader
        # changes delay one topic's writes by over a second.
        idle = {"TASKSTREAM_MAX_IDLE_MS": CLUSTER_MAX_IDLE_MS}
        if self.nodes is None or "TASKSTREAM_MAX_IDLE_MS" in os.environ:
            idle = {}
        worker = self.workers.get(label) or self.deployment.worker(
            label,
            **idle,
            TASKSTREAM_BATCH_MAX=str(self.batch_max),
            # Each worker runs its render API process, as in production.
            TASKSTREAM_API_SECRET=API_SECRET,
            TASKSTREAM_SERVICE_KEY=SERVICE_KEY,
        )
        if wipe:
            worker.wipe_state()
        self.workers[label] = worker.start()

    def _resume_due(self) -> None:
        now = time.monotonic()
        for item in [item for item in self.to_resume if item[0] <= now]:
            self.to_resume.remove(item)
            if item[1].proc is not None:
                item[1].proc.send_signal(signal.SIGCONT)

    def _restart_exited(self) -> None:
        for label, worker in self.workers.items():
            if not worker.running():
                self.report.worker_crashes += 1
                say(f"worker {label} exited on its own; restarting\n{worker.log_tail(15)}")
                self._start(label)

    def _inject(self, fault: Fault) -> None:
        fault.injected_at = time.monotonic()
        fault.at_fraction = self._seen() / len(self.expected)
        label = self.rng.choice(self.labels)
        worker = self.workers[label]
        fault.generation_before = int(self._routing(worker).get("generation", 0))
        if fault.kind in ("kill", "wipe"):
            fault.target = f"worker {label}"
            self.to_resume = [item for item in self.to_resume if item[1] is not worker]
            worker.kill()
            self._start(label, wipe=fault.kind == "wipe")
        elif fault.kind == "stop":
            if any(item[1] is worker for item in self.to_resume):
                label = (
                    next(x for x in self.labels if x != label) if len(self.labels) > 1 else label
                )
                worker = self.workers[label]
                fault.generation_before = int(self._routing(worker).get("generation", 0))
            fault.target = f"worker {label}"
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGSTOP)
            # Resumed past the session timeout, while the run goes on.
            paused = int(self.deployment.env["TASKSTREAM_SESSION_TIMEOUT"]) + 4
            fault.lasted = paused
            self.to_resume.append((time.monotonic() + paused, worker))
        elif fault.kind in CLUSTER_FAULTS:
            if self.nodes is None:
                raise SystemExit(f"the {fault.kind} fault needs a cluster (--brokers 3)")
            # One node fault at a time: two nodes down at once is a lost
            # quorum, a different fault (the cluster test covers it).
            earlier = list(self.node_faults.values())
            thread = threading.Thread(
                target=self._node_fault,
                args=(fault, earlier),
                name=f"chaos-{fault.kind}",
                daemon=True,
            )
            self.node_faults[id(fault)] = thread
            fault.target = "every node" if fault.kind == "rolling" else "a node"
            thread.start()
        elif fault.kind == "broker":
            fault.target = "the broker"
            if self.spec is None:
                raise SystemExit("a broker restart needs the broker this suite started")
            broker.down(self.spec)
            broker.up(self.spec, die_with_parent=True)
            fault.lasted = time.monotonic() - fault.injected_at
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")
        say(f"{fault.kind} ({fault.target}) at {fault.at_fraction:.0%} of the outputs")

    # --------------------------------------------------------- cluster faults

    def _node_fault(self, fault: Fault, earlier: list[threading.Thread]) -> None:
        """One cluster fault, in its own thread (the run goes on meanwhile),
        after the earlier ones are over. The nodes it starts do not die with
        their parent: Linux sends that signal when the parent *thread* ends,
        which would kill them as this one returns (run_suite stops them)."""
        assert self.nodes is not None
        nodes = self.nodes
        for thread in earlier:
            thread.join()
        began = time.monotonic()
        try:
            if fault.kind == "rolling":
                for node in nodes.nodes:
                    broker.down(node)
                    cluster.start_node(nodes, node.node_id)
                    self._wait_replicated(120)
                fault.target = "nodes " + ", ".join(str(n.node_id) for n in nodes.nodes)
            else:
                node_id = (
                    self._busiest_node()
                    if fault.kind == "leader"
                    else self.rng.choice([n.node_id for n in nodes.nodes])
                )
                fault.target = f"node {node_id}"
                pids = broker.our_broker_pids(nodes.node(node_id))
                if fault.kind == "node-stop":
                    for pid in pids:
                        os.kill(pid, signal.SIGSTOP)
                    time.sleep(NODE_STOP_SECONDS)
                    for pid in pids:
                        os.kill(pid, signal.SIGCONT)
                else:  # leader, node-wipe: SIGKILL, then start again
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    broker.down(nodes.node(node_id))  # reaps it, drops the pid file
                    if fault.kind == "node-wipe":
                        shutil.rmtree(nodes.node(node_id).data_dir, ignore_errors=True)
                    time.sleep(NODE_DOWN_SECONDS)
                    cluster.start_node(nodes, node_id)
        except BaseException as exc:  # the run reports it as not back
            say(f"{fault.kind} failed: {exc!r}")
            return
        fault.lasted = time.monotonic() - began
        say(f"{fault.kind} ({fault.target}) done in {fault.lasted:.1f} s")

    def _busiest_node(self) -> int:
        """The node leading the most partitions of our inputs and changelogs."""
        settings = self.deployment.settings
        ours = {settings.topic(t) for t in INPUT_TOPICS} | {
            f"{settings.app_id}-{table}-changelog" for table in ("state", "allocator")
        }
        return cluster.busiest_leader(self.deployment.bootstrap, ours)

    def under_replicated(self) -> int:
        return cluster.under_replicated(self.deployment.bootstrap)

    def _wait_replicated(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                behind = self.under_replicated()
            except Exception:  # a node still starting: ask again
                behind = -1
            if behind == 0 or time.monotonic() >= deadline:
                return behind
            time.sleep(1.0)

    # --------------------------------------------------------------- verify

    def _finish(self, began: float) -> None:
        report = self.report
        for _when, stopped in self.to_resume:  # never leave a worker stopped
            if stopped.proc is not None:
                stopped.proc.send_signal(signal.SIGCONT)
        self.to_resume = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            self._complete() and all(f.rejoined_after is not None for f in self.fault_plan)
        ):
            self._restart_exited()
            self._seen()
            self._note_rejoined()
            time.sleep(0.3)
        time.sleep(2.0)  # a late re-send after a crash must agree as well
        self._seen()
        contents: dict[str, bytes] = {}
        copies = Counter[str]()
        for topic in OUTPUTS:
            for message in self.readers[topic].messages:
                body = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
                event_id = str(message["event_id"])
                copies[event_id] += 1
                if contents.setdefault(event_id, body) != body:
                    report.two_contents += 1
        report.found_outputs = len(contents)
        report.duplicate_copies = sum(n - 1 for n in copies.values())
        report.missing = len(set(self.expected) - set(contents))
        report.extra = len(set(contents) - set(self.expected))
        report.different = sum(
            1 for i, body in contents.items() if i in self.expected and body != self.expected[i]
        )
        self._show_differences(contents)
        granted = Counter(
            orjson.loads(body)["reward_id"]
            for body in contents.values()
            if orjson.loads(body)["type"] == "reward_granted"
        )
        revoked = Counter(
            orjson.loads(body)["reward_id"]
            for body in contents.values()
            if orjson.loads(body)["type"] == "reward_revoked"
        )
        report.duplicated_effects = sum(1 for r, n in granted.items() if n > 1) + sum(
            1 for r, n in revoked.items() if n > 1
        )
        report.dead_found = len({m["event_id"] for m in self.readers["dead-letters"].messages})
        report.applied_late = len({m["event_id"] for m in self.readers["late-inputs"].messages})
        report.lag_behind = self._lag_behind()
        report.pools_balanced = self._pools_balanced()
        if self.nodes is not None:
            report.under_replicated = self._wait_replicated(120)
        report.audit_exit = self._audit()
        report.api_asked, report.api_answered = self._ask_the_api(users=40)
        report.seconds = time.monotonic() - began

    def _show_differences(self, contents: dict[str, bytes]) -> None:
        """What differs from replay, in full, to differences.jsonl (kept with
        TASKSTREAM_CHAOS_KEEP) and the first few on stderr: a failed run says
        which outputs, not only how many."""
        rows = [
            {"kind": "missing", "expected": orjson.loads(self.expected[i])}
            for i in sorted(set(self.expected) - set(contents))
        ]
        rows += [
            {"kind": "extra", "found": orjson.loads(contents[i])}
            for i in sorted(set(contents) - set(self.expected))
        ]
        rows += [
            {
                "kind": "different",
                "expected": orjson.loads(self.expected[i]),
                "found": orjson.loads(b),
            }
            for i, b in sorted(contents.items())
            if i in self.expected and b != self.expected[i]
        ]
        if not rows:
            return
        (self.root / "differences.jsonl").write_bytes(
            b"".join(orjson.dumps(r) + b"\n" for r in rows)
        )
        for row in rows[:6]:
            say(f"differs from replay: {orjson.dumps(row).decode()[:600]}")

    def _lag_behind(self, wait: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        while True:
            behind: dict[str, Any] = {}
            for topic in (*INPUT_TOPICS, *BUDGET_TOPICS):
                lag = self.deployment.group_lag(topic)
                # Nothing committed (-1001) on an empty partition is not lag.
                late = {p: (c, e) for p, (c, e) in lag.items() if e > max(c, 0)}
                if late:
                    behind[topic] = late
            if not behind or time.monotonic() > deadline:
                return behind
            time.sleep(1.0)

    def _pools_balanced(self) -> bool:
        deadline = time.monotonic() + 60
        while True:
            code, sheets = self.deployment.pools_status()
            settled = all(
                s["balanced"] and s["grants_in_flight"] == s["returns_in_flight"] == 0
                for s in sheets.values()
            )
            if (code == 0 and settled and sheets) or time.monotonic() > deadline:
                return code == 0 and settled and bool(sheets)
            time.sleep(1.0)

    def _audit(self) -> int:
        done = subprocess.run(
            [TASKSTREAM, "audit", "--no-progress", "--json", str(self.root / "audit.json")],
            env={**os.environ, **self.deployment.env},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            say(f"audit exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
        return done.returncode

    def _ask_the_api(self, users: int) -> tuple[int, int]:
        """Ask random workers' render APIs for users' tasks (service key):
        (asked, answered 200 by the worker owning the user). After the
        faults, routing and the API processes must be whole again."""
        owners: dict[str, str] = {}
        for worker in self.workers.values():
            owners.update(self._routing(worker).get("owners", {}))
        user_ids = sorted({str(orjson.loads(line.value)["user_id"]) for line in self._sample()})
        chosen = self.rng.sample(user_ids, min(users, len(user_ids)))
        answered = 0
        for user_id in chosen:
            worker = self.workers[self.rng.choice(self.labels)]
            url = f"{worker.api_url}/users/{urllib.parse.quote(user_id)}/tasks?scene=home"
            request = urllib.request.Request(url, headers={"X-Service-Key": SERVICE_KEY})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    owner = owners.get(str(partition_for(user_id.encode(), self.partitions)))
                    if answer.status == 200 and answer.headers.get("X-Served-By") == owner:
                        answered += 1
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                say(f"render API for {user_id} via worker {worker.label}: {exc}")
        return len(chosen), answered

    def _sample(self) -> list[Line]:
        """Well-formed lines of users (claims and orders), for the API check."""
        out = []
        for line in self.lines:
            if line.malformed or line.raw_topic is not None:
                continue
            try:
                doc = orjson.loads(line.value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("user_id"), str):
                out.append(line)
        return out

    def close(self) -> None:
        for worker in self.workers.values():
            if worker.proc is not None and worker.running():
                worker.proc.send_signal(signal.SIGCONT)  # a stopped worker cannot stop
            worker.stop()
        for reader in self.readers.values():
            reader.close()


def run_suite(
    *,
    events: int,
    users: int,
    workers: int,
    faults: list[str],
    seed: int,
    timeout: float,
    batch_max: int = 50,
    rate: float | None = None,
    bootstrap: str | None = None,
    brokers: int = 1,
    nodes: Cluster | None = None,
) -> Report:
    """Start a broker, or a cluster of `brokers` nodes (unless `bootstrap` is
    given), run, verify, clean up."""
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {FAULTS}")
    if brokers > 1 and "broker" in faults:
        raise ValueError("on a cluster the broker faults are: " + ", ".join(CLUSTER_FAULTS))
    if brokers < 3 and nodes is None and any(f in CLUSTER_FAULTS for f in faults):
        raise ValueError(f"{', '.join(CLUSTER_FAULTS)} need --brokers 3")
    root = Path(tempfile.mkdtemp(prefix="taskstream-chaos-"))
    spec = None
    owned = None  # a cluster this run starts (and stops)
    if nodes is not None:  # the caller's cluster
        bootstrap = nodes.bootstrap
    elif bootstrap is None and brokers > 1:
        port = broker.free_ports(1, consecutive=2 * brokers)[0]
        nodes = owned = cluster.Cluster.create(port, brokers, home=root / "cluster")
        bootstrap = cluster.up(nodes, die_with_parent=True).bootstrap
        say(f"a cluster of {brokers} on {bootstrap}")
    elif bootstrap is None:
        spec = broker.BrokerSpec.create(port=broker.free_port(), home=root / "broker")
        bootstrap = broker.up(spec, die_with_parent=True).bootstrap
    shape = LogShape(
        events=events,
        users=users,
        task_user_every=4,
        task_order_share=0.5,
        claim_share=0.03,
        refund_share=0.06,
        tick_every=max(500, events // 200),
        seconds_per_event=110.0 * 20_000 / max(events, 1),
        seed=seed,
    )
    chaos = Chaos(bootstrap, spec, nodes, root, shape, workers, faults, seed, batch_max, rate)
    try:
        return chaos.run(timeout)
    finally:
        chaos.close()
        if spec is not None:
            broker.down(spec)
        for thread in chaos.node_faults.values():
            thread.join(timeout=180)  # a node fault still starting a node
        if owned is not None:
            cluster.down(owned)
        if os.environ.get("TASKSTREAM_CHAOS_KEEP"):  # worker logs, broker log, audit
            say(f"kept {root} (TASKSTREAM_CHAOS_KEEP)")
        else:
            shutil.rmtree(root, ignore_errors=True)
