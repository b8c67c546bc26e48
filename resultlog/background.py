"""Stopping background asyncio tasks: cancel them, then wait until each has finished;
and making sure a cancelled loop stops even when a library lost the cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (None entries are skipped) and wait until every one has finished,
    whatever it raised. Waiting matters: a cancelled task may still be running its
    cleanup (closing a connection, releasing waiters) when its owner goes on to close
    what the task uses, and an exception never retrieved is logged as an error."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)


def sent_a_cancellation() -> bool:
    """Whether the running task was cancelled (``Task.cancelling()``).

    A long-lived task that ends on :class:`asyncio.CancelledError` without having been
    sent one got it from a library: aiokafka raises one when a task of its own (its
    group coordination) was cancelled under the call awaiting it. Such a task must not
    end quietly: mode drops a cancelled task without a word, and a processor would run
    on without its fold or its chords."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def stop_if_cancelled() -> None:
    """Raise :class:`asyncio.CancelledError` if the running task was cancelled and runs on.

    On Python 3.11 a library can lose a cancellation: ``asyncio.wait_for`` returns the
    result of an operation that finished as the cancellation arrived (CPython
    gh-86296, fixed in 3.12), and redis-py sends every command through it when the
    connection has a socket timeout. The task then goes on with the request still
    counted (``Task.cancelling()``), and a loop that only ends by being cancelled,
    awaited by whoever cancelled it, would never end. Such loops call this each round.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
