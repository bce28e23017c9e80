"""The `taskstream` command: one entry point, a subcommand per job.

Entry points only translate arguments into calls; the work lives in
`taskstream.*` (Kafka tooling), `streams.*` (the worker) and `app.*` (the core).

Exit codes: 0 success, 1 the job failed (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import click

from streams.config import Settings

EXIT_FAILED = 1


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _connected_settings() -> Settings:
    """Settings whose brokers answer; otherwise exit 1 with what to do."""
    from taskstream.kafka_io import connection_problem

    settings = _settings()
    problem = connection_problem(settings, timeout=5.0)
    if problem is not None:
        _fail(problem)
    return settings


EXIT_UNBALANCED = 3
EXIT_MISSING_TOPICS = 3  # `topics list`: some of our topics do not exist


def _fail(message: str) -> NoReturn:
    click.echo(f"taskstream: {message}", err=True)
    sys.exit(EXIT_FAILED)


class LazyGroup(click.Group):
    """A group whose heavier subcommands are imported when first named
    (click's "lazily loading subcommands" pattern): the worker does not pay
    for the auditors' imports (tqdm, the log reader, the simulator) at
    every start. `lazy` maps a command's name to "module:attribute"."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    lazy={
        name: f"taskstream.{name}:{name}"
        for name in ("replay", "audit", "explain", "notify", "simulate")
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="taskstream")
def main() -> None:
    """taskstream: marketing tasks and hot budget pools on Kafka.

    Configuration comes from the environment: KAFKA_BOOTSTRAP (brokers),
    TASKSTREAM_TOPIC_PREFIX, TASKSTREAM_PARTITIONS, TASKSTREAM_DATA_DIR,
    TASKSTREAM_APP_ID, TASKSTREAM_WEB_PORT, TASKSTREAM_API_PORT; TLS and SASL with
    KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_* (docs/security.md).
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# ------------------------------------------------------------------- worker


@main.command()
@click.option(
    "--loglevel",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def worker(loglevel: str) -> None:
    """Run a stream worker in the foreground (Ctrl-C stops it cleanly).

    Start as many as you like with the same TASKSTREAM_APP_ID: partitions are
    shared among them and move on a crash; each needs its own
    TASKSTREAM_DATA_DIR and TASKSTREAM_WEB_PORT on one machine.
    """
    from taskstream.worker_logs import Worker

    _settings()  # bad settings (e.g. an unreadable secret file): exit 2 with why
    import streams.agents  # the worker, the allocator, their timers and the /metrics pages
    import streams.monitor.progress  # noqa: F401  (the periodic progress line)
    from streams.api import link as api_worker  # the routing file of the render API process
    from streams.api.routing import ApiSidecar
    from streams.app import app, catalog_feed, settings

    # Every topic and changelog exists before this worker joins the group
    # (see ensure_topics for why faust's own creation is not enough).
    created = _ensure_topics(settings)
    if created:
        click.echo(f"created {', '.join(created)}", err=True)
    # The templates are read while faust starts: no batch runs before the
    # catalog is read, and started with faust's tasks it was ready ~1 s after
    # the partitions were assigned.
    catalog_feed.start()
    api_worker.reset()  # no stale routing from a previous run reaches the API process
    click.echo(
        f"worker {settings.app_id}: brokers {settings.bootstrap} "
        f"({settings.kafka_security.describe()}), "
        f"{settings.partitions} partitions, tables in {settings.data_dir}",
        err=True,
    )
    from schemas.native import describe

    click.echo(describe(), err=True)  # the hot path's codec: compiled, or the Python reference
    from taskstream.collector import tune_collector

    click.echo(tune_collector(settings.gc_threshold), err=True)
    sidecar = None
    if settings.api_secret:
        sidecar = ApiSidecar(os.environ)
        sidecar.start()
    else:
        click.echo("render API off (no TASKSTREAM_API_SECRET)", err=True)
    if loglevel == "info":
        # faust's and mode's start-up chatter (every service "Starting...",
        # tables of offsets, "opening partition") ran to ~130 lines before
        # the first line of ours; at info an operator sees taskstream's own
        # lines (partitions loaded, progress, dead letters) and aiokafka's
        # group changes. `--loglevel debug` shows everything again.
        from taskstream.worker_logs import quiet_faust

        quiet_faust()
        click.echo(
            "faust's start-up details are at --loglevel debug; "
            "a progress line follows every TASKSTREAM_PROGRESS_SECONDS",
            err=True,
        )
    try:
        Worker(app, loglevel=loglevel).execute_from_commandline()
    finally:
        if sidecar is not None:
            sidecar.stop()


@main.command()
@click.option(
    "--loglevel",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def api(loglevel: str) -> None:
    """Serve the render API for the worker whose TASKSTREAM_DATA_DIR this is.

    `taskstream worker` starts this itself when TASKSTREAM_API_SECRET is set
    (and restarts it if it dies); run it by hand only to serve the worker's
    tables from a separate container sharing the data volume. It listens on
    TASKSTREAM_WEB_HOST:TASKSTREAM_API_PORT, reads the worker's state
    read-only, and lowers its own CPU priority by TASKSTREAM_API_NICE so the
    worker wins the CPU under a request spike (docs/api.md).
    """
    import asyncio
    import signal

    from streams.api.server import serve

    settings = _settings()
    logging.getLogger().setLevel(loglevel.upper())
    if settings.api_nice:
        from taskstream.cpu import lower_cpu_priority

        lower_cpu_priority(settings.api_nice)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(run())
    except OSError as exc:  # the port is taken, the broker does not answer...
        _fail(f"render API: {exc}")


# -------------------------------------------------------------------- kafka


@main.group()
def kafka() -> None:
    """Manage the local development broker (single-node KRaft, 127.0.0.1)."""


port_option = click.option(
    "--port", default=19092, show_default=True, envvar="KAFKA_PORT", help="Broker port."
)
version_option = click.option(
    "--kafka-version",
    "version",
    default=None,
    envvar="KAFKA_VERSION",
    help="Apache Kafka version to run (default: the project's pinned 4.x).",
)


@kafka.command("up")
@port_option
@version_option
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    envvar="BROKERS",
    help="Nodes (broker + controller each) on ports PORT, PORT+2, ...; 3 gives a "
    "replicated cluster (replication factor 3, min.insync.replicas 2).",
)
def kafka_up(port: int, version: str | None, brokers: int) -> None:
    """Start the broker (or a local cluster), or reuse what already answers."""
    from taskstream import broker, cluster

    if brokers > 1:
        nodes = cluster.Cluster.create(port, brokers, version)
        try:
            started = cluster.up(nodes)
        except broker.BrokerError as exc:
            _fail(str(exc))
            return
        how = f"started in {started.seconds:.1f}s" if started.started else "already up, reused"
        click.echo(
            f"Kafka cluster of {brokers} on {started.bootstrap} ({how}; logs in "
            f"{nodes.home}/node-*/broker.log)\n"
            f"    export KAFKA_BOOTSTRAP={started.bootstrap}"
        )
        return
    spec = broker.BrokerSpec.create(port=port, version=version)
    try:
        started = broker.up(spec)
    except broker.BrokerError as exc:
        _fail(str(exc))
        return
    if started.started:
        click.echo(
            f"Kafka {spec.version} started on {started.bootstrap} in {started.seconds:.1f}s "
            f"(pid {started.pid}, log {spec.log_file})"
        )
    else:
        click.echo(f"Kafka already up on {started.bootstrap}; reusing it")


@kafka.command("down")
@port_option
def kafka_down(port: int) -> None:
    """Stop the broker (or cluster) started for this port, and any stray process of it."""
    from taskstream import broker, cluster

    nodes = cluster.existing(port)
    if nodes is not None:
        stopped = cluster.down(nodes)
        click.echo(
            f"stopped cluster pid(s) {stopped}" if stopped else "no node of ours was running"
        )
        return
    spec = broker.BrokerSpec.create(port=port)
    stopped = broker.down(spec)
    click.echo(f"stopped broker pid(s) {stopped}" if stopped else "no broker of ours was running")


@kafka.command("status")
@port_option
def kafka_status(port: int) -> None:
    """Say whether the broker answers (a cluster: each node, and its controller
    quorum); exit 1 when it, or any node, does not."""
    from taskstream import broker, cluster

    nodes = cluster.existing(port)
    if nodes is not None:
        states, quorum = cluster.status(nodes)
        for state in states:
            pid = f"pid {state.pid}" if state.pid else "not running"
            click.echo(
                f"node {state.node_id} on {state.bootstrap}: "
                f"{'up' if state.answers else 'DOWN'} ({pid})"
            )
        click.echo(
            "controller quorum:\n" + "\n".join(f"    {line}" for line in quorum.splitlines())
        )
        if not all(state.answers for state in states):
            sys.exit(1)
        return
    spec = broker.BrokerSpec.create(port=port)
    if broker.metadata_ok(spec.bootstrap):
        click.echo(f"up on {spec.bootstrap} (pid {broker.read_pid(spec)})")
    else:
        _fail(f"no broker answers on {spec.bootstrap}")


@kafka.command("fetch")
@version_option
def kafka_fetch(version: str | None) -> None:
    """Download Kafka's jars from Maven Central into .cache/ (once)."""
    from taskstream import broker

    chosen = version or broker.DEFAULT_KAFKA_VERSION
    try:
        libs = broker.fetch_jars(chosen)
    except broker.BrokerError as exc:
        _fail(str(exc))
        return
    click.echo(f"Kafka {chosen} jars in {libs}")


# ------------------------------------------------------------------- topics


@main.group()
def topics() -> None:
    """Create and list taskstream's topics."""


@topics.command("list")
def topics_list() -> None:
    """Each of taskstream's topics: full name, partitions and messages, or missing.

    Exit codes: 0 every topic exists; 3 some are missing (`topics create`).
    """
    from taskstream import kafka_io

    settings = _connected_settings()
    consumer = kafka_io.reader(settings)
    missing = 0
    try:
        for short in kafka_io.short_names():
            full = settings.topic(short)
            try:
                size = kafka_io.topic_size(consumer, full)
            except kafka_io.UnknownTopic:
                missing += 1
                click.echo(f"{short:<16} {full:<40} missing")
                continue
            click.echo(
                f"{short:<16} {full:<40} {size.partitions:>3} partition(s) "
                f"{size.messages:>10,} message(s)"
            )
    finally:
        consumer.close()
    if missing:
        click.echo(f"{missing} topic(s) missing: run `taskstream topics create`", err=True)
        sys.exit(EXIT_MISSING_TOPICS)


@topics.command("create")
def topics_create() -> None:
    """Create every taskstream topic that does not exist yet (idempotent), and
    check that the others have this deployment's partitions and settings
    (compaction, retention, append times): exit 1 naming each difference."""

    settings = _connected_settings()
    created = _ensure_topics(settings)
    click.echo(
        f"created {', '.join(created)}" if created else "all topics exist already",
    )


# --------------------------------------------------------- produce and tail


class _Sender:
    """A confluent-kafka producer that counts what it sent per topic and what failed.

    It keeps each user's events in order across topics, as the workers
    expect of an upstream (DESIGN: a user's events arrive in order;
    docs/DEPLOY.md "Producing in order"): a user's next event is sent only
    once the previous one is acknowledged, and a tick only once everything
    before it is, and before anything after it. Events of different users
    are batched freely."""

    def __init__(self, settings: Settings) -> None:
        from taskstream.kafka_io import producer

        self.client = producer(settings)
        self.failures: list[str] = []
        self.sent: dict[str, int] = {}
        self._partitions: dict[str, int] = {}
        self._in_flight: set[bytes] = set()  # users with an event not acknowledged yet

    def settle(self) -> None:
        """Wait until everything sent is acknowledged (failures are counted)."""
        self.client.flush(60)
        self._in_flight.clear()

    def send_in_order(self, topic: str, value: bytes | None, key: bytes | None) -> None:
        if key is not None:
            if key in self._in_flight:
                self.settle()
            self._in_flight.add(key)
        self.send(topic, value, key)

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failures.append(str(err))

    def send(self, topic: str, value: bytes | None, key: bytes | None, partition: int = -1) -> None:
        while True:
            try:
                self.client.produce(
                    topic, value, key, partition=partition, on_delivery=self._delivered
                )
                break
            except BufferError:
                self.client.poll(0.1)
        self.client.poll(0)
        self.sent[topic] = self.sent.get(topic, 0) + 1

    def broadcast(self, topic: str, value: bytes) -> None:
        """One copy to every partition (ticks)."""
        from taskstream.kafka_io import partition_count

        if topic not in self._partitions:
            self._partitions[topic] = partition_count(self.client, topic)
        self.settle()
        for partition in range(self._partitions[topic]):
            self.send(topic, value, None, partition)
        self.settle()

    def finish(self) -> str:
        """Wait for delivery; fail (exit 1) if anything was not delivered."""
        remaining = self.client.flush(60)
        total = sum(self.sent.values())
        if remaining or self.failures:
            _fail(
                f"{len(self.failures) + remaining} of {total} messages were not delivered: "
                f"{self.failures[:3]}"
            )
        return ", ".join(f"{n} to {topic}" for topic, n in sorted(self.sent.items())) or "nothing"


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def produce(path: str, progress: bool) -> None:
    """Send input events from a JSON-lines file (or - for stdin) to Kafka.

    Each line goes to the topic of its `type` (claims, orders, refunds,
    ticks), keyed by its `user_id`; a tick goes to every partition. A
    user's events are sent in the file's order across topics (the next
    after the previous is acknowledged), and a tick after every line before
    it and before any after it, so the workers apply them in that order. The
    worker validates what it receives (bad events become dead letters);
    lines that cannot be routed at all (not JSON, unknown type) are reported
    here and not sent: exit 1 if any were.
    """
    from tqdm import tqdm

    from streams.config import INPUT_TOPICS
    from taskstream.kafka_io import UnroutableEvent, route

    settings = _connected_settings()
    _require_topics(settings, INPUT_TOPICS)  # never create one by writing to it
    sender = _Sender(settings)
    lines = skipped = 0
    stream = sys.stdin.buffer if path == "-" else Path(path).open("rb")  # noqa: SIM115
    with stream, tqdm(unit="ev", disable=not progress, file=sys.stderr) as bar:
        for number, line in enumerate(stream, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                routed = route(settings, line)
                if routed.broadcast:
                    sender.broadcast(routed.topic, routed.value)
                else:
                    sender.send_in_order(routed.topic, routed.value, routed.key)
            except UnroutableEvent as exc:
                # Through the bar, so the line does not run into it.
                bar.write(f"line {number}: {exc}", file=sys.stderr)
                skipped += 1
                continue
            lines += 1
            bar.update(1)
    summary = sender.finish()
    click.echo(f"sent {lines} events ({summary}), skipped {skipped}")
    if skipped:
        sys.exit(EXIT_FAILED)


@main.command()
@click.option(
    "--at",
    "at_text",
    default=None,
    help="The instant the tick announces (RFC 3339, UTC); default: now.",
)
def tick(at_text: str | None) -> None:
    """Broadcast a tick (time passes) to every partition of the ticks topic.

    Tasks past their deadline expire when a tick at or after it is processed.
    The tick's id derives from its instant, so sending the same tick twice
    has no further effect.
    """
    from datetime import UTC, datetime

    from schemas.codec import encode
    from schemas.records import Tick
    from schemas.timestamps import format_utc, parse_utc
    from streams.config import TICKS

    try:
        at = parse_utc(at_text or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from None
    settings = _connected_settings()
    sender = _Sender(settings)
    sender.broadcast(settings.topic(TICKS), encode(Tick(f"tick-{format_utc(at)}", at)))
    click.echo(f"tick at {format_utc(at)}: {sender.finish()}")


# ---------------------------------------------------------------- templates


@main.group()
def templates() -> None:
    """Publish task templates and pools to the workers (no restart needed)."""


@templates.command("publish")
@click.option(
    "--templates",
    "templates_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Task templates (JSON list).",
)
@click.option(
    "--pools",
    "pools_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Budget pools (JSON list).",
)
def templates_publish(templates_path: Path, pools_path: Path | None) -> None:
    """Validate templates (and pools) and write them to the compacted templates topic.

    Every worker picks the new versions up within a second. A template or
    pool that is already published is replaced by the new version.
    """
    import orjson

    from app.catalog import CatalogError
    from streams.catalog_feed import catalog_key
    from streams.config import TEMPLATES
    from taskstream.catalog_files import load_catalog

    try:
        load_catalog(templates_path, pools_path)  # all or nothing: refuse an invalid set
    except CatalogError as exc:
        _fail(str(exc))
    settings = _connected_settings()

    _ensure_topics(settings)
    sender = _Sender(settings)
    topic = settings.topic(TEMPLATES)
    names = []
    for kind, path in (("pool", pools_path), ("template", templates_path)):
        if path is None:
            continue
        for doc in orjson.loads(path.read_bytes()):
            item_id = doc["pool_id" if kind == "pool" else "template_id"]
            sender.send(topic, orjson.dumps(doc), catalog_key(kind, item_id))
            names.append(f"{kind} {item_id}")
    sender.finish()
    click.echo(f"published {len(names)} to {topic}: {', '.join(names)}")


@main.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message.")
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    help="Stop after this many seconds without a message (default: run until Ctrl-C).",
)
def tail(topic: str, from_beginning: bool, idle_timeout: float | None) -> None:
    """Print the events of TOPIC as they arrive, one JSON object per line.

    TOPIC is a short name (claims, orders, refunds, ticks, task-events,
    rewards, dead-letters, budget-grants, budget-requests, templates) or a
    full name. Every partition is read, without a consumer group: two tails
    of one topic each print all of it, and nothing is committed.

    Exit codes: 0 done; 1 read nothing from a topic that has messages (with
    --from-beginning and --idle-timeout); 2 no such topic.
    """
    from taskstream import kafka_io

    settings = _connected_settings()
    full = kafka_io.resolve_topic(settings, topic)
    try:
        reader = kafka_io.open_tail(settings, full)
    except kafka_io.UnknownTopic:
        raise click.BadParameter(
            f"no topic {full!r} on {settings.bootstrap}. taskstream's topics: "
            f"{', '.join(kafka_io.short_names())} (`taskstream topics list` shows them; "
            "`taskstream topics create` makes the missing ones)",
            param_hint="TOPIC",
        ) from None
    try:
        for _partition, _offset, _key, value in reader.messages(
            from_beginning=from_beginning, idle_timeout=idle_timeout
        ):
            click.echo(value.decode("utf-8", "replace") if value is not None else "null")
    except KeyboardInterrupt:
        return
    finally:
        reader.consumer.close()
    if from_beginning and reader.printed == 0 and reader.size.messages > 0:
        _fail(
            f"read nothing from {full} in {idle_timeout} s although it held "
            f"{reader.size.messages} message(s) when tail started"
        )


# -------------------------------------------------------------------- token


@main.command()
@click.argument("user_id")
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=3600,
    show_default=True,
    help="Seconds the token stays valid.",
)
def token(user_id: str, ttl: int) -> None:
    """Print a signed render-API token for USER_ID (docs/api.md).

    Signed with TASKSTREAM_API_SECRET (or the file TASKSTREAM_API_SECRET_FILE
    names); valid for --ttl seconds from now. Exit 0: printed; 2: no secret
    configured, or a bad USER_ID.
    """
    import time

    from app.access import MAX_USER_ID_LENGTH, sign_token

    settings = _settings()
    if not settings.api_secret:
        hint = ""
        dev_secret = Path(".data") / "dev-api-secret"
        if dev_secret.exists():  # written by `make run` for its worker's API
            hint = f"; for `make run`'s worker: export TASKSTREAM_API_SECRET_FILE={dev_secret}"
        raise click.UsageError(f"set TASKSTREAM_API_SECRET (or TASKSTREAM_API_SECRET_FILE){hint}")
    if not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        raise click.BadParameter(f"1 to {MAX_USER_ID_LENGTH} characters", param_hint="USER_ID")
    click.echo(sign_token(user_id, int(time.time()) + ttl, settings.api_secret.encode()))


# -------------------------------------------------------------------- pools


@main.group()
def pools() -> None:
    """Budget pools: open, close, central, and where every unit is (progressive bucketing)."""


# How long `_ensure_topics` tries a cluster that does not answer (a broker
# down, a leader election): a worker restarted in the middle of one waits.
TOPIC_CHECK_PATIENCE_SECONDS = 180.0


def _ensure_topics(settings: Settings) -> list[str]:
    """`ensure_topics`, exit 1 naming each topic that disagrees with the
    deployment. A cluster that does not answer (a request timed out, a
    broker away) is asked again, saying so, for up to
    TOPIC_CHECK_PATIENCE_SECONDS; then exit 1 with why."""
    from confluent_kafka import KafkaException

    from taskstream.kafka_io import TopicMismatch, ensure_topics

    deadline = time.monotonic() + TOPIC_CHECK_PATIENCE_SECONDS
    while True:
        try:
            return ensure_topics(settings)
        except TopicMismatch as exc:
            _fail(str(exc))
        except (KafkaException, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            if time.monotonic() >= deadline:
                _fail(f"the cluster at {settings.bootstrap} did not answer the topic check: {why}")
            click.echo(f"the topic check did not get an answer ({why}); asking again", err=True)
            time.sleep(2.0)


def _require_topics(settings: Settings, shorts: Iterable[str]) -> None:
    """Fail (exit 1) unless each topic exists with the deployment's partitions:
    a write to a missing topic would create it with the broker's defaults on
    a broker that auto-creates topics, and break co-partitioning."""
    from taskstream import kafka_io

    partitions = settings.partitions
    consumer = kafka_io.reader(settings)
    try:
        for short in shorts:
            full = settings.topic(short)
            try:
                size = kafka_io.topic_size(consumer, full)
            except kafka_io.UnknownTopic:
                _fail(f"topic {full} does not exist: run `taskstream topics create` first")
            if size.partitions != partitions:
                _fail(
                    f"topic {full} has {size.partitions} partition(s), the deployment "
                    f"{partitions} (TASKSTREAM_PARTITIONS): fix the topic or the setting first"
                )
    finally:
        consumer.close()


def _pool_command(pool_id: str, command: str) -> None:
    from datetime import UTC, datetime

    from schemas.timestamps import parse_utc
    from streams.config import BUDGET_REQUESTS, TEMPLATES
    from taskstream.audit import catalog_from_topic
    from taskstream.log_reader import TopicMissing, read_topics
    from taskstream.pools import send_command

    settings = _connected_settings()
    # Only a published pool has a master to obey: a command for another one
    # would be a dead letter in some worker's log, after "sent" here.
    _require_topics(settings, [BUDGET_REQUESTS])
    try:
        published = catalog_from_topic(read_topics(settings, [TEMPLATES], timeout=60)).pools
    except TopicMissing as exc:
        _fail(f"{exc}: run `taskstream topics create` first")
    if pool_id not in published:
        known = ", ".join(sorted(published)) or "none (`taskstream templates publish`)"
        raise click.BadParameter(
            f"no pool {pool_id!r} is published; the published pools: {known}",
            param_hint="POOL_ID",
        )
    now = parse_utc(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    message = send_command(settings, pool_id, command, now)
    click.echo(f"sent {command} for pool {pool_id} ({message.event_id})", err=True)


@pools.command("open")
@click.argument("pool_id")
def pools_open(pool_id: str) -> None:
    """Make POOL_ID progressive again (after a close, or once it went central)
    and give every bucket a first small grant."""
    _pool_command(pool_id, "open")


@pools.command("close")
@click.argument("pool_id")
def pools_close(pool_id: str) -> None:
    """Drain every bucket of POOL_ID back to its master; later rewards are rejected."""
    _pool_command(pool_id, "close")


@pools.command("central")
@click.argument("pool_id")
def pools_central(pool_id: str) -> None:
    """Drain every bucket of POOL_ID and pay each later reward from its master
    (exact near exhaustion, one round trip per reward; `open` undoes it)."""
    _pool_command(pool_id, "central")


@pools.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pool.")
@click.option("--progress/--no-progress", default=True, help="Progress on stderr.")
def pools_status(as_json: bool, progress: bool) -> None:
    """Master, buckets, issued and in flight of every pool the allocator has seen.

    Read from the tables' changelogs in Kafka. Exit 0 when every pool adds up
    to its total, 3 when one does not (a snapshot taken while budget
    messages move can be off by what is in flight; run it again once idle).
    """
    import orjson
    from tqdm import tqdm

    from taskstream.pools import sheet_as_dict, snapshot

    settings = _connected_settings()
    with tqdm(
        unit=" msg", desc="reading changelogs", file=sys.stderr, disable=not progress or None
    ) as bar:
        snap = snapshot(settings, bar.update)
    sheets = snap.sheets()
    if not sheets:
        click.echo("no pool has been used yet", err=True)
    for master, sheet in sheets:
        if as_json:
            click.echo(orjson.dumps(sheet_as_dict(master, sheet)).decode())
            continue
        buckets = " ".join(f"{p}:{units}" for p, units in sheet.buckets.items() if units) or "-"
        click.echo(
            f"{sheet.pool_id} ({master.mode}): total {sheet.total}, issued {sheet.issued}, "
            f"master {sheet.master}, in buckets {sum(sheet.buckets.values())} [{buckets}], "
            f"in flight {sheet.in_flight}; {master.requests} requests, {master.grants} grants, "
            f"{master.denials} requests refused, {master.rounds} recall rounds"
            + ("" if sheet.balanced else "  ** does not add up **")
        )
    if not all(sheet.balanced for _, sheet in sheets):
        sys.exit(EXIT_UNBALANCED)
