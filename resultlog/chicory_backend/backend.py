"""``ResultlogBackend``: Chicory's result backend on resultlog (docs/chicory.md).

An adapter, never a second store: writes are events sent by resultlog's asyncio
:class:`~resultlog.producers.Emitter` (a stored result returns once Kafka acknowledged
it, and is then folded into the view at once, so it reads back immediately: the
processor folding it again changes nothing); reads come from the Redis view through
:class:`~resultlog.views.aiostate.AioState`, which also gives :meth:`wait`, a push-based
wait Chicory's polling ``AsyncResult.get()`` has no hook for (docs/chicory.md). Worker
heartbeats are :class:`~resultlog.schemas.workers.WorkerHeartbeat` records, read from
the Redis workers view.
"""

from __future__ import annotations

from typing import Any

from chicory.backend.base import Backend
from chicory.types import BackendStatus, TaskResult, TaskState, WorkerStats

from resultlog.chicory_backend.mapping import heartbeat, task_event, task_result, worker_stats
from resultlog.errors import ConfigurationError, NotYetAcknowledged, ValidationError
from resultlog.producers.emitter import Emitter
from resultlog.producers.heartbeats import send_heartbeat
from resultlog.producers.late import store_late
from resultlog.schemas.event import TaskEvent, validate_id, validate_task_id
from resultlog.schemas.states import MAX_TIMESTAMP_MS, State
from resultlog.settings import Settings
from resultlog.timeouts import checked_timeout
from resultlog.views.aiostate import AioState
from resultlog.views.backend import ResultBackend
from resultlog.views.workers import WorkersView

NOT_CONNECTED = "the resultlog Chicory backend is not connected: await backend.connect() first " \
                "(Chicory's app.connect() and its worker do)"


class ResultlogBackend(Backend):
    """Chicory's ``Backend`` over resultlog's log and views.

    ``settings``: resultlog's settings (default: the ``RESULTLOG_*`` environment).
    ``read_your_writes`` (default on): a result or heartbeat acknowledged by Kafka is
    folded into the view by the writer too (results by the emitter's option of that
    name), so it reads back at once; off, only the processor folds, and a read right
    after a write may miss it. ``result_ttl``: seconds the view keeps a result after it
    was stored, 0 for ever, as Chicory's Redis backend's ``result_ttl``; None (the
    default): the processor's ``RESULTLOG_RESULT_TTL_S``.
    """

    def __init__(self, settings: Settings | None = None, *, read_your_writes: bool = True,
                 result_ttl: int | None = None) -> None:
        self.settings = Settings.given(settings, "ResultlogBackend")
        if not isinstance(read_your_writes, bool):
            raise ConfigurationError(f"ResultlogBackend: read_your_writes must be True or False, "
                                     f"not {read_your_writes!r}")
        if result_ttl is not None and (isinstance(result_ttl, bool) or not isinstance(result_ttl, int)
                                       or not 0 <= result_ttl <= MAX_TIMESTAMP_MS // 1000):
            raise ConfigurationError(f"ResultlogBackend: result_ttl must be None (the processor's "
                                     f"RESULTLOG_RESULT_TTL_S), 0 (for ever) or whole seconds, "
                                     f"not {result_ttl!r}")
        self.read_your_writes = read_your_writes
        self.result_ttl_ms = None if result_ttl is None else result_ttl * 1000
        self._emitter: Emitter | None = None
        self._reader: ResultBackend | None = None
        self._state: AioState | None = None
        self._workers: WorkersView | None = None

    # --- lifetime ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Start the emitter (:class:`~resultlog.errors.BrokerUnavailable` if Kafka does
        not answer) and the view's connections. Idempotent."""
        if self._state is not None:
            return
        emitter = Emitter(self.settings, read_your_writes=self.read_your_writes)
        await emitter.start()
        reader = ResultBackend(self.settings)
        state = reader.aio()
        self._emitter, self._reader, self._state = emitter, reader, state
        self._workers = WorkersView(self.settings, state.client)

    async def disconnect(self) -> None:
        """Deliver what was emitted, then close. Idempotent."""
        emitter, reader = self._emitter, self._reader
        self._emitter = self._reader = self._state = self._workers = None
        try:
            if emitter is not None:
                await emitter.stop()
        finally:
            if reader is not None:
                await reader.aclose()

    def _connected(self) -> tuple[Emitter, AioState, WorkersView]:
        if self._emitter is None or self._state is None or self._workers is None:
            raise RuntimeError(NOT_CONNECTED)
        return self._emitter, self._state, self._workers

    # --- task results ------------------------------------------------------------------

    async def set_state(self, task_id: str, state: TaskState) -> None:
        """Record ``state`` for the task. A ready state (SUCCESS, FAILURE,
        DEAD_LETTERED) returns once Kafka acknowledged it; the others (STARTED, RETRY)
        once buffered, as the emitter does for progress."""
        validate_task_id(task_id)
        if not isinstance(state, TaskState):
            raise ValidationError(f"state must be a chicory TaskState, got {state!r}")
        await self._store(task_id, TaskResult[Any](task_id=task_id, state=state))

    async def store_result(self, task_id: str, result: TaskResult[Any]) -> None:
        """Record ``result``; returns once Kafka acknowledged it."""
        validate_task_id(task_id)
        if not isinstance(result, TaskResult):
            raise ValidationError(f"result must be a chicory TaskResult, got {type(result).__name__}")
        if result.task_id != task_id:
            raise ValidationError(
                f"the result is for task {result.task_id!r}, not {task_id!r}: store it under its own id")
        await self._store(task_id, result, wait=True)

    async def _store(self, task_id: str, result: TaskResult[Any], *, wait: bool = False) -> None:
        emitter, _, _ = self._connected()
        event = task_event(task_id, result, emitter.worker, self.result_ttl_ms)
        wait = wait or event.state.ready
        try:
            await emitter.emit(event, wait=wait)
        except NotYetAcknowledged as late:
            # Chicory must not hear of a failure for an event that will be stored.
            await store_late(emitter, event, late)

    async def get_result(self, task_id: str) -> TaskResult[Any] | None:
        """The task's latest result from the view; None for a task nobody recorded."""
        validate_task_id(task_id)
        _, state, _ = self._connected()
        view = await state.read(task_id)
        return None if view is None else task_result(view)

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskResult[Any]:
        """The task's result once it is SUCCESS, FAILURE or DEAD_LETTERED, woken by the
        view's push (no polling); :class:`~resultlog.errors.ResultTimeout` (a
        ``TimeoutError``) after ``timeout`` seconds."""
        validate_task_id(task_id)
        checked_timeout(timeout)  # a NaN or a bool is refused too, as every wait does
        _, state, _ = self._connected()
        return task_result(await state.wait_ready(task_id, timeout))

    async def delete_result(self, task_id: str) -> None:
        """Forget the task's result, durably: a FORGOTTEN event (the contract's forget,
        docs/contract.md), acknowledged by Kafka, then folded here. The task reads as
        unknown at once, and stays so through a replay or a view rebuild, whatever
        event of it arrives later (a task id reused after its deletion stays deleted)."""
        validate_task_id(task_id)
        emitter, _, _ = self._connected()
        event = TaskEvent.create(task_id, State.FORGOTTEN, worker=emitter.worker)
        await emitter.emit(event, wait=True)

    # --- workers -----------------------------------------------------------------------

    async def store_heartbeat(self, worker_id: str, heartbeat_: WorkerStats, ttl: int = 30) -> None:
        """Record the worker's heartbeat (alive for ``ttl`` s); returns once Kafka
        acknowledged it."""
        validate_id("worker_id", worker_id)
        if not isinstance(heartbeat_, WorkerStats):
            raise ValidationError(f"heartbeat must be a chicory WorkerStats, got {type(heartbeat_).__name__}")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise ValidationError(f"ttl must be whole seconds >= 1, got {ttl!r}")
        emitter, _, workers = self._connected()
        hb = heartbeat(worker_id, heartbeat_, ttl)
        await send_heartbeat(emitter, hb, wait=True)
        if self.read_your_writes:
            await workers.apply([hb])

    async def get_heartbeat(self, worker_id: str) -> WorkerStats | None:
        """The worker's latest heartbeat, unless it expired."""
        validate_id("worker_id", worker_id)
        _, _, workers = self._connected()
        hb = await workers.get(worker_id)
        return None if hb is None else worker_stats(hb)

    async def get_active_workers(self) -> list[WorkerStats]:
        """Every worker whose latest heartbeat has not expired (Celery workers on the
        same resultlog prefix included)."""
        _, _, workers = self._connected()
        return [worker_stats(hb) for hb in await workers.live()]

    async def cleanup_stale_clients(self, stale_seconds: float = 60.0) -> int:
        """Drop workers expired more than ``stale_seconds`` ago from the view's index;
        how many. (Expired workers are already absent from every read.)

        Anything but a number of seconds from 0 to the latest time an event can carry is
        a ValidationError (a ValueError, as Chicory's database backend raises for NaN):
        NaN passes a ``< 0`` test, and NaN or infinity would fail in computing the
        cutoff, as a ValueError or OverflowError that names neither."""
        # not 0 <= x <= max is true for NaN, as for any number out of range.
        if isinstance(stale_seconds, bool) or not isinstance(stale_seconds, (int, float)) \
                or not 0 <= stale_seconds <= MAX_TIMESTAMP_MS // 1000:
            raise ValidationError(f"stale_seconds must be a number of seconds from 0 to "
                                  f"{MAX_TIMESTAMP_MS // 1000}, got {stale_seconds!r:.40}")
        if self._workers is None:
            return 0
        return await self._workers.prune(stale_seconds)

    async def healthcheck(self) -> BackendStatus:
        """Connected when the Redis view answers and the emitter runs."""
        if self._state is None or self._emitter is None:
            return BackendStatus(connected=False, error="Not connected")
        try:
            await self._state.client.ping()
        except Exception as exc:  # noqa: BLE001 -- reported, as Chicory's backends do
            return BackendStatus(connected=False, error=f"Redis: {exc}")
        return BackendStatus(connected=True)
