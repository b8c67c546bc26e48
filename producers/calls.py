"""The per-state emitting calls, written once for both emitters.

``received``, ``started``, ``retry``, ``success``, ``failure``, ``revoked`` and
``emit_state`` each build one event (validating the input in the caller, before anything
is buffered) and hand it to the emitter's :meth:`EmittingCalls._send`. What that returns
is the emitter's flavour: :class:`~resultlog.producers.emitter.Emitter` returns an
awaitable, :class:`~resultlog.producers.sync.SyncEmitter` ``None`` once done.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar, Unpack, cast

from resultlog.schemas.event import FIELD_NAMES, EventDetails, TaskEvent, TaskFields, check_fields, new_event
from resultlog.schemas.states import State

R = TypeVar("R")


class EmittingCalls(Generic[R]):
    """The per-state calls; subclasses provide ``_worker_name`` and ``_send``."""

    __slots__ = ()

    def _worker_name(self) -> str:
        raise NotImplementedError

    def _default_result_ttl_ms(self) -> int | None:
        """The pipeline's ``default_result_ttl_ms``: the expiry an event carries when its
        caller gives none."""
        raise NotImplementedError

    def _send(self, event: TaskEvent, wait: bool) -> R:
        raise NotImplementedError

    def _event(self, task_id: str, state: State, fields: TaskFields, **details: Any) -> TaskEvent:
        # ``fields``: the call's own keywords (a fresh dict, so new_event may take it
        # over), which may name another worker; checked here, as the event's details
        # would take a ``result`` for one.
        if not fields.keys() <= FIELD_NAMES:
            check_fields(fields)
        if "worker" not in fields:
            fields["worker"] = self._worker_name()
        if fields.get("result_ttl") is None:
            # What the pipeline would give the event anyway (read-your-writes), given
            # here: the pipeline's copy with it costs as much as making the event.
            ttl_ms = self._default_result_ttl_ms()
            if ttl_ms is not None:
                fields["result_ttl"] = ttl_ms
        event_details = cast(EventDetails, fields)
        event_details.update(details)  # type: ignore[typeddict-item]
        return new_event(task_id, state, event_details)

    def emit_state(self, task_id: str, state: State | str, *, wait: bool = False,
                   **details: Unpack[EventDetails]) -> R:
        """Emit the state named ``state`` (``UnknownState`` if it is not one), with the
        details :meth:`TaskEvent.create` takes (``attempt``, ``result``, ``exc``, ...)."""
        if "worker" not in details:
            details["worker"] = self._worker_name()
        return self._send(new_event(task_id, state, details), wait)

    def received(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> R:
        """The task was received by a worker (queued there, not yet running)."""
        event = self._event(task_id, State.RECEIVED, fields, attempt=attempt)
        return self._send(event, wait)

    def started(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> R:
        """The task started running (attempt ``attempt``, 0 for the first run)."""
        event = self._event(task_id, State.STARTED, fields, attempt=attempt)
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
        event = self._event(task_id, State.RETRY, fields, attempt=attempt,
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
        event = self._event(task_id, State.SUCCESS, fields, attempt=attempt,
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
        event = self._event(task_id, State.FAILURE, fields, attempt=attempt,
                                 exc=exc, traceback=traceback, runtime=runtime)
        return self._send(event, wait)

    def revoked(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> R:
        """The task was revoked (cancelled) and will not run or finish."""
        event = self._event(task_id, State.REVOKED, fields, attempt=attempt)
        return self._send(event, wait)
