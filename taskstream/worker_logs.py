"""What `taskstream worker` logs at info: taskstream's own lines, aiokafka's
group changes and every warning, without faust's start-up chatter.

faust and mode log every service's "Starting..." / "Stopping...", tables of
subscriptions, offsets and highwaters, and "opening partition" lines: about
130 lines before the first line of ours on a 4-partition worker. Their own
loggers are lowered to warning. The subclasses this app registers
(streams/kafka/, streams/fenced_store.py) log through their own modules'
loggers, which also carry lines of ours, so there only the chatter is
dropped, by its shape. `--loglevel debug` shows everything.
"""

from __future__ import annotations

import logging
from typing import Any

import faust.worker

from taskstream.await_chains import describe_tasks

CHATTY_LIBRARIES = ("faust", "mode")
SUBCLASS_MODULES = (
    "streams.kafka.transport",
    "streams.kafka.recovery",
    "streams.fenced_store",
    "streams.rocksdb_memory",
    # aiokafka's group changes stay, without their tables of topics.
    "aiokafka.consumer.subscription_state",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.consumer.consumer",
)
# aiokafka's lines whose first argument is a set of topics or partitions
# (faust's formatter prints each as a table): the set becomes its size.
_COUNTED = (
    "Updating subscribed topics to: %s",
    "Subscribed to topic(s): %s",
    "Setting newly assigned partitions %s for group %s",
)
_LIFECYCLE = ("Starting...", "Stopping...", "Restarting...", "Shutting down...")


class FaustChatter(logging.Filter):
    """Drops info-level lifecycle lines and tables; keeps everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        if record.msg in _COUNTED and isinstance(record.args, tuple) and record.args:
            first, *rest = record.args
            size = len(first) if hasattr(first, "__len__") else first
            record.args = (f"({size} in all)", *rest)
            return True
        message = record.getMessage().rstrip()
        if message.endswith(_LIFECYCLE) or message.startswith("opening partition"):
            return False
        return "\n+" not in message and "\n|" not in message  # a table


def quiet_faust() -> None:
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    chatter = FaustChatter()
    for name in SUBCLASS_MODULES:
        logging.getLogger(name).addFilter(chatter)


class Worker(faust.worker.Worker):
    """faust's worker without its terminal spinner.

    At `--loglevel warning` or `error`, faust keeps a spinner that turns on
    every log record, and to feed it lowers the ROOT logger to DEBUG
    (`faust.worker.Worker._setup_spinner_handler`): every `log.debug` of
    aiokafka, faust and mode then builds a record that the handler throws
    away (aiokafka's fetch thread logs one per partition per fetch). A worker
    has no use for a spinner, so the root logger keeps the level asked for."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None

    def _setup_spinner_handler(self, logger: Any, level: int) -> None:
        return None

    async def _cry(self) -> None:
        """SIGUSR1 (mode's handler): mode's dump of every thread and task,
        then each task's whole await chain, which mode's dump cuts at the
        first `async for` (taskstream/await_chains.py)."""
        await super()._cry()
        print(describe_tasks(), file=self.stderr, flush=True)
