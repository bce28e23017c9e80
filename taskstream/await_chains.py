"""Where every asyncio task of a process waits, down to the innermost await.

`kill -USR1 <worker pid>` makes faust's worker (mode) print each thread's
stack and each task's, but a task's stack stops at the first `async for`
over an async generator ("[rest of traceback truncated]"): the iterator of
an `async for` (`async_generator_asend`) exposes no frame. faust's fetch
loop, every agent and every timer runs inside one, so a stalled worker's
dump stopped exactly where the answer was. The generator is reachable
through the garbage collector's referents of that iterator; this module
follows those links, so the chain of a task goes down to the future it
waits for.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from types import FrameType
from typing import Any

# A chain deeper than this is cut (a cycle through a custom awaitable).
MAX_DEPTH = 64
# Iterators that stand between an await and what it awaits, without an attribute to it.
_WRAPPERS = ("async_generator_asend", "async_generator_athrow", "FutureIter")


def _frame_of(awaitable: Any) -> FrameType | None:
    for name in ("cr_frame", "ag_frame", "gi_frame"):
        frame = getattr(awaitable, name, None)
        if frame is not None:
            return frame  # type: ignore[no-any-return]
    return None


def _awaited_by(awaitable: Any) -> Any:
    """What `awaitable` waits on now: a coroutine, generator, async
    generator, future; None when it waits on nothing we can follow."""
    for name in ("cr_await", "ag_await", "gi_yieldfrom"):
        inner = getattr(awaitable, name, None)
        if inner is not None:
            return inner
    kind = type(awaitable).__name__
    if kind in _WRAPPERS:
        # `async for` / `anext` (the generator) and `await future` (the
        # future): the awaited object is only a GC referent of the wrapper.
        for referent in gc.get_referents(awaitable):
            if type(referent).__name__ == "async_generator" or isinstance(referent, asyncio.Future):
                return referent
    return None


def chain(awaitable: Any) -> Iterator[str]:
    """One line per level: file:line in function, then what the innermost
    level waits on."""
    current = awaitable
    for _ in range(MAX_DEPTH):
        if current is None:
            return
        frame = _frame_of(current)
        if frame is not None:
            code = frame.f_code
            yield f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
        elif isinstance(current, asyncio.Future):
            yield f"waits for {current!r}"[:300]
            return
        elif type(current).__name__ not in _WRAPPERS:
            yield f"waits for {type(current).__name__}"
            return
        current = _awaited_by(current)
    yield "(deeper levels cut)"


def _event_loops() -> list[asyncio.AbstractEventLoop]:
    """Every event loop in the process: faust runs aiokafka's consumer on
    its own thread's loop, where a fetch the main loop waits for runs."""
    return [obj for obj in gc.get_objects() if isinstance(obj, asyncio.AbstractEventLoop)]


def describe_tasks(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Every task of every event loop (or of `loop`) with its await chain;
    the loop this runs on first."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is not None:
        loops = [loop]
    else:
        # The running loop first; it may be one gc does not list (uvloop's).
        loops = [each for each in _event_loops() if each is not running]
        if running is not None:
            loops.insert(0, running)
    parts = []
    for each in loops:
        tasks = asyncio.all_tasks(each)
        where = "this thread's loop" if each is running else f"loop {id(each):#x}"
        parts.append(f"{len(tasks)} asyncio task(s) of {where}, innermost await last:")
        for task in sorted(tasks, key=lambda t: t.get_name()):
            lines = "\n".join(f"    {line}" for line in chain(task.get_coro()))
            parts.append(f"  task {task.get_name()}:\n{lines}")
    return "\n".join(parts)
