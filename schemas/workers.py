"""Worker heartbeats: a worker's liveness and counters as a record in the log.

A ``WorkerHeartbeat`` record in the events topic, keyed by the worker's id, sent alike by
every integration (``source`` says which) and folded by the processor into the Redis
workers view and the Postgres ``worker_heartbeats`` table (:mod:`resultlog.views.workers`).
Its ``event_id`` is its idempotency key, and the view keeps per worker the greatest
``(beat_at, event_id)``, so duplicated or reordered delivery never moves a worker back.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from resultlog.errors import CodecError, ValidationError
from resultlog.schemas.codec import WORKER_HEARTBEAT, Codec
from resultlog.schemas.event import MAX_ID_LENGTH, now_ms, validate_id
from resultlog.schemas.states import LATEST_DATETIME_MS

_INT_MAX: Final = 2**31 - 1
_LONG_MAX: Final = 2**63 - 1
_EVENT_ID_LEN: Final = 32


def _check_int(name: str, value: object, top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ValidationError(f"{name} must be an int in 0..{top}, got {value!r}")


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat:
    """One heartbeat of one worker. Build new ones with :meth:`create`."""

    event_id: str
    worker_id: str
    beat_at: int  # ms since the epoch, UTC
    ttl_s: int
    source: str
    hostname: str
    pid: int
    queue: str
    concurrency: int
    tasks_processed: int
    tasks_failed: int
    active_tasks: int
    started_at: int  # ms since the epoch, UTC
    is_running: bool = True
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_id("worker_id", self.worker_id)
        if not isinstance(self.event_id, str) or len(self.event_id) != _EVENT_ID_LEN:
            raise ValidationError(f"event_id {self.event_id!r} must be 32 hex digits")
        if not isinstance(self.source, str) or not self.source:
            raise ValidationError("source must name the integration, e.g. 'chicory'")
        for name in ("hostname", "queue"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > 4 * MAX_ID_LENGTH:
                raise ValidationError(f"{name} must be a str of at most {4 * MAX_ID_LENGTH} characters")
        # ttl_s >= 1: a heartbeat that is dead on arrival is a caller's mistake.
        _check_int("ttl_s", self.ttl_s, _INT_MAX)
        if self.ttl_s < 1:
            raise ValidationError(f"ttl_s must be at least 1 second, got {self.ttl_s}")
        for name in ("pid", "concurrency", "active_tasks"):
            _check_int(name, getattr(self, name), _INT_MAX)
        # Times as an event's: the history stores them as timestamptz, which a long's
        # range overflows (a heartbeat started at 2**63 - 1 ms stopped the processor at
        # every start), and readers as datetimes.
        for name in ("beat_at", "started_at"):
            _check_int(name, getattr(self, name), LATEST_DATETIME_MS)
        for name in ("tasks_processed", "tasks_failed"):
            _check_int(name, getattr(self, name), _LONG_MAX)

    @classmethod
    def create(cls, worker_id: str, *, ttl_s: int, source: str, hostname: str, pid: int,
               queue: str, concurrency: int, started_at: int, tasks_processed: int = 0,
               tasks_failed: int = 0, active_tasks: int = 0, is_running: bool = True,
               beat_at: int | None = None, meta: Mapping[str, str] | None = None,
               ) -> WorkerHeartbeat:
        """A new heartbeat with a fresh id, sent now unless ``beat_at`` says when."""
        return cls(uuid.uuid4().hex, worker_id, now_ms() if beat_at is None else beat_at,
                   ttl_s, source, hostname, pid, queue, concurrency, tasks_processed,
                   tasks_failed, active_tasks, started_at, is_running, dict(meta or {}))

    @property
    def expires_at(self) -> int:
        """Until when (ms since the epoch) the worker counts as alive."""
        return self.beat_at + self.ttl_s * 1000

    @property
    def token(self) -> str:
        """The view's order: a later beat wins; the event id breaks ties."""
        return f"{self.beat_at:020d}{self.event_id}"

    def to_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"meta": dict(self.meta)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> WorkerHeartbeat:
        # Decoded records (defaults filled in) and the workers view's JSON have every field.
        try:
            return cls(**{f.name: record[f.name] for f in fields(cls)})
        except KeyError as exc:
            raise CodecError(f"heartbeat record lacks required field {exc}") from None

    def encode(self, codec: Codec) -> bytes:
        return codec.encode_record(WORKER_HEARTBEAT, self.to_record())

    @classmethod
    def decode(cls, codec: Codec, data: bytes) -> WorkerHeartbeat:
        return cls.from_record(codec.decode_expected(data, WORKER_HEARTBEAT))
