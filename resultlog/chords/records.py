"""Chord records: a chord's declaration and its completion, and what the fold reports.

What a chord is and where each record goes: docs/chords.md. A completion's ``event_id``
is derived from the chord id (:func:`completion_event_id`), not drawn at random: a
completion re-emitted after a processor crash carries the same id, so whoever follows
the completions topic can recognise the repeat.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Final

from resultlog.errors import ChordError, CorruptResult, ValidationError
from resultlog.schemas.codec import CHORD_COMPLETED, CHORD_DECLARED, Codec
from resultlog.schemas.event import ExceptionInfo, now_ms, to_json, validate_id
from resultlog.schemas.states import State

# Avro "int": a chord's size and indexes must fit.
MAX_CHORD_SIZE: Final = 2**31 - 1
# Fixed forever: completion ids of existing chords must never change.
_COMPLETION_NAMESPACE: Final = uuid.UUID("5f0e4a52-6c55-4f3b-9a56-1f3f8d0c6c2e")
_COMPLETED_STATES: Final = frozenset({State.SUCCESS, State.FAILURE})


def completion_event_id(chord_id: str) -> str:
    """The ``event_id`` of ``chord_id``'s completion: the same on every emission."""
    return uuid.uuid5(_COMPLETION_NAMESPACE, chord_id).hex


def decode_results(chord_id: str, text: str) -> list[Any]:
    """A completed chord's stored results (a JSON list in index order) as values.

    The aggregator writes only a list of JSON values it has read (``entries.py``), but a
    completion written before it checked them, or by another writer, may hold any text:
    :class:`CorruptResult` naming the chord, rather than json's own error from deep within
    a reader (a hook, ``ChordResult.get()``)."""
    try:
        values = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the stack
        raise CorruptResult(
            f"chord {chord_id}'s stored results are not JSON text Python can read "
            f"({type(exc).__name__}: {exc}): {text!r:.120}") from None
    if not isinstance(values, list):
        raise CorruptResult(f"chord {chord_id}'s stored results are not a JSON list: {text!r:.120}")
    return values


def validate_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_CHORD_SIZE:
        raise ValidationError(f"chord size must be an int in 0..{MAX_CHORD_SIZE}, got {size!r}")
    return size


def exception_info(exc_type: str | None, module: str | None,
                   message: str | None) -> ExceptionInfo | None:
    """An exception kept as three fields; None without a type."""
    return None if exc_type is None else ExceptionInfo(exc_type, module or "", message or "")


def exception_fields(exc: ExceptionInfo | None) -> dict[str, str | None]:
    """:func:`exception_info`'s inverse: ``exc_type``, ``exc_module``, ``exc_message``."""
    if exc is None:
        return {"exc_type": None, "exc_module": None, "exc_message": None}
    return {"exc_type": exc.type, "exc_module": exc.module, "exc_message": exc.message}


@dataclass(frozen=True, slots=True)
class ChordDeclared:
    """A chord's declaration: how many members, and what to do when they are done."""

    #: The record's schema in the events topic.
    SCHEMA: ClassVar[str] = CHORD_DECLARED

    event_id: str
    chord_id: str
    size: int
    timestamp: int  # ms since the epoch, UTC
    callback: str | None = None  # the callback task's name
    callback_kwargs: str | None = None  # JSON object text
    wait_all: bool = False  # False: fail at the first failed member; True: after all
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_id("chord_id", self.chord_id)
        validate_size(self.size)
        if self.callback is not None and not self.callback:
            raise ValidationError("callback must be a task name or None, not empty")

    @classmethod
    def create(
        cls,
        chord_id: str,
        size: int,
        *,
        callback: str | None = None,
        callback_kwargs: Mapping[str, Any] | None = None,
        wait_all: bool = False,
        meta: Mapping[str, str] | None = None,
        timestamp: int | None = None,
    ) -> ChordDeclared:
        """A new declaration with a fresh id and the current time; kwargs JSON-encoded."""
        return cls(
            event_id=uuid.uuid4().hex,
            chord_id=chord_id,
            size=size,
            timestamp=now_ms() if timestamp is None else timestamp,
            callback=callback,
            callback_kwargs=None if callback_kwargs is None else to_json(dict(callback_kwargs), "callback_kwargs"),
            wait_all=bool(wait_all),
            meta=dict(meta or {}),
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "chord_id": self.chord_id, "size": self.size,
            "timestamp": self.timestamp, "callback": self.callback,
            "callback_kwargs": self.callback_kwargs, "wait_all": self.wait_all,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ChordDeclared:
        return cls(
            event_id=record["event_id"], chord_id=record["chord_id"], size=record["size"],
            timestamp=record["timestamp"], callback=record.get("callback"),
            callback_kwargs=record.get("callback_kwargs"),
            wait_all=bool(record.get("wait_all", False)), meta=record.get("meta") or {},
        )

    def encode(self, codec: Codec) -> bytes:
        return codec.encode_record(CHORD_DECLARED, self.to_record())


@dataclass(frozen=True, slots=True)
class FailedMember:
    """The member that failed a chord, as the completion names it."""

    task_id: str
    index: int
    state: State  # FAILURE or REVOKED
    exception: ExceptionInfo | None = None

    def describe(self) -> str:
        what = "was revoked" if self.state is State.REVOKED else "failed"
        if self.exception is not None:
            what = f"raised {self.exception.type}: {self.exception.message}"
        return f"member {self.index} (task {self.task_id}) {what}"


@dataclass(frozen=True, slots=True)
class ChordCompleted:
    """A chord's outcome: SUCCESS with every member's result, or FAILURE naming a member."""

    event_id: str
    chord_id: str
    state: State  # SUCCESS or FAILURE
    size: int
    done: int
    failed: int
    timestamp: int
    results: str | None = None  # SUCCESS: JSON list text, in index order
    results_omitted: bool = False  # too large for one record: read the Redis view
    failed_member: FailedMember | None = None
    callback: str | None = None
    callback_kwargs: str | None = None

    def __post_init__(self) -> None:
        if self.state not in _COMPLETED_STATES:
            raise ValidationError(f"a chord completes as SUCCESS or FAILURE, not {self.state}")
        if (self.state is State.FAILURE) != (self.failed_member is not None):
            raise ValidationError("a failed chord names its failed member, and only a failed one")

    @property
    def successful(self) -> bool:
        return self.state is State.SUCCESS

    def result_values(self) -> list[Any]:
        """The members' results in index order (SUCCESS with results carried)."""
        if self.results is None:
            raise ValidationError(
                f"chord {self.chord_id} completion carries no results "
                f"({'omitted: too large' if self.results_omitted else self.state.value})")
        return decode_results(self.chord_id, self.results)

    def error_message(self) -> str:
        assert self.failed_member is not None
        return f"chord {self.chord_id} failed: {self.failed_member.describe()}"

    def error(self) -> ChordError:
        return ChordError(self.error_message())

    def without_results(self) -> ChordCompleted:
        return replace(self, results=None, results_omitted=True)

    def to_record(self) -> dict[str, Any]:
        m = self.failed_member
        return {
            "event_id": self.event_id, "chord_id": self.chord_id, "state": self.state.value,
            "size": self.size, "done": self.done, "failed": self.failed,
            "timestamp": self.timestamp, "results": self.results,
            "results_omitted": self.results_omitted,
            "failed_member": None if m is None else {
                "task_id": m.task_id, "index": m.index, "state": m.state.value,
                **exception_fields(m.exception),
            },
            "callback": self.callback, "callback_kwargs": self.callback_kwargs,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ChordCompleted:
        m = record.get("failed_member")
        member = None if m is None else FailedMember(
            m["task_id"], m["index"], State(m["state"]),
            exception_info(m.get("exc_type"), m.get("exc_module"), m.get("exc_message")))
        return cls(
            event_id=record["event_id"], chord_id=record["chord_id"], state=State(record["state"]),
            size=record["size"], done=record["done"], failed=record["failed"],
            timestamp=record["timestamp"], results=record.get("results"),
            results_omitted=bool(record.get("results_omitted", False)), failed_member=member,
            callback=record.get("callback"), callback_kwargs=record.get("callback_kwargs"),
        )

    def encode(self, codec: Codec) -> bytes:
        return codec.encode_record(CHORD_COMPLETED, self.to_record())

    @classmethod
    def decode(cls, codec: Codec, data: bytes) -> ChordCompleted:
        return cls.from_record(codec.decode_expected(data, CHORD_COMPLETED))


@dataclass(frozen=True, slots=True)
class ChordProgress:
    """A chord's counts so far, as the fold reports them to the chord view."""

    size: int
    done: int
    failed: int
    timestamp: int = 0  # ms: the latest member outcome counted (expiry derives from it)


@dataclass(frozen=True, slots=True)
class Step:
    """What the fold made of one record: the chord's counts, and its completion if it completed."""

    chord_id: str
    progress: ChordProgress | None = None
    completion: ChordCompleted | None = None
    #: A Celery chord's body (its signature's JSON), with its completion: to be fired.
    body: str | None = None
    #: The Celery member counted last: the body's parent, as when a worker sends it.
    parent: str | None = None
