"""Bounded shutdown steps: a stop that takes long says what it waits for, and never hangs.

A daemon's stop runs steps in order (restore routes, stop the resolver, close transports).
:func:`bounded_step` runs one as a task: when it is not done after ``report_after`` seconds a
line names the step and where it waits (its await chain, :func:`await_chain`); when it is
still not done after ``limit`` seconds it is cancelled (not awaited: a task that ignores
cancellation cannot hold up the rest) and the stop goes on with the next step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["await_chain", "bounded_step", "finish"]

log = logging.getLogger(__name__)


def await_chain(task: asyncio.Future[Any]) -> str:
    """Where a suspended task waits: ``file:line function`` of each awaiting coroutine, down
    to the innermost one, then what that one awaits (a future, another task's chain)."""
    parts: list[str] = []
    seen: set[int] = set()
    obj: Any = task
    waiter: Any = None
    while obj is not None and id(obj) not in seen and len(parts) < 40:
        seen.add(id(obj))
        if isinstance(obj, asyncio.Task):
            parts.append(f"task {obj.get_name()}")
            waiter = getattr(obj, "_fut_waiter", None)  # what the suspended task waits on
            obj = obj.get_coro()
            continue
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            parts.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
            obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None)
            continue
        # the innermost coroutine awaits a future (seen as its iterator): the task's waiter
        obj, waiter = waiter, None
        pending = [c for c in getattr(obj, "_children", ()) if not c.done()]
        if pending:  # asyncio.gather: follow what it still waits for
            parts.append(f"gather ({len(pending)} pending)")
            obj = pending[0]
            continue
        if obj is not None and not isinstance(obj, asyncio.Task):
            parts.append(repr(obj)[:200])
            break
    return " <- ".join(parts)


async def bounded_step(
    what: str,
    aw: Awaitable[object],
    *,
    report: Callable[[str], None],
    report_after: float = 2.0,
    limit: float = 4.0,
) -> bool:
    """Run one stop step, bounded; return whether it finished (errors are logged, not raised).

    Args:
        what: the step, as the user reads it ("the exit routes").
        aw: the step's coroutine (or future).
        report: called with a line when the step is slow, and when it is given up.
        report_after: seconds before the "still waiting" line.
        limit: seconds before the step is cancelled and left behind.
    """
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=report_after)
    if not done:
        report(f"stopping: waiting for {what} ({report_after:g} s): {await_chain(task)}")
        done, _ = await asyncio.wait({task}, timeout=max(0.0, limit - report_after))
    if not done:
        report(f"stopping: gave up on {what} after {limit:g} s: {await_chain(task)}")
        task.cancel()
        return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("stopping %s failed: %s", what, exc, exc_info=exc)
    return True


async def finish(*tasks: asyncio.Future[Any]) -> None:
    """Wait for (cancelled) tasks to end; their own errors were reported where they ran."""
    await asyncio.gather(*tasks, return_exceptions=True)
