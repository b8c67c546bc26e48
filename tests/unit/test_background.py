"""stop_if_cancelled: a loop stops even when a library lost its task's cancellation;
sent_a_cancellation: a task tells its own cancellation from one a library raised."""

from __future__ import annotations

import asyncio

from resultlog.background import sent_a_cancellation, stop_if_cancelled


async def test_a_loop_whose_cancellation_was_lost_still_stops() -> None:
    rounds = 0
    swallowed = asyncio.Event()

    async def loop() -> None:
        nonlocal rounds
        while True:
            stop_if_cancelled()
            rounds += 1
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                # What Python 3.11's asyncio.wait_for does to a cancellation that
                # arrives as the awaited operation finishes: it returns instead.
                swallowed.set()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    task.cancel()
    # Bounded, so that without the check the test fails instead of hanging.
    await asyncio.wait({task}, timeout=10)
    assert swallowed.is_set() and rounds == 1
    assert task.cancelled()


async def test_a_task_not_cancelled_goes_on() -> None:
    stop_if_cancelled()  # the test's own task: nothing asked it to stop

    async def once() -> str:
        stop_if_cancelled()
        return "went on"

    assert await asyncio.create_task(once()) == "went on"



async def test_a_task_tells_its_own_cancellation_from_one_a_library_raised() -> None:
    seen: list[bool] = []

    async def waits_on(awaited: asyncio.Future[None], entered: asyncio.Event) -> None:
        entered.set()  # and awaits at once: suspended there when the caller resumes
        try:
            await awaited
        except asyncio.CancelledError:
            seen.append(sent_a_cancellation())
            raise

    loop = asyncio.get_running_loop()
    # A library's own task cancelled under the call awaiting it (what aiokafka's
    # consumer does when its coordination task is cancelled): not this task's.
    inner: asyncio.Future[None] = loop.create_future()
    entered = asyncio.Event()
    stray = asyncio.create_task(waits_on(inner, entered))
    await entered.wait()
    inner.cancel()
    await asyncio.wait({stray})
    # The task itself cancelled (the worker stopping): its own.
    entered = asyncio.Event()
    own = asyncio.create_task(waits_on(loop.create_future(), entered))
    await entered.wait()
    own.cancel()
    await asyncio.wait({own})
    assert seen == [False, True]
