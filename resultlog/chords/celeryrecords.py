"""Celery's chord protocol as records: what a Celery app's result backend is told about a
chord, written to the log keyed by the chord's id (Celery's group id of the header).

One kind of record per call Celery makes (docs/celery.md, "Chords"): ``apply_chord``,
a :data:`START` (a frozen chord applied again is a new run of the same group id, begun
at its start record); ``set_chord_size``, a :data:`SIZE` (just before the last header
task is sent: members may finish before it); ``add_to_chord``, an :data:`ADD`; and
``on_chord_part_return``, a :data:`PART` with the member's task id, ``group_index``,
outcome and the body's signature (``request.chord``), so the aggregator can fire the
body with nothing else. A member is its task id and index together, as in Celery's
Redis backend (a task added by ``add_to_chord`` shares the index of the one that added it).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from resultlog.errors import ValidationError
from resultlog.chords.records import exception_fields, exception_info, validate_size
from resultlog.schemas.codec import CELERY_CHORD, Codec
from resultlog.schemas.event import ExceptionInfo, now_ms, validate_id
from resultlog.schemas.states import State

START: Final = "start"
SIZE: Final = "size"
ADD: Final = "add"
PART: Final = "part"
KINDS: Final = frozenset({START, SIZE, ADD, PART})
PART_STATES: Final = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})


@dataclass(frozen=True, slots=True)
class CeleryChordRecord:
    """One step of Celery's chord protocol for chord ``chord_id``."""

    #: The record's schema in the events topic.
    SCHEMA: ClassVar[str] = CELERY_CHORD

    event_id: str
    chord_id: str
    timestamp: int
    kind: str
    size: int | None = None
    task_id: str | None = None
    index: int | None = None
    state: State | None = None
    result: str | None = None  # JSON text
    exception: ExceptionInfo | None = None
    body: str | None = None  # JSON text of the body's signature

    def __post_init__(self) -> None:
        validate_id("chord_id", self.chord_id)
        if self.kind not in KINDS:
            raise ValidationError(f"a Celery chord record's kind is one of {sorted(KINDS)}, not {self.kind!r}")
        if self.kind in (SIZE, ADD):
            validate_size(self.size)
        elif self.kind == PART:
            validate_id("task_id", self.task_id)
            if self.state not in PART_STATES:
                raise ValidationError(f"a chord part's state is SUCCESS, FAILURE or REVOKED, not {self.state!r}")
            if self.index is not None and (isinstance(self.index, bool) or not isinstance(self.index, int)):
                raise ValidationError(f"a chord part's index is an int or None, not {self.index!r}")

    @classmethod
    def started(cls, chord_id: str) -> CeleryChordRecord:
        return cls(uuid.uuid4().hex, chord_id, now_ms(), START)

    @classmethod
    def sized(cls, chord_id: str, size: int) -> CeleryChordRecord:
        return cls(uuid.uuid4().hex, chord_id, now_ms(), SIZE, size=size)

    @classmethod
    def added(cls, chord_id: str) -> CeleryChordRecord:
        """One task added to the chord (Celery's ``add_to_chord`` adds one at a time;
        the fold counts each add record once)."""
        return cls(uuid.uuid4().hex, chord_id, now_ms(), ADD, size=1)

    @classmethod
    def part(cls, chord_id: str, task_id: str, index: int | None, state: State, *,
             result: str | None = None, exception: ExceptionInfo | None = None,
             body: str | None = None) -> CeleryChordRecord:
        return cls(uuid.uuid4().hex, chord_id, now_ms(), PART, task_id=task_id, index=index,
                   state=state, result=result, exception=exception, body=body)

    def to_record(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "chord_id": self.chord_id, "timestamp": self.timestamp,
            "kind": self.kind, "size": self.size, "task_id": self.task_id, "index": self.index,
            "state": None if self.state is None else self.state.value, "result": self.result,
            **exception_fields(self.exception), "body": self.body,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CeleryChordRecord:
        exc = exception_info(record.get("exc_type"), record.get("exc_module"),
                             record.get("exc_message"))
        state = record.get("state")
        return cls(
            event_id=record["event_id"], chord_id=record["chord_id"], timestamp=record["timestamp"],
            kind=record["kind"], size=record.get("size"), task_id=record.get("task_id"),
            index=record.get("index"), state=None if state is None else State.parse(state),
            result=record.get("result"), exception=exc, body=record.get("body"),
        )

    def encode(self, codec: Codec) -> bytes:
        return codec.encode_record(CELERY_CHORD, self.to_record())
