"""Stopping background asyncio tasks: cancel them, then wait until each has finished."""

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
