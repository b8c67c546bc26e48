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

Reading, what this module wrote is taken only in the shape it writes it: any producer
may write to the log, and Celery acts on the meta it is handed (it calls the class a
FAILURE's result names, and rebuilds the children's tuples on any read of a finished
task). Entries of another shape are read as absent, with a warning naming the task.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Final

from celery.exceptions import TaskRevokedError  # type: ignore[import-untyped]
from kombu.exceptions import DecodeError, EncodeError
from kombu.serialization import dumps, loads

from resultlog import names
from resultlog.errors import InvalidTaskId
from resultlog.schemas.event import ExceptionInfo, validate_task_id
from resultlog.schemas.fold import TaskView
from resultlog.schemas.states import State
from resultlog.views.exceptions import ExceptionRebuilder

_CONTENT_TYPE: Final = "application/json"
_ENCODING: Final = "utf-8"
_ACCEPT: Final = frozenset({_CONTENT_TYPE})
#: Celery states the event contract has under the same name (FORGOTTEN is written by
#: forget() only: a custom state of that name is progress, like any other).
NATIVE_STATES: Final = frozenset(s.value for s in State if s is not State.FORGOTTEN)
#: What :func:`_recorded` returns for text this backend would not have written.
_UNREADABLE: Final = object()

log = logging.getLogger("resultlog.celery")


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


def _recorded(text: str) -> Any:
    """:func:`from_json` of a value read from the log, or ``_UNREADABLE``: another
    producer's record may hold any text, which kombu refuses as a DecodeError (it wraps
    every error of its decoder, a RecursionError included)."""
    try:
        return from_json(text)
    except DecodeError:
        return _UNREADABLE


def _ignored(task_id: str, what: str, read_as: str) -> None:
    """Warn that ``task_id``'s ``what`` is not in the shape this backend writes."""
    log.warning("task %r: its %s is not what the resultlog Celery backend writes (another "
                "producer's?); read as %s", task_id, what, read_as)


def _is_result_tuple(value: Any) -> bool:
    """Whether ``value`` is a Celery result's ``as_tuple()`` as :func:`to_plain` writes
    it: ``[[id, parent], None]`` for a task, ``[[id, parent], [member, ...]]`` for a
    group, each parent None or such a tuple. What Celery's ``result_from_tuple`` reads,
    and which it fails on as a bare ValueError or TypeError otherwise. Walked without
    recursion: a tuple may nest as deep as the JSON decoder went."""
    pending = [value]
    while pending:
        node = pending.pop()
        if not (isinstance(node, list) and len(node) == 2 and isinstance(node[0], list)
                and len(node[0]) == 2):
            return False
        (task_id, parent), members = node
        try:
            validate_task_id(task_id)
        except InvalidTaskId:
            return False
        if parent is not None:
            pending.append(parent)
        if members is not None:
            if not isinstance(members, list):
                return False
            pending.extend(members)
    return True


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


def exception_args(task_id: str, meta: dict[str, str], info: ExceptionInfo) -> tuple[Any, ...] | None:
    """The args :func:`exception_meta` kept for the exception ``info``, if any (None: the
    class is called with the message). An entry of another shape is ignored: Celery
    calls the class with whatever args it is given."""
    text = meta.get(names.CELERY_EXC_ARGS_META)
    if text is None:
        return None
    kept = _recorded(text)
    if not (isinstance(kept, dict) and isinstance(kept.get("type"), str)
            and isinstance(kept.get("message"), str) and isinstance(kept.get("args"), list)):
        _ignored(task_id, f"{names.CELERY_EXC_ARGS_META} meta entry", "the exception's message")
        return None
    if kept["type"] != info.type or kept["message"] != info.message:
        return None  # another exception's (an earlier RETRY's: the view's meta is sticky)
    return tuple(kept["args"])


def progress(celery_state: str, meta: Any) -> dict[str, Any]:
    """A STARTED event's result recording ``celery_state`` with its meta."""
    return {names.CELERY_STATE_KEY: celery_state, names.CELERY_META_KEY: to_plain(meta)}


def _recorded_progress(view: TaskView) -> tuple[str, Any] | None:
    """The Celery state and meta a STARTED (or RECEIVED) event's result records, if it is
    what :func:`progress` writes; None for a plain event.

    Only a state :func:`event_state` wraps is taken: STARTED, or one the contract lacks.
    The others are events of their own, never wrapped, and Celery acts on them: it
    reads a SUCCESS's meta as the task's return value before the task ended, and
    builds and raises the exception a FAILURE's, RETRY's or REVOKED's meta describes,
    any class at all (SystemExit) and bypassing resultlog's rules (docs/celery.md,
    "Exceptions"), or fails on a meta that describes none."""
    if view.result is None:
        return None
    value = _recorded(view.result)
    if not isinstance(value, dict) or names.CELERY_STATE_KEY not in value:
        return None
    celery_state = value[names.CELERY_STATE_KEY]
    if not isinstance(celery_state, str) or event_state(celery_state) != (State.STARTED, True):
        _ignored(view.task_id, f"{view.state.value} event's {names.CELERY_STATE_KEY} "
                f"{celery_state!r:.40}", f"the plain {view.state.value}")
        return None
    return celery_state, value.get(names.CELERY_META_KEY)


def _recorded_children(task_id: str, meta: dict[str, str]) -> list[Any]:
    """The result tuples of the tasks ``task_id`` sent, as :func:`request_meta` kept them."""
    text = meta.get(names.CELERY_CHILDREN_META)
    if text is None:
        return []
    children = _recorded(text)
    if not isinstance(children, list) or not all(_is_result_tuple(child) for child in children):
        _ignored(task_id, f"{names.CELERY_CHILDREN_META} meta entry", "no children")
        return []
    return children


def saved_group(view: TaskView) -> list[Any] | None:
    """The member tuple a saved group's event records (the backend's ``_save_group``
    writes the GroupResult's ``as_tuple()`` under the group's id), or None."""
    members: Any = None if view.result is None else _recorded(view.result)
    if not (_is_result_tuple(members) and members[1] is not None
            and members[0][0] == view.task_id):
        _ignored(view.task_id, f"saved group ({names.CELERY_SAVED_GROUP_TASK})", "no saved group")
        return None
    group: list[Any] = members  # a list: _is_result_tuple said so
    return group


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
    recorded_meta: dict[str, str] = {} if view.meta is None else json.loads(view.meta)
    status, result = _outcome(view, rebuilder, recorded_meta)
    meta: dict[str, Any] = {
        "task_id": task_id,
        "status": status,
        "result": result,
        "traceback": view.traceback,
        "children": _recorded_children(task_id, recorded_meta),
        "date_done": date_done(view),
    }
    if view.group_id:
        meta["group_id"] = view.group_id
    if view.parent_id:
        meta["parent_id"] = view.parent_id
    if extended:
        meta.update(
            name=view.task_name,
            args=_task_args(task_id, "args", view.args),
            kwargs=_task_args(task_id, "kwargs", view.kwargs),
            worker=view.worker,
            retries=view.attempt,
            queue=recorded_meta.get(names.CELERY_QUEUE_META),
        )
    return meta


def _task_args(task_id: str, what: str, text: str | None) -> Any:
    """The task's ``args`` or ``kwargs`` (``what``), None if unknown. Text kombu cannot
    decode reads as unknown: Celery builds the whole meta for any read, its state too."""
    value = None if text is None else _recorded(text)
    if value is _UNREADABLE:
        _ignored(task_id, what, "unknown (None)")
        return None
    return value


def _outcome(view: TaskView, rebuilder: ExceptionRebuilder, meta: dict[str, str]) -> tuple[str, Any]:
    """Celery's status and result. Every status Celery turns into an exception (FAILURE,
    RETRY, REVOKED: its EXCEPTION_STATES) comes with an ``Exception`` made here (the
    rebuilder finds no other class), which Celery then raises as it is: never a meta
    it would build a class from itself, nor a BaseException such as SystemExit."""
    state = view.state
    if state is State.SUCCESS:
        return state.value, None if view.result is None else from_json(view.result)
    if state is State.STARTED or state is State.RECEIVED:
        return _recorded_progress(view) or (state.value, None)
    if view.exception is not None:
        args = exception_args(view.task_id, meta, view.exception)
        return state.value, rebuilder.rebuild(view.exception, view.traceback, args=args)
    if state is State.REVOKED:
        return state.value, TaskRevokedError("revoked")
    return state.value, Exception(f"task {view.task_id} failed without recording an exception")
