"""The event model: one immutable state change of one task.

``TaskEvent`` is what goes on the wire (see :mod:`resultlog.schemas.codec`). Values
that are user data (args, kwargs, result) are carried as JSON text, never pickle;
:func:`to_json` is the one place that turns Python values into that text.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
import traceback as traceback_module
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any, TypedDict, Unpack, cast

from resultlog.errors import CorruptResult, InvalidTaskId, ResultNotSerializable, ValidationError
from resultlog.schemas.states import (
    LATEST_DATETIME_MS,
    MAX_ATTEMPT,
    MAX_TIMESTAMP_MS,
    OrderKey,
    State,
    order_key,
    order_token,
)

MAX_ID_LENGTH = 255
#: The longest task name and worker name, in characters, as an id: both are indexed in
#: the history (task_name, worker), and 255 characters of 4 UTF-8 bytes, even escaped
#: (taskrows.to_pg_text), fit in a PostgreSQL btree index row (at most 2,704 bytes);
#: a longer one failed the history's write of its batch, at every restart.
MAX_NAME_LENGTH = MAX_ID_LENGTH
# The fields a FORGOTTEN event can carry (a TaskForgotten record has no others).
_FORGOTTEN_FIELDS = ("event_id", "task_id", "state", "timestamp", "worker", "meta")
_EVENT_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """An exception as data: enough to rebuild a real exception class, never pickled."""

    type: str
    module: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ExceptionInfo:
        kind = type(exc)
        return cls(type=kind.__qualname__, module=kind.__module__, message=str(exc))


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One state change. Build new ones with :meth:`create`; the codecs build decoded ones."""

    event_id: str
    task_id: str
    state: State
    timestamp: int  # ms since the epoch, UTC
    task_name: str | None = None
    worker: str | None = None
    attempt: int = 0
    args: str | None = None  # JSON text
    kwargs: str | None = None  # JSON text
    result: str | None = None  # JSON text
    exception: ExceptionInfo | None = None
    traceback: str | None = None
    runtime: float | None = None  # seconds
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    chord_id: str | None = None
    chord_size: int | None = None
    chord_index: int | None = None
    eta: int | None = None  # ms since the epoch
    meta: Mapping[str, str] = field(default_factory=dict)
    #: How long the views keep the task's state while this event is its latest, in ms
    #: after ``timestamp``; 0: for ever; None: the folding process's ``result_ttl_s``.
    result_ttl_ms: int | None = None

    def __post_init__(self) -> None:
        validate_task_id(self.task_id)
        if not isinstance(self.event_id, str) or not _EVENT_ID_RE.match(self.event_id):
            raise ValidationError(
                f"event_id {self.event_id!r} must be 32 lower-case hex digits (uuid4().hex)"
            )
        if not isinstance(self.state, State):
            raise ValidationError(f"state must be a State, got {self.state!r}")
        # type() is int, not isinstance: a bool is an int to Python, never to the contract
        # (True would be written as 1); and the cheaper test, on every event decoded.
        if type(self.timestamp) is not int or not 0 <= self.timestamp <= LATEST_DATETIME_MS:
            raise ValidationError(f"timestamp {self.timestamp!r} must be an int of ms since the "
                                  f"epoch, 0 to {LATEST_DATETIME_MS} (9999-12-31T23:59:59.999Z)")
        if type(self.attempt) is not int or not 0 <= self.attempt <= MAX_ATTEMPT:
            raise ValidationError(f"attempt {self.attempt!r} must be an int, 0..{MAX_ATTEMPT}")
        for name in ("parent_id", "root_id", "group_id", "chord_id"):
            value = getattr(self, name)
            if value is not None:
                validate_id(name, value)
        for name in ("task_name", "worker"):
            value = getattr(self, name)
            if value is not None:
                validate_name(name, value)
        if self.state is State.FORGOTTEN:
            # Refuse what its record would lose.
            extra = [f.name for f in fields(self) if f.name not in _FORGOTTEN_FIELDS
                     and getattr(self, f.name) not in (None, 0)]
            if self.result_ttl_ms == 0:  # 0 is a TTL (for ever), not an absent one
                extra.append("result_ttl_ms")
            if extra:
                raise ValidationError(
                    f"a FORGOTTEN event carries only event_id, task_id, timestamp, worker "
                    f"and meta; it also has {', '.join(extra)}")
        ttl = self.result_ttl_ms
        if ttl is not None and (type(ttl) is not int or not 0 <= ttl <= MAX_TIMESTAMP_MS):
            raise ValidationError(
                f"result_ttl_ms must be an int of ms, 0 (keep for ever) to {MAX_TIMESTAMP_MS}, "
                f"or None (the processor's result_ttl_s), got {ttl!r}")
        if self.chord_size is not None or self.chord_index is not None:  # most events: no loop
            for name in ("chord_size", "chord_index"):
                value = getattr(self, name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValidationError(f"{name} must be an int, got {value!r}")
        if self.chord_id is not None:
            if self.chord_size is None or self.chord_index is None:
                raise ValidationError("a chord member needs chord_size and chord_index")
            if not 0 <= self.chord_index < self.chord_size:
                raise ValidationError(
                    f"chord_index {self.chord_index} out of range for chord_size {self.chord_size}"
                )

    @classmethod
    def create(cls, task_id: str, state: State | str, *, timestamp: int | None = None,
               event_id: str | None = None, **details: Unpack[EventDetails]) -> TaskEvent:
        """A new event, validated: the one factory of the emitter, the backends and tests.

        ``state`` may be a name (``UnknownState`` if it is none); args, kwargs and the
        result are JSON-encoded; the id and the time are fresh unless given. Raises a
        :class:`ValidationError` subclass on bad input.
        """
        return new_event(task_id, state, details, timestamp=timestamp, event_id=event_id)

    @property
    def key(self) -> OrderKey:
        return order_key(self.attempt, self.state, self.timestamp, self.event_id)

    @property
    def token(self) -> str:
        return order_token(self.attempt, self.state, self.timestamp, self.event_id)

    def result_value(self) -> Any:
        return None if self.result is None else from_json(self.result, "result", self.task_id)


class TaskFields(TypedDict, total=False):
    """Optional facts about a task that any event may carry (the emitter's keywords)."""

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
    #: How long the views keep the task's state while this event is its latest (a
    #: ``timedelta``, or ms); 0: for ever; None: the processor's ``result_ttl_s``.
    result_ttl: timedelta | int | None


class EventDetails(TaskFields, total=False):
    """What an event tells besides its task and state: :meth:`TaskEvent.create`'s keywords,
    and the emitter's ``emit_state``'s."""

    attempt: int
    result: Any
    #: An exception (its traceback is taken unless given) or its :class:`ExceptionInfo`.
    exc: BaseException | ExceptionInfo | None
    traceback: str | None
    runtime: float | None
    eta: datetime | int | None


FIELD_NAMES = frozenset(TaskFields.__optional_keys__)
_DETAIL_NAMES = frozenset(EventDetails.__optional_keys__)

# Event ids need uniqueness, not secrecy: 128 bits from a private generator seeded
# with 256 bits from the OS, and reseeded in every forked child (a child must never
# repeat its parent's ids). Cheaper than uuid4() or os.urandom() per event, and unlike
# those it never releases the GIL, which would hand it to the emitter's loop thread
# in the middle of every SyncEmitter call.
_ids = random.Random(os.urandom(32))
_bits = _ids.getrandbits
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_event(task_id: str, state: State | str, details: EventDetails, *,
              timestamp: int | None = None, event_id: str | None = None) -> TaskEvent:
    """:meth:`TaskEvent.create` with the details as a dict, which it takes over (and
    changes): the emitter's per-state calls pass their own keywords' dict, unpacked once."""
    if not isinstance(state, State):
        state = State.parse(state)
    if not details.keys() <= _DETAIL_NAMES:
        check_fields(details, _DETAIL_NAMES)
    # The details not handled below have the names of the event's own fields.
    values = cast(dict[str, Any], details)
    exc = values.pop("exc", None)
    if isinstance(exc, BaseException):
        if values.get("traceback") is None and exc.__traceback__ is not None:
            values["traceback"] = "".join(traceback_module.format_exception(exc))
        exc = ExceptionInfo.from_exception(exc)
    elif exc is not None and not isinstance(exc, ExceptionInfo):
        raise ValidationError(f"expected an exception instance, got {type(exc).__name__}: {exc!r}")
    runtime = values.get("runtime")
    if runtime is not None:
        # Checked here, where an event is made, not in TaskEvent: the contract's runtime
        # is any double, and a record another producer wrote must still decode. A NaN or
        # negative runtime would poison every percentile of its task name.
        if isinstance(runtime, bool) or not isinstance(runtime, (int, float)) \
                or not 0 <= runtime < math.inf:
            raise ValidationError(f"runtime must be seconds, a finite number >= 0, got {runtime!r}")
        values["runtime"] = float(runtime)
    args, kwargs, meta = values.get("args"), values.get("kwargs"), values.get("meta")
    if args is not None:
        # list and tuple first: the ABC checks cost ~0.5 us, on the emit path of every event.
        if type(args) not in (list, tuple) and (
                isinstance(args, (str, bytes, Mapping)) or not isinstance(args, Sequence)):
            raise ValidationError(f"args must be a list or tuple of the task's positional "
                                  f"arguments, got {type(args).__name__}: {args!r}")
        values["args"] = to_json(list(args), "args")
    if kwargs is not None:
        if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
            raise ValidationError(f"kwargs must be a mapping of the task's keyword arguments, "
                                  f"got {type(kwargs).__name__}: {kwargs!r}")
        values["kwargs"] = to_json(dict(kwargs), "kwargs")
    result = values.get("result")
    # A SUCCESS's return value, or a STARTED event's progress report (Celery's
    # update_state); other states' outcomes are their exception.
    if state is State.SUCCESS or (state is State.STARTED and result is not None):
        values["result"] = to_json(result, "result")
    elif result is not None:
        del values["result"]
    if values.get("eta") is not None:
        values["eta"] = eta_ms(values["eta"])
    if "result_ttl" in values:
        values["result_ttl_ms"] = ttl_ms(values.pop("result_ttl"))
    if "meta" in values:
        values["meta"] = {} if meta is None else meta_map(meta)
    if "chord_size" in values or "chord_index" in values:
        # Here, where an event is made, like runtime: TaskEvent checks their type, and
        # a record another producer wrote must still decode.
        for name in ("chord_size", "chord_index"):
            value = values.get(name)
            if type(value) is int and value < 0:
                raise ValidationError(f"{name} must not be negative, got {value}")
    # Only None asks for a fresh id: an empty one given is a caller's mistake, refused.
    return TaskEvent(event_id=new_event_id() if event_id is None else event_id, task_id=task_id, state=state,
                     timestamp=now_ms() if timestamp is None else timestamp, exception=exc,
                     **values)


def check_fields(given: Mapping[str, object], allowed: frozenset[str] = FIELD_NAMES) -> None:
    """:class:`ValidationError` naming the keys of ``given`` that are not ``allowed``."""
    unknown = given.keys() - allowed
    if unknown:
        raise ValidationError(f"unknown event field(s): {', '.join(sorted(unknown))}")


def new_event_id() -> str:
    """32 lower-case hex digits (128 random bits), like ``uuid4().hex``."""
    return f"{_bits(128):032x}"


def eta_ms(eta: datetime | int | None) -> int | None:
    """An ETA as ms since the epoch; naive datetimes are taken as UTC. The range is the
    timestamp's: a negative one would sort the retry before the epoch."""
    if eta is None:
        return None
    if isinstance(eta, datetime):
        aware = eta if eta.tzinfo is not None else eta.replace(tzinfo=timezone.utc)
        ms = int(aware.timestamp() * 1000)
    elif isinstance(eta, int) and not isinstance(eta, bool):
        ms = eta
    else:
        raise ValidationError(f"eta must be a datetime or ms since the epoch, got {eta!r}")
    if not 0 <= ms <= LATEST_DATETIME_MS:
        raise ValidationError(f"eta must be at or after the epoch (1970-01-01 UTC) and at most "
                              f"{LATEST_DATETIME_MS} ms after it (9999-12-31T23:59:59.999Z), "
                              f"got {eta!r}")
    return ms


def meta_map(meta: object) -> dict[str, str]:
    """``meta`` (string headers such as a trace id) as a dict of its own; else a
    :class:`ValidationError` naming the entry that is not str to str."""
    if type(meta) is not dict and not isinstance(meta, Mapping):
        raise ValidationError(f"meta must be a mapping of str to str (headers such as a trace "
                              f"id), got {type(meta).__name__}: {meta!r:.80}")
    copied = dict(meta)
    for key, value in copied.items():
        if type(key) is not str or type(value) is not str:
            if not isinstance(key, str):
                raise ValidationError(f"meta keys must be str, got {type(key).__name__}: {key!r:.80}")
            if not isinstance(value, str):
                raise ValidationError(f"meta[{key!r:.80}] must be a str, got {type(value).__name__}: "
                                      f"{value!r:.80}; convert it with str() first")
    return copied


def ttl_ms(ttl: timedelta | int | None) -> int | None:
    """A result TTL as whole ms (a ``timedelta`` rounded up, so that a positive one never
    becomes 0, which means for ever)."""
    if isinstance(ttl, timedelta):
        ms: int | None = math.ceil(ttl / timedelta(milliseconds=1))
    elif ttl is None or (isinstance(ttl, int) and not isinstance(ttl, bool)):
        ms = ttl
    else:
        raise ValidationError(f"result_ttl must be a timedelta or an int of ms, got {ttl!r}")
    if ms is not None and not 0 <= ms <= MAX_TIMESTAMP_MS:
        raise ValidationError(f"result_ttl must be 0 (keep for ever) to {MAX_TIMESTAMP_MS} ms, "
                              f"got {ttl!r}")
    return ms


def meta_text(meta: Mapping[str, str]) -> str | None:
    """An event's meta map as the views keep it: compact JSON in the map's order, None
    when empty (an empty map is no value, so it never wins a sticky field)."""
    if not meta:
        return None
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def validate_task_id(task_id: object) -> str:
    """``task_id`` if it is an acceptable id, else :class:`InvalidTaskId` saying why."""
    if not isinstance(task_id, str):
        raise InvalidTaskId(f"task id must be a str, got {type(task_id).__name__}: {task_id!r}")
    if not task_id or task_id.isspace():
        raise InvalidTaskId("task id must not be empty")
    if len(task_id) > MAX_ID_LENGTH:
        raise InvalidTaskId(f"task id is {len(task_id)} characters; at most {MAX_ID_LENGTH}")
    surrogate = _lone_surrogate(task_id)
    if surrogate is not None:
        raise InvalidTaskId(f"task id {task_id!r:.80} {surrogate}")
    return task_id


def _lone_surrogate(value: str) -> str | None:
    """Why ``value`` cannot be stored, if it holds a lone surrogate (what Python makes of
    bytes that were not UTF-8, e.g. in a command line's arguments): Redis, Kafka and
    PostgreSQL take UTF-8 only, and redis-py or asyncpg would fail with their own error."""
    if value.isascii():  # the usual id: no scan beyond this
        return None
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        return (f"is not valid Unicode text: a lone surrogate {value[exc.start]!r} at "
                f"position {exc.start} (bytes that were not UTF-8?)")
    return None


def listed_ids(values: object) -> list[Any]:
    """``values`` (a list, tuple or other iterable of task ids or results) as a list; a
    lone string, a mapping or None is refused rather than read as one id per character
    (or as none)."""
    if values is None or isinstance(values, (str, bytes, Mapping)) \
            or not isinstance(values, Iterable):
        raise InvalidTaskId(
            f"expected a list of task ids, got {type(values).__name__}: {values!r:.80}"
            "; for one task, pass [task_id]")
    return list(values)


def validate_task_ids(task_ids: object) -> list[str]:
    """``task_ids`` as a list (:func:`listed_ids`), each id checked."""
    return [validate_task_id(task_id) for task_id in listed_ids(task_ids)]


def validate_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValidationError(f"{name} must be a non-empty str of at most {MAX_ID_LENGTH} characters, got {value!r}")
    surrogate = _lone_surrogate(value)
    if surrogate is not None:
        raise ValidationError(f"{name} {value!r:.80} {surrogate}")
    return value


def validate_name(name: str, value: object) -> str:
    """A task name or worker name: a str of at most :data:`MAX_NAME_LENGTH` characters
    (empty allowed: it names nobody, as None does), in valid Unicode text."""
    if not isinstance(value, str) or len(value) > MAX_NAME_LENGTH:
        raise ValidationError(
            f"{name} must be a str of at most {MAX_NAME_LENGTH} characters, got "
            f"{type(value).__name__} {value!r:.80}"
            + (f" ({len(value)} characters)" if isinstance(value, str) else ""))
    surrogate = _lone_surrogate(value)
    if surrogate is not None:
        raise ValidationError(f"{name} {value!r:.80} {surrogate}")
    return value


def from_json(text: str, what: str, task_id: str) -> Any:
    """The value of a task's stored JSON ``text`` (its result, args or kwargs: ``what``);
    :class:`CorruptResult` if it is not JSON Python can read back. resultlog's emitters
    write only such text, but another producer's record may hold any string, or JSON
    nested deeper, or with longer integers, than Python reads (a RecursionError, and a
    ValueError past 4,300 digits)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptResult(
            f"the {what} of task {task_id!r} is not JSON text Python can read "
            f"({type(exc).__name__}: {exc}); it was written by a producer other than "
            f"resultlog's emitters: {text!r:.120}") from None


# Built once: json.dumps() with non-default options builds a new encoder per call, which
# costs more than encoding a small value. It holds no state between calls (the circular
# reference check's memo is made per call), so threads share it.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def to_json(value: Any, what: str = "value") -> str:
    """``value`` as compact JSON; :class:`ResultNotSerializable` names what failed."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ResultNotSerializable(
            f"the task's {what} cannot be encoded as JSON ({exc}); return plain JSON "
            "types (dict, list, str, int, float, bool, None) or convert it first"
        ) from None
