"""streams.worker.wakeup: one waiter, a timeout, woken early by `set`."""

from __future__ import annotations

import asyncio

from streams.worker.wakeup import Wakeup


def test_a_wait_ends_at_its_timeout_unwoken() -> None:
    async def scenario() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        woken = await Wakeup().wait(0.05)
        return woken, loop.time() - began

    woken, took = asyncio.run(scenario())
    assert not woken
    assert 0.04 <= took < 1.0


def test_set_during_a_wait_ends_it_at_once() -> None:
    async def scenario() -> tuple[bool, float]:
        wakeup = Wakeup()
        loop = asyncio.get_running_loop()
        began = loop.time()
        loop.call_later(0.01, wakeup.set)
        woken = await wakeup.wait(5.0)
        return woken, loop.time() - began

    woken, took = asyncio.run(scenario())
    assert woken
    assert took < 1.0


def test_set_before_a_wait_is_not_lost_and_counts_once() -> None:
    async def scenario() -> list[bool]:
        wakeup = Wakeup()
        wakeup.set()
        wakeup.set()
        return [await wakeup.wait(5.0), await wakeup.wait(0.01)]

    assert asyncio.run(scenario()) == [True, False]


def test_a_wait_woken_beforehand_still_lets_other_tasks_run() -> None:
    async def scenario() -> list[str]:
        wakeup, ran = Wakeup(), []

        async def other() -> None:
            ran.append("other")

        task = asyncio.ensure_future(other())
        wakeup.set()
        await wakeup.wait(5.0)
        ran.append("waiter")
        await task
        return ran

    assert asyncio.run(scenario()) == ["other", "waiter"]
