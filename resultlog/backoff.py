"""The waits between attempts at something that failed and may work later (a store or
the broker unavailable, :attr:`~resultlog.errors.ResultlogError.retriable`): 0.1 s at
first, doubling up to 5 s. One schedule for every retry loop, so that they all back off
alike and none hammers a server that is coming back."""

from __future__ import annotations

import asyncio
from typing import Final

FIRST_S: Final = 0.1
MOST_S: Final = 5.0


class Backoff:
    """The next wait of one retry loop (:attr:`delay`, for its log line)."""

    def __init__(self) -> None:
        self.delay = FIRST_S

    async def wait(self) -> None:
        """Sleep :attr:`delay`, then double it (up to :data:`MOST_S`)."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, MOST_S)

    def reset(self) -> None:
        """After a success: the next failure waits :data:`FIRST_S` again."""
        self.delay = FIRST_S
