"""Bounded stop steps: a slow step is named with where it waits, a stuck one is left behind."""

from __future__ import annotations

import asyncio

from tunnelmesh.aio.stopping import await_chain, bounded_step


async def _stuck_forever(gate: asyncio.Event) -> None:
    while not gate.is_set():  # ignores cancellation, as the network monitor's loop once did
        try:
            await gate.wait()
        except asyncio.CancelledError:
            continue


def test_a_stuck_step_is_reported_and_left_behind() -> None:
    lines: list[str] = []

    async def main() -> tuple[bool, bool]:
        gate = asyncio.Event()
        stuck = await bounded_step(
            "the stuck part",
            _stuck_forever(gate),
            report=lines.append,
            report_after=0.05,
            limit=0.2,
        )
        quick = await bounded_step("the quick part", asyncio.sleep(0), report=lines.append)
        gate.set()  # let the stuck task end, so that the loop can close
        return stuck, quick

    stuck, quick = asyncio.run(main())
    assert (stuck, quick) == (False, True)
    assert len(lines) == 2
    assert lines[0].startswith("stopping: waiting for the stuck part (0.05 s)")
    assert "_stuck_forever" in lines[0] and "test_aio_stopping.py" in lines[0]
    assert lines[1].startswith("stopping: gave up on the stuck part after 0.2 s")


def test_a_failing_step_is_logged_not_raised(caplog) -> None:  # type: ignore[no-untyped-def]
    async def boom() -> None:
        raise OSError("gone")

    async def main() -> bool:
        return await bounded_step("the failing part", boom(), report=print)

    assert asyncio.run(main()) is True
    assert "stopping the failing part failed: gone" in caplog.text


def test_await_chain_follows_tasks_and_coroutines() -> None:
    async def inner(ev: asyncio.Event) -> None:
        await ev.wait()

    async def outer(ev: asyncio.Event) -> None:
        await asyncio.ensure_future(inner(ev))

    async def main() -> str:
        ev = asyncio.Event()
        task = asyncio.ensure_future(outer(ev), loop=None)
        await asyncio.sleep(0.01)
        chain = await_chain(task)
        ev.set()
        await task
        return chain

    chain = asyncio.run(main())
    parts = chain.split(" <- ")
    names = [part.split()[-1] for part in parts]
    assert names[1:5] == ["outer", names[2], "inner", "wait"], chain
    assert parts[0].startswith("task ") and parts[2].startswith("task ")
    assert parts[-1].startswith("<Future pending"), chain
