"""Turning the emitter's per-state calls into :class:`TaskEvent` values.

Shared by the async :class:`~resultlog.producers.emitter.Emitter` and the thread-safe
:class:`~resultlog.producers.sync.SyncEmitter`, so both validate and encode arguments
identically. Everything here is pure and raises before anything is buffered.
"""

from __future__ import annotations

import os
import random
import traceback as traceback_module
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypedDict

from resultlog.errors import ValidationError
from resultlog.schemas.event import ExceptionInfo, TaskEvent, now_ms, to_json, validate_task_id
from resultlog.schemas.states import State


class TaskFields(TypedDict, total=False):
    """Optional facts about a task that any event may carry."""

    task_name: str | None
    #: Overrides the emitter's worker name for this event.
    worker: str | None
    args: Sequence[Any] | None
    kwargs: Mapping[str, Any] | None
    parent_id: str | None
    root_id: str | None
    group_id: str | None
    chord_id: str | None
    chord_size: int | None
    chord_index: int | None
    meta: Mapping[str, str] | None


_FIELD_NAMES = frozenset(TaskFields.__annotations__)
# States whose events may carry a ``result``.
_RESULT_STATES = frozenset({State.SUCCESS, State.STARTED})

# Event ids need uniqueness, not secrecy: 128 bits from a private generator seeded
# with 256 bits from the OS, and reseeded in every forked child (a child must never
# repeat its parent's ids). Cheaper than uuid4() or os.urandom() per event, and unlike
# those it never releases the GIL, which would hand it to the emitter's loop thread
# in the middle of every SyncEmitter call.
_ids = random.Random(os.urandom(32))
_bits = _ids.getrandbits
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_event_id() -> str:
    """32 lower-case hex digits (128 random bits), like ``uuid4().hex``."""
    return f"{_bits(128):032x}"


def eta_ms(eta: datetime | int | None) -> int | None:
    """An ETA as ms since the epoch; naive datetimes are taken as UTC."""
    if eta is None:
        return None
    if isinstance(eta, datetime):
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=timezone.utc)
        return int(eta.timestamp() * 1000)
    if isinstance(eta, int) and not isinstance(eta, bool):
        return eta
    raise ValidationError(f"eta must be a datetime or ms since the epoch, got {eta!r}")


def format_traceback(exc: BaseException) -> str | None:
    if exc.__traceback__ is None:
        return None
    return "".join(traceback_module.format_exception(exc))


def exception_info(exc: object) -> ExceptionInfo:
    if not isinstance(exc, BaseException):
        raise ValidationError(f"expected an exception instance, got {type(exc).__name__}: {exc!r}")
    return ExceptionInfo.from_exception(exc)


def build(
    state: State,
    task_id: str,
    worker: str | None,
    fields: TaskFields,
    *,
    attempt: int = 0,
    result: Any = None,
    exc: BaseException | None = None,
    traceback: str | None = None,
    runtime: float | None = None,
    eta: datetime | int | None = None,
) -> TaskEvent:
    """One event for ``task_id``; raises a :class:`ValidationError` subclass on bad input."""
    validate_task_id(task_id)
    unknown = fields.keys() - _FIELD_NAMES
    if unknown:
        raise ValidationError(f"unknown event field(s): {', '.join(sorted(unknown))}")
    args = fields.get("args")
    kwargs = fields.get("kwargs")
    meta = fields.get("meta")
    info = None
    if exc is not None:
        info = exception_info(exc)
        if traceback is None:
            traceback = format_traceback(exc)
    if runtime is not None and not isinstance(runtime, (int, float)):
        raise ValidationError(f"runtime must be seconds as a number, got {runtime!r}")
    return TaskEvent(
        event_id=new_event_id(),
        task_id=task_id,
        state=state,
        timestamp=now_ms(),
        task_name=fields.get("task_name"),
        worker=fields.get("worker", worker),
        attempt=attempt,
        args=None if args is None else to_json(list(args), "args"),
        kwargs=None if kwargs is None else to_json(dict(kwargs), "kwargs"),
        # A SUCCESS's return value, or a STARTED event's progress report (Celery's
        # update_state); other states' outcomes are their exception.
        result=to_json(result, "result") if state in _RESULT_STATES and (
            result is not None or state is State.SUCCESS) else None,
        exception=info,
        traceback=traceback,
        runtime=None if runtime is None else float(runtime),
        parent_id=fields.get("parent_id"),
        root_id=fields.get("root_id"),
        group_id=fields.get("group_id"),
        chord_id=fields.get("chord_id"),
        chord_size=fields.get("chord_size"),
        chord_index=fields.get("chord_index"),
        eta=eta_ms(eta),
        meta={} if meta is None else dict(meta),
    )


def build_state(task_id: str, state: State | str, worker: str | None, fields: TaskFields,
                **details: Any) -> TaskEvent:
    """Like :func:`build` with the state given by name (``UnknownState`` if it is none);
    ``details`` are :func:`build`'s keyword arguments."""
    return build(State.parse(state), task_id, worker, fields, **details)
