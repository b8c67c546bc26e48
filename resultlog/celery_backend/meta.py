"""Celery's task meta <-> resultlog's events and views.

Writing, a Celery state becomes the event contract's state: SUCCESS, FAILURE, RETRY,
REVOKED and STARTED are themselves; any other state (``update_state(state="PROGRESS",
meta=...)``) is a STARTED event whose result is ``{names.CELERY_STATE_KEY: state,
names.CELERY_META_KEY: meta}``, so the view, the history and a replay keep it while the
contract stays closed. Celery's own STARTED meta (``pid``, ``hostname``) is kept the
same way.

Values pass through Celery's result serializer (kombu's JSON, which tags datetime,
Decimal, UUID and bytes) and are carried as the JSON it produces, so they come back as
the types they were, as from Celery's Redis backend.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Final

from celery.exceptions import TaskRevokedError  # type: ignore[import-untyped]
from kombu.exceptions import EncodeError
from kombu.serialization import dumps, loads

from resultlog import names
from resultlog.schemas.event import ExceptionInfo
from resultlog.schemas.fold import TaskView
from resultlog.schemas.states import State
from resultlog.views.exceptions import ExceptionRebuilder

_CONTENT_TYPE: Final = "application/json"
_ENCODING: Final = "utf-8"
_ACCEPT: Final = frozenset({_CONTENT_TYPE})
#: Celery states the event contract has under the same name (FORGOTTEN is written by
#: forget() only: a custom state of that name is progress, like any other).
NATIVE_STATES: Final = frozenset(s.value for s in State if s is not State.FORGOTTEN)


def to_plain(value: Any) -> Any:
    """``value`` as plain JSON types, the way kombu's JSON encodes it (EncodeError if it
    cannot): the emitter then writes exactly kombu's JSON text."""
    _, _, text = dumps(value, serializer="json")  # type: ignore[no-untyped-call]
    return json.loads(text)


def from_json(text: str) -> Any:
    """A value written by :func:`to_plain`, decoded by kombu (its types restored).

    JSON whatever the app's ``result_accept_content``: the log holds only the JSON this
    backend wrote (never a content type chosen by the writer), so nothing else is
    decoded here."""
    return loads(text, _CONTENT_TYPE, _ENCODING, accept=_ACCEPT)  # type: ignore[no-untyped-call]


def event_state(celery_state: str) -> tuple[State, bool]:
    """The event state recording ``celery_state``, and whether the state's name must be
    kept in the result (a Celery state the contract lacks, or STARTED's meta)."""
    if celery_state in NATIVE_STATES and celery_state != State.STARTED.value:
        return State(celery_state), False
    return State.STARTED, True


def request_meta(children: list[Any] | None, request: Any) -> dict[str, str]:
    """The event meta recording what Celery's meta has and the contract lacks: the
    task's queue and the tasks it sent (``children``, Celery's result tuples)."""
    meta: dict[str, str] = {}
    delivery = getattr(request, "delivery_info", None)
    queue = delivery.get("routing_key") if isinstance(delivery, dict) else None
    if isinstance(queue, str) and queue:
        meta[names.CELERY_QUEUE_META] = queue
    if children:
        meta[names.CELERY_CHILDREN_META] = json.dumps(to_plain(children), separators=(",", ":"))
    return meta


def exception_meta(exc: BaseException) -> dict[str, str]:
    """The event meta keeping ``exc``'s args when they are more than its message.

    Celery's backends store an exception's args and rebuild it as ``cls(*args)``; the
    event keeps the type, module and message (``str(exc)``), which is all most
    exceptions need. Args that are not just the message (``ExpectedException("Task
    expected to fail", "test")``) are kept here as JSON, with the type and message they
    belong to: the view's meta is sticky, so a later event without them (a FAILURE after
    a RETRY) must not borrow them. Args kombu cannot encode are left out."""
    args = exc.args
    message = str(exc)
    if len(args) == 1 and args[0] == message or not args and not message:
        return {}
    try:
        plain = to_plain(list(args))
    except EncodeError:
        return {}
    kept = {"type": type(exc).__qualname__, "message": message, "args": plain}
    return {names.CELERY_EXC_ARGS_META: json.dumps(kept, separators=(",", ":"))}


def exception_args(recorded: dict[str, str], info: ExceptionInfo) -> tuple[Any, ...] | None:
    """The args :func:`exception_meta` kept for the exception ``info``, if any."""
    text = recorded.get(names.CELERY_EXC_ARGS_META)
    if text is None:
        return None
    kept = json.loads(text)
    if kept.get("type") != info.type or kept.get("message") != info.message:
        return None
    return tuple(from_json(json.dumps(kept["args"])))


def progress(celery_state: str, meta: Any) -> dict[str, Any]:
    """A STARTED event's result recording ``celery_state`` with its meta."""
    return {names.CELERY_STATE_KEY: celery_state, names.CELERY_META_KEY: to_plain(meta)}


def date_done(view: TaskView) -> datetime | None:
    if not view.state.ready:
        return None
    return datetime.fromtimestamp(view.timestamp / 1000, tz=timezone.utc)


def task_meta(
    task_id: str,
    view: TaskView | None,
    rebuilder: ExceptionRebuilder,
    extended: bool,
) -> dict[str, Any]:
    """The meta dict Celery's ``get_task_meta`` returns, read from the view (PENDING
    for a task the view does not know)."""
    if view is None:
        return {"task_id": task_id, "status": "PENDING", "result": None, "traceback": None,
                "children": [], "date_done": None}
    recorded: dict[str, str] = {} if view.meta is None else json.loads(view.meta)
    status, result = _outcome(view, rebuilder, recorded)
    children = recorded.get(names.CELERY_CHILDREN_META)
    meta: dict[str, Any] = {
        "task_id": task_id,
        "status": status,
        "result": result,
        "traceback": view.traceback,
        "children": [] if children is None else from_json(children),
        "date_done": date_done(view),
    }
    if view.group_id:
        meta["group_id"] = view.group_id
    if view.parent_id:
        meta["parent_id"] = view.parent_id
    if extended:
        meta.update(
            name=view.task_name,
            args=None if view.args is None else from_json(view.args),
            kwargs=None if view.kwargs is None else from_json(view.kwargs),
            worker=view.worker,
            retries=view.attempt,
            queue=recorded.get(names.CELERY_QUEUE_META),
        )
    return meta


def _outcome(view: TaskView, rebuilder: ExceptionRebuilder, recorded: dict[str, str]) -> tuple[str, Any]:
    state = view.state
    if state is State.SUCCESS:
        return state.value, None if view.result is None else from_json(view.result)
    if state is State.STARTED or state is State.RECEIVED:
        if view.result is not None:
            value = json.loads(view.result)
            if isinstance(value, dict) and names.CELERY_STATE_KEY in value:
                meta = json.dumps(value.get(names.CELERY_META_KEY))
                return str(value[names.CELERY_STATE_KEY]), from_json(meta)
        return state.value, None
    if view.exception is not None:
        args = exception_args(recorded, view.exception)
        return state.value, rebuilder.rebuild(view.exception, view.traceback, args=args)
    if state is State.REVOKED:
        return state.value, TaskRevokedError("revoked")
    return state.value, Exception(f"task {view.task_id} failed without recording an exception")
