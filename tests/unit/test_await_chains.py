"""A task's await chain goes through `async for` down to its future
(taskstream/await_chains.py), and the worker prints it on SIGUSR1."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading

import mode.worker

from taskstream.await_chains import chain, describe_tasks
from taskstream.worker_logs import Worker


async def _innermost(gate: asyncio.Future[None]) -> None:
    await gate


async def _records(gate: asyncio.Future[None]):  # type: ignore[no-untyped-def]
    yield 1
    await _innermost(gate)
    yield 2


async def _fetch_loop(gate: asyncio.Future[None]) -> None:
    async for _ in _records(gate):
        pass


async def test_the_chain_follows_async_for_down_to_the_future() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_fetch_loop(gate), name="fetcher")
    await asyncio.sleep(0.01)
    lines = list(chain(task.get_coro()))
    assert [line.rsplit(" in ", 1)[-1] for line in lines[:3]] == [
        "_fetch_loop",
        "_records",
        "_innermost",
    ]
    assert lines[-1].startswith("waits for <Future pending")
    described = describe_tasks()
    assert "of this thread's loop" in described.splitlines()[0]
    assert "task fetcher:" in described
    gate.set_result(None)
    await task


def test_the_worker_adds_the_chains_to_modes_sigusr1_dump() -> None:
    # mode's SIGUSR1 handler schedules `_cry`; ours extends it.
    assert "self._cry()" in inspect.getsource(mode.worker.Worker._on_sigusr1)
    assert Worker._cry is not mode.worker.Worker._cry
    assert "describe_tasks" in inspect.getsource(Worker._cry)


def test_tasks_of_another_threads_loop_are_listed_too() -> None:
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def consumer_thread_fetch() -> None:
        started.set()
        await asyncio.sleep(30)

    task = loop.create_task(consumer_thread_fetch(), name="thread-fetch")

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert started.wait(5)
        described = describe_tasks()
        assert "task thread-fetch:" in described
        assert "in consumer_thread_fetch" in described
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(5)
        loop.close()
