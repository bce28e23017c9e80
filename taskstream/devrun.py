"""`make run`: the main job on one machine.

1. A broker: KAFKA_BOOTSTRAP if set, else the local one on KAFKA_PORT
   (started now, or reused if it already answers).
2. The topics (created if missing).
3. The sample campaign: samples/templates.json and pools.json published to
   the templates topic, then samples/events.jsonl produced to the inputs.
4. A development secret for the render API (kept in .data/dev-api-secret)
   unless TASKSTREAM_API_SECRET(_FILE) is set, so tokens can be minted.
5. One `taskstream worker` in the foreground. Ctrl-C stops it cleanly; a
   broker this run started is stopped too (TASKSTREAM_KEEP_BROKER=1 keeps it).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from streams.config import STATE_TABLE, Settings
from taskstream import broker
from taskstream.kafka_io import (
    admin,
    broker_answers,
    changelog_topic,
    client_config,
    ensure_topics,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def say(message: str) -> None:
    print(f"[make run] {message}", file=sys.stderr, flush=True)


def set_aside_stale_tables(settings: Settings) -> Path | None:
    """Local tables that belong to another Kafka cluster (the broker was wiped
    or replaced since) make faust stop with a ConsistencyError. Recognise
    them (the cluster id this folder was used with, kept in it; for a folder
    from before that, an empty state changelog) and move them aside, never
    delete them: the worker rebuilds its tables from the changelogs."""
    data = settings.data_dir
    cluster = _cluster_id(settings)
    marker = data / "kafka-cluster-id"
    stale = False
    if data.is_dir() and any(data.iterdir()):
        if marker.exists():
            stale = marker.read_text().strip() != cluster
        else:
            stale = _changelog_empty(settings)
    aside = None
    if stale:
        aside = data.with_name(f"{data.name}.stale-{time.strftime('%Y%m%dT%H%M%S')}")
        data.rename(aside)
        say(f"{data} held tables of another Kafka cluster: moved to {aside}")
    data.mkdir(parents=True, exist_ok=True)
    marker.write_text(cluster + "\n")
    return aside


def _inputs_hold_messages(settings: Settings) -> bool:
    from streams.config import INPUT_TOPICS
    from taskstream.log_reader import end_offsets

    marks = end_offsets(settings, INPUT_TOPICS)
    return any(high > 0 for _low, high in marks.values())


def _cluster_id(settings: Settings) -> str:
    return str(admin(settings).list_topics(timeout=10).cluster_id)


def _changelog_empty(settings: Settings) -> bool:
    topic = changelog_topic(settings, STATE_TABLE)
    consumer = Consumer(client_config(settings, **{"group.id": "taskstream-devrun-probe"}))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return True
        return all(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] == 0
            for p in metadata.partitions
        )
    finally:
        consumer.close()


def dev_secret_file(folder: Path, variable: str, name: str, nbytes: int) -> Path | None:
    """Point `variable`_FILE at a development secret in `folder/name`, created
    once, unless `variable` (or its _FILE) is configured; the file's path
    (None when one was configured)."""
    if os.environ.get(variable) or os.environ.get(f"{variable}_FILE"):
        return None
    path = folder / name
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(nbytes))
        path.chmod(0o600)
    os.environ[f"{variable}_FILE"] = str(path)
    return path


def dev_api_secret(folder: Path) -> Path | None:
    """The render API's development secret file (tokens can be minted)."""
    return dev_secret_file(folder, "TASKSTREAM_API_SECRET", "dev-api-secret", 32)


def dev_service_key(folder: Path) -> str | None:
    """A development service key for back-end callers and the operator page
    (None when one is configured)."""
    path = dev_secret_file(folder, "TASKSTREAM_SERVICE_KEY", "dev-service-key", 16)
    return None if path is None else path.read_text().strip()


def main() -> int:
    spec: broker.BrokerSpec | None = None
    if not os.environ.get("KAFKA_BOOTSTRAP"):
        spec = broker.BrokerSpec.create(port=int(os.environ.get("KAFKA_PORT", "19092")))
        try:
            started = broker.up(spec)
        except broker.BrokerError as exc:
            say(str(exc))
            return 1
        how = f"started in {started.seconds:.1f}s" if started.started else "already up, reused"
        say(f"Kafka {spec.version} on {spec.bootstrap} ({how}; log {spec.log_file})")
        os.environ["KAFKA_BOOTSTRAP"] = spec.bootstrap
        if not started.started:
            spec = None  # not ours to stop
    settings = Settings.from_env()
    if not broker_answers(settings, timeout=10.0):
        where = settings.bootstrap
        say(f"no Kafka broker answers at {where} (KAFKA_BOOTSTRAP): unset it to start one")
        return 1
    created = ensure_topics(settings)
    say(f"topics: {'created ' + ', '.join(created) if created else 'all present'}")
    set_aside_stale_tables(settings)
    command = str(Path(sys.executable).with_name("taskstream"))
    subprocess.run(
        [
            command,
            "templates",
            "publish",
            "--templates",
            str(SAMPLES / "templates.json"),
            "--pools",
            str(SAMPLES / "pools.json"),
        ],
        check=True,
    )
    # The sample events are sent once: a second `make run` on the same broker
    # finds them in the input topics (sending them again would only add
    # duplicates for the engine to ignore).
    if _inputs_hold_messages(settings):
        say("the sample events are already in the input topics: not produced again")
    else:
        say(
            "producing samples/events.jsonl: its line 28 is cut short on purpose (produce "
            "reports it and sends nothing), and one order breaks the contract on purpose "
            "(the worker turns it into a dead letter)"
        )
        produced = subprocess.run(
            [command, "produce", "--no-progress", str(SAMPLES / "events.jsonl")], check=False
        )
        if produced.returncode not in (0, 1):  # 1: some sample lines are deliberately unroutable
            return produced.returncode
    secret = dev_api_secret(Path(".data"))
    service_key = dev_service_key(Path(".data"))
    web = f"http://127.0.0.1:{settings.web_port}"
    api = f"http://127.0.0.1:{settings.api_port}"  # the worker's render API process
    token = ".venv/bin/taskstream token u_alice"
    exports = f"    export KAFKA_BOOTSTRAP={settings.bootstrap}\n"
    if secret is not None:
        exports += f"    export TASKSTREAM_API_SECRET_FILE={secret.resolve()}\n"
    say(
        "the worker starts now; in a second terminal, from this folder:\n"
        + exports
        + "    .venv/bin/taskstream tail task-events --from-beginning\n"
        "    .venv/bin/taskstream tail rewards --from-beginning\n"
        "    .venv/bin/taskstream tail dead-letters --from-beginning\n"
        "    .venv/bin/taskstream tick            # time passes: due tasks expire\n"
        f"    .venv/bin/taskstream replay --templates {SAMPLES / 'templates.json'} "
        f"--pools {SAMPLES / 'pools.json'} --events {SAMPLES / 'events.jsonl'} --out -\n"
        "    .venv/bin/taskstream audit --report audit.html   # the log replayed vs the outputs\n"
        "    .venv/bin/taskstream explain u_alice              # why a reward came, or not\n"
        "    .venv/bin/taskstream pools status\n"
        f"    curl {web}/ready ; curl {web}/metrics\n"
        f'    curl -H "Authorization: Bearer $({token})" \\\n'
        f'         "{api}/users/u_alice/tasks?scene=home"\n'
        + (
            f"  the live operator page: {api}/ops#key={service_key}"
            if service_key is not None
            else f"  the live operator page: {api}/ops (it asks for TASKSTREAM_SERVICE_KEY)"
        )
    )
    worker = subprocess.Popen([command, "worker"])
    try:
        code = worker.wait()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the worker too; give it time to commit.
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.send_signal(signal.SIGKILL)
            code = worker.wait()
    finally:
        if spec is not None and os.environ.get("TASKSTREAM_KEEP_BROKER") != "1":
            say(f"stopping the broker this run started ({spec.bootstrap})")
            broker.down(spec)
    return code


if __name__ == "__main__":
    sys.exit(main())
