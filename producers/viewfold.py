"""Read-your-writes for the emitter (option ``read_your_writes``): each batch Kafka
acknowledges is folded into the Redis view, with the processor's own ``fold.lua`` call,
before its waiters are resolved and its room in the buffer given back.

What it buys, why it is safe (only acknowledged events; an idempotent, commutative fold;
no position recorded, so the processor still finds and rebuilds a Redis that restarted
empty: ``views/coverage.py``) and why Redis trouble never fails an emit: docs/emitter.md,
"Read-your-writes". A fold call retries for about 3 s before it fails, and fails after
``RESULTLOG_REDIS_TIMEOUT_S`` however Redis is unavailable (a hung one too): for
:data:`RETRY_AFTER_S` after a failed fold, batches are released unfolded, so that an
outage does not hold up the workers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from resultlog.background import cancel_and_wait
from resultlog.producers.lanes import Batch
from resultlog.redaction import redact_url
from resultlog.settings import Settings

if TYPE_CHECKING:
    from resultlog.views.redis_view import RedisView

log = logging.getLogger("resultlog.producers")

# Events per fold at most (RedisView writes them in parts of at most PART_TASKS tasks, so
# that Redis serves its other clients in between): the batches of one fold are released
# together, when its last part is written.
MAX_FOLD_EVENTS = 2_000
# Fold calls in flight at most: a new acknowledgement does not wait for an earlier
# call's round trip (the fold commutes), and a slow Redis is still not flooded.
MAX_IN_FLIGHT = 4
# After a failed fold, release batches unfolded this long before trying again.
RETRY_AFTER_S = 1.0


class AckedFold:
    """Folds acknowledged batches into the view, up to :data:`MAX_IN_FLIGHT` fold calls
    at a time; what is acknowledged while every call is busy goes in the next one.

    Concurrent calls are safe because the fold is commutative and idempotent; a batch
    is released (``released(batch)``: the pipeline resolves its waiters and frees its
    room) when its own call has returned, folded or not. Event loop only.
    """

    def __init__(self, settings: Settings, released: Callable[[Batch], None]) -> None:
        self.settings = settings
        self._released = released
        self._view: RedisView | None = None
        self._queued: deque[Batch] = deque()
        self._folding: dict[asyncio.Task[None], list[Batch]] = {}
        self._failing = False
        self._retry_at = 0.0  # loop time: no fold before this, after a failed one
        self._closed = False
        self._start_soon = False  # a start of folds is scheduled for this loop turn

    def add(self, batch: Batch) -> None:
        """Fold ``batch`` (acknowledged by Kafka) soon, then release it."""
        if self._closed:  # acknowledged while the emitter closes: the processor folds it
            self._released(batch)
            return
        self._queued.append(batch)
        if not self._start_soon:
            # Next in the loop's queue, not now: one produce response acknowledges a
            # batch per partition, each in a callback already queued, so they go into
            # one fold call instead of one each (at 10,000 events/s over 8 partitions,
            # ~6 events a call, a Redis round trip and script call for each).
            self._start_soon = True
            asyncio.get_running_loop().call_soon(self._start_queued)

    def _start_queued(self) -> None:
        self._start_soon = False
        self._start_folds()

    def oldest_seq(self) -> int | None:
        """The smallest sequence number acknowledged but not yet folded and released."""
        seqs = [batches[0].first_seq for batches in self._folding.values()]
        if self._queued:
            seqs.append(self._queued[0].first_seq)
        return min(seqs) if seqs else None

    async def close(self) -> None:
        """Stop folding; what is not folded yet is released unfolded (the processor folds it)."""
        # First, so that a fold ending below starts no other (it would outlive close()).
        self._closed = True
        await cancel_and_wait(*self._folding)
        for batches in self._folding.values():
            for batch in batches:
                self._released(batch)
        self._folding.clear()
        while self._queued:
            self._released(self._queued.popleft())
        if self._view is not None:
            await self._view.close()
            self._view = None

    def _start_folds(self) -> None:
        if self._closed:
            return
        queued = self._queued
        loop = asyncio.get_running_loop()
        while queued and len(self._folding) < MAX_IN_FLIGHT:
            if loop.time() < self._retry_at:  # Redis failed just now: do not hold anyone up
                while queued:
                    self._released(queued.popleft())
                return
            # Whole batches up to the call's limit (at least one).
            batches = [queued.popleft()]
            count = len(batches[0].events)
            while queued and count + len(queued[0].events) <= MAX_FOLD_EVENTS:
                count += len(queued[0].events)
                batches.append(queued.popleft())
            task = loop.create_task(self._fold(batches), name="resultlog-emitter-view-fold")
            self._folding[task] = batches
            task.add_done_callback(self._folded)

    def _folded(self, task: asyncio.Task[None]) -> None:
        batches = self._folding.pop(task, None)
        if batches is None:
            return  # close() took it
        for batch in batches:
            self._released(batch)
        self._start_folds()

    async def _fold(self, batches: list[Batch]) -> None:
        if self._view is None:
            # The one place producers/ reaches into views/ (docs/ARCHITECTURE.md): the
            # emitter writes the view with the processor's own fold call. Imported here,
            # at the first fold, so that importing the emitter never loads the views.
            from resultlog.views.redis_view import RedisView

            self._view = RedisView(self.settings)
        events = [event for batch in batches for event in batch.events]
        try:
            # Bounded: a Redis that hangs (paused, swapping, a long script of another
            # client) answers no error, and the batches' waiters would wait for it, past
            # RESULTLOG_KAFKA_TIMEOUT_S, to be told that Kafka did not acknowledge
            # (a fault audit: Chicory tasks that succeeded were stored FAILURE).
            # The whole call, written in parts, as one command is: its batches' waiters
            # wait for it (released unfolded after that).
            async with asyncio.timeout(self.settings.redis_timeout_s):
                await self._view.apply(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the log holds the events: never fail the emit for the view
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(
                    f"Redis did not answer within {self.settings.redis_timeout_s:g} s "
                    f"(RESULTLOG_REDIS_TIMEOUT_S)")
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
