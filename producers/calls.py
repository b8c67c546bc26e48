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

from resultlog.producers.events import TaskFields, build, build_state
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State

R = TypeVar("R")


class EmittingCalls(Generic[R]):
    """The per-state calls; subclasses provide ``_worker_name`` and ``_send``."""

    __slots__ = ()

    def _worker_name(self) -> str:
        raise NotImplementedError

    def _send(self, event: TaskEvent, wait: bool) -> R:
        raise NotImplementedError

    def emit_state(
        self,
        task_id: str,
        state: State | str,
        *,
        attempt: int = 0,
        result: Any = None,
        exc: BaseException | None = None,
        traceback: str | None = None,
        runtime: float | None = None,
        eta: datetime | int | None = None,
        wait: bool = False,
        **fields: Unpack[TaskFields],
    ) -> R:
        """Emit the state named ``state`` (``UnknownState`` if it is not one)."""
        event = build_state(
            task_id, state, self._worker_name(), fields,
            attempt=attempt, result=result, exc=exc, traceback=traceback, runtime=runtime, eta=eta,
        )
        return self._send(event, wait)

    def received(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> R:
        """The task was received by a worker (queued there, not yet running)."""
        return self._send(build(State.RECEIVED, task_id, self._worker_name(), fields, attempt=attempt), wait)

    def started(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> R:
        """The task started running (attempt ``attempt``, 0 for the first run)."""
        return self._send(build(State.STARTED, task_id, self._worker_name(), fields, attempt=attempt), wait)

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
        event = build(State.RETRY, task_id, self._worker_name(), fields,
                      attempt=attempt, exc=exc, traceback=traceback, eta=eta)
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
        event = build(State.SUCCESS, task_id, self._worker_name(), fields,
                      attempt=attempt, result=result, runtime=runtime)
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
        event = build(State.FAILURE, task_id, self._worker_name(), fields,
                      attempt=attempt, exc=exc, traceback=traceback, runtime=runtime)
        return self._send(event, wait)

    def revoked(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> R:
        """The task was revoked (cancelled) and will not run or finish."""
        return self._send(build(State.REVOKED, task_id, self._worker_name(), fields, attempt=attempt), wait)
