"""The asyncio emitter: what worker code calls to record a task's state changes
(docs/emitter.md); :mod:`resultlog.producers.pipeline` gets the events to Kafka, in order.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any, Unpack

from resultlog.producers.calls import EmittingCalls
from resultlog.producers.options import EmitterOptions, checked_worker, resolve
from resultlog.producers.pipeline import Pipeline
from resultlog.producers.tracking import AsyncTracker
from resultlog.schemas.event import TaskEvent, TaskFields
from resultlog.settings import Settings


def default_worker_name() -> str:
    """``host:pid``: which process emitted an event."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Emitter(EmittingCalls[Coroutine[Any, Any, None]]):
    """Emits task events to Kafka from asyncio code.

    Use ``async with Emitter() as emitter:`` or ``start()``/``stop()``; the first
    emitting call also starts it. ``stop()`` delivers everything accepted before
    returning (or raises :class:`~resultlog.errors.BrokerUnavailable` saying how many
    events it could not deliver). Not thread-safe: for threads and forked workers use
    :class:`~resultlog.producers.sync.SyncEmitter`.

    The per-state calls (``received``, ``started``, ``retry``, ``success``,
    ``failure``, ``revoked``, ``emit_state``: :mod:`.calls`) validate their input when
    called and return an awaitable that emits the event.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        worker: str | None = None,
        **options: Unpack[EmitterOptions],
    ) -> None:
        self.settings = Settings.given(settings, "Emitter")
        self.worker = default_worker_name() if worker is None else checked_worker(worker)
        #: The engine that buffers and delivers (thread-safe entry: ``accept_blocking``).
        self.pipeline = Pipeline(self.settings, resolve(self.settings, options))
        self._start_lock = asyncio.Lock()

    # Lifetime ----------------------------------------------------------------------
    async def start(self) -> None:
        """Create the topic if missing and connect; :class:`BrokerUnavailable` if Kafka can't be reached."""
        if self.pipeline.running:
            return
        async with self._start_lock:
            await self.pipeline.start()

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every event accepted so far is acknowledged by Kafka.

        Raises :class:`BrokerUnavailable` on timeout (the events stay buffered), or if
        any accepted event could not be delivered since the previous flush.
        """
        await self.pipeline.flush(timeout_s)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Flush (up to ``timeout_s``, default ``close_timeout_s``) and close. Idempotent."""
        await self.pipeline.stop(timeout_s)

    async def __aenter__(self) -> Emitter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def pending(self) -> int:
        """Events accepted and not yet acknowledged (or failed)."""
        return self.pipeline.unacked_events

    # Emitting ----------------------------------------------------------------------
    async def emit(self, event: TaskEvent, *, wait: bool = False) -> TaskEvent:
        """Emit a ready-made event; returns it as recorded (an outcome over the size limit
        is recorded with its large fields cut: :mod:`.fitting`)."""
        pipeline = self.pipeline
        if not pipeline.running:
            await self.start()
        return await pipeline.accept(event, wait=wait)

    async def emit_record(self, name: str, key: str, record: Mapping[str, Any], timestamp: int,
                          *, wait: bool = False) -> None:
        """Emit a record of another type that shares the events topic (schema ``name``,
        e.g. :data:`~resultlog.schemas.codec.WORKER_HEARTBEAT`), keyed by ``key``."""
        pipeline = self.pipeline
        if not pipeline.running:
            await self.start()
        await pipeline.accept_record(name, key, record, timestamp, wait=wait)

    async def _send(self, event: TaskEvent, wait: bool) -> None:
        await self.emit(event, wait=wait)

    def _worker_name(self) -> str:
        return self.worker

    def _default_result_ttl_ms(self) -> int | None:
        return self.pipeline.default_result_ttl_ms

    def track(self, task_id: str, *, attempt: int = 0, **fields: Unpack[TaskFields]) -> AsyncTracker:
        """STARTED now, then SUCCESS or FAILURE: ``async with`` or a decorator of async functions.

        ``async with emitter.track(tid, task_name="add") as t: t.result = 2 + 2``; as a
        decorator the function's return value is the result.
        """
        return AsyncTracker(self, task_id, attempt, fields)
