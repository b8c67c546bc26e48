"""The per-state emitting calls, written once for both emitters.

``received``, ``started``, ``retry``, ``success``, ``failure``, ``revoked`` and
``emit_state`` each build one event (validating the input in the caller, before anything
is buffered) and hand it to the emitter's :meth:`EmittingCalls._send`. What that returns
is the emitter's flavour: :class:`~resultlog.producers.emitter.Emitter` returns an
awaitable, :class:`~resultlog.producers.sync.SyncEmitter` ``None`` once done.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar, Unpack

from resultlog.schemas.event import FIELD_NAMES, EventDetails, TaskEvent, TaskFields, check_fields
from resultlog.schemas.states import State

R = TypeVar("R")


class EmittingCalls(Generic[R]):
    """The per-state calls; subclasses provide ``_worker_name`` and ``_send``."""

    __slots__ = ()

    def _worker_name(self) -> str:
        raise NotImplementedError

    def _send(self, event: TaskEvent, wait: bool) -> R:
        raise NotImplementedError

    def _fields(self, fields: TaskFields) -> TaskFields:
        # ``fields``: the call's own keywords (a fresh dict), which may name another worker;
        # checked here, as TaskEvent.create would take a ``result`` for one.
        if not fields.keys() <= FIELD_NAMES:
            check_fields(fields)
        if "worker" not in fields:
            fields["worker"] = self._worker_name()
        return fields

    def emit_state(self, task_id: str, state: State | str, *, wait: bool = False,
                   **details: Unpack[EventDetails]) -> R:
        """Emit the state named ``state`` (``UnknownState`` if it is not one), with the
        details :meth:`TaskEvent.create` takes (``attempt``, ``result``, ``exc``, ...)."""
        if "worker" not in details:
            details["worker"] = self._worker_name()
        return self._send(TaskEvent.create(task_id, state, **details), wait)

    def received(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> R:
        """The task was received by a worker (queued there, not yet running)."""
        event = TaskEvent.create(task_id, State.RECEIVED, **self._fields(fields), attempt=attempt)
        return self._send(event, wait)

    def started(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> R:
        """The task started running (attempt ``attempt``, 0 for the first run)."""
        event = TaskEvent.create(task_id, State.STARTED, **self._fields(fields), attempt=attempt)
        return self._send(event, wait)

    def retry(
        self,
        task_id: str,
        exc: BaseException,
        *,
        attempt: int,
        eta: datetime | int | None = None,
        traceback: str | None = None,
        wait: bool = False,
        **fields: Unpack[TaskFields],
    ) -> R:
        """Attempt ``attempt`` failed with ``exc`` and will be retried (at ``eta``)."""
        event = TaskEvent.create(task_id, State.RETRY, **self._fields(fields), attempt=attempt,
                                 exc=exc, traceback=traceback, eta=eta)
        return self._send(event, wait)

    def success(
        self,
        task_id: str,
        result: Any,
        *,
        runtime: float | None = None,
        attempt: int = 0,
        wait: bool = False,
        **fields: Unpack[TaskFields],
    ) -> R:
        """The task returned ``result`` (JSON-encoded; ``ResultNotSerializable`` if it can't be)."""
        event = TaskEvent.create(task_id, State.SUCCESS, **self._fields(fields), attempt=attempt,
                                 result=result, runtime=runtime)
        return self._send(event, wait)

    def failure(
        self,
        task_id: str,
        exc: BaseException,
        *,
        traceback: str | None = None,
        runtime: float | None = None,
        attempt: int = 0,
        wait: bool = False,
        **fields: Unpack[TaskFields],
    ) -> R:
        """The task raised ``exc`` (traceback taken from it unless given)."""
        event = TaskEvent.create(task_id, State.FAILURE, **self._fields(fields), attempt=attempt,
                                 exc=exc, traceback=traceback, runtime=runtime)
        return self._send(event, wait)

    def revoked(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> R:
        """The task was revoked (cancelled) and will not run or finish."""
        event = TaskEvent.create(task_id, State.REVOKED, **self._fields(fields), attempt=attempt)
        return self._send(event, wait)
