"""Read-your-writes for the emitter: acknowledged events folded into the Redis view at once.

With the emitter option ``read_your_writes=True`` the pipeline hands every batch Kafka
acknowledges to :class:`AckedFold`, which folds the batch's events into the view (the
``fold.lua`` call the processor makes) and only then resolves the batch's waiters and
gives its room in the buffer back. A client waiting in ``AsyncResult.get()`` then wakes
after Kafka's acknowledgement and one Redis call, instead of after the processor's fetch
and both of its store writes; ``emit(..., wait=True)`` and ``flush()`` return once what
they waited for is readable.

Why it is safe: only acknowledged events are folded, so the view never shows what the
log does not hold; the fold is idempotent and commutative, so the processor folding the
same events later changes nothing; and no position is recorded here, so what the
processor knows it has folded (``views/coverage.py``) is untouched — a Redis that
restarted empty is still found and rebuilt by the processor.

A Redis that cannot be reached does not fail an emit: the event is in the log and the
processor folds it. The failure is logged once per outage and the batch released; for
:data:`RETRY_AFTER_S` after a failed fold, batches are released unfolded, so that an
outage (a fold call retries for about 3 s before it fails) does not hold up the workers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from resultlog.producers.lanes import Batch
from resultlog.redaction import redact_url
from resultlog.schemas.event import TaskEvent
from resultlog.settings import Settings

if TYPE_CHECKING:
    from resultlog.views.redis_view import RedisView

log = logging.getLogger("resultlog.producers")

# Events per fold call at most: Redis runs a script alone, so a very large call would
# hold up every other client (the processor's batches are of the same order).
MAX_FOLD_EVENTS = 2_000
# After a failed fold, release batches unfolded this long before trying again.
RETRY_AFTER_S = 1.0


class AckedFold:
    """Folds acknowledged batches into the view, in the order they were acknowledged,
    coalescing what is acknowledged while a fold call is in flight into the next call.

    ``released(batch)`` is called for every batch handed in, folded or not (the
    pipeline resolves its waiters and frees its room there). Event loop only.
    """

    def __init__(self, settings: Settings, released: Callable[[Batch], None]) -> None:
        self.settings = settings
        self._released = released
        self._view: RedisView | None = None
        self._queue: deque[Batch] = deque()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._retry_at = 0.0  # loop time: no fold before this, after a failed one

    def add(self, batch: Batch) -> None:
        """Fold ``batch`` (acknowledged by Kafka) soon, then release it."""
        self._queue.append(batch)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="resultlog-emitter-view-fold")

    def oldest_seq(self) -> int | None:
        """The smallest sequence number acknowledged but not yet folded and released."""
        return self._queue[0].first_seq if self._queue else None

    async def close(self) -> None:
        """Stop folding; what is still queued is released unfolded (the processor folds it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            self._released(self._queue.popleft())
        if self._view is not None:
            await self._view.close()
            self._view = None

    async def _run(self) -> None:
        queue = self._queue
        while queue:
            # Take whole batches up to the call's limit (at least one).
            events = list(queue[0].events)
            taken = 1
            while taken < len(queue) and len(events) + len(queue[taken].events) <= MAX_FOLD_EVENTS:
                events.extend(queue[taken].events)
                taken += 1
            if asyncio.get_running_loop().time() >= self._retry_at:
                await self._fold(events)
            for _ in range(taken):
                self._released(queue.popleft())

    async def _fold(self, events: list[TaskEvent]) -> None:
        if self._view is None:
            # The one place producers/ reaches into views/ (docs/ARCHITECTURE.md): the
            # emitter writes the view with the processor's own fold call. Imported here,
            # at the first fold, so that importing the emitter never loads the views.
            from resultlog.views.redis_view import RedisView

            self._view = RedisView(self.settings)
        try:
            await self._view.apply(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the log holds the events: never fail the emit for the view
            if not self._failing:
                log.warning(
                    "resultlog: read-your-writes could not fold acknowledged events into the "
                    "Redis view at %s (%s: %s); they are in Kafka and the processor will fold "
                    "them. Logged once until a fold succeeds again.",
                    redact_url(self.settings.redis_url), type(exc).__name__, exc)
            self._failing = True
            self._retry_at = asyncio.get_running_loop().time() + RETRY_AFTER_S
        else:
            if self._failing:
                log.info("resultlog: read-your-writes folds into Redis again")
            self._failing = False
