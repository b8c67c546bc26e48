"""Task states and their precedence, defined once.

The latest state of a task is the maximum of its events under :func:`order_key`:
``(attempt, state rank, timestamp, event_id)``. A maximum is commutative, associative
and idempotent, so duplicated or reordered delivery can never move a view backwards,
and any replay order folds to the same answer.

Why this order:
- ``attempt`` first: a retried task's new attempt supersedes everything its earlier
  attempts said, even a late-arriving RETRY or FAILURE of attempt 0.
- Within one attempt the lifecycle only moves forward: RECEIVED < STARTED < RETRY
  (this attempt ended and another is coming) < FAILURE < SUCCESS < REVOKED. REVOKED
  ranks highest because a revocation is the user's last word on the task.
- FORGOTTEN ranks above everything and, whatever the event says, counts as the last
  possible attempt: forgetting is the user's word on every attempt so far, and a
  late event (a re-fold, a replay, a redelivered SUCCESS) must not bring the result
  back. The price: a task id reused after its forget stays forgotten.
- ``timestamp`` then ``event_id`` break ties deterministically, e.g. two STARTED
  events of the same attempt sent by a redelivered message.

:func:`order_token` renders the same key as a fixed-width ASCII string whose byte
order equals the tuple order; Redis (Lua string comparison) and Postgres compare that.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from resultlog.errors import UnknownState


class State(str, Enum):
    """The states an event can carry. PENDING is never emitted (see :data:`PENDING`)."""

    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    FAILURE = "FAILURE"
    SUCCESS = "SUCCESS"
    REVOKED = "REVOKED"
    #: The result was forgotten (``forget()``). Carried by its own record type
    #: (``TaskForgotten``), not by the TaskEvent enum, and never ready: readers see a
    #: forgotten task as unknown.
    FORGOTTEN = "FORGOTTEN"

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        return RANK[self]

    @property
    def ready(self) -> bool:
        return self in READY_STATES

    @classmethod
    def parse(cls, value: object) -> State:
        """The state named by ``value`` (a :class:`State` or its name)."""
        if isinstance(value, State):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        known = ", ".join(s.value for s in cls)
        raise UnknownState(f"unknown state {value!r}; expected one of {known}")


#: What a task nobody has heard of reads as (Celery's convention).
PENDING: Final = "PENDING"

RANK: Final[dict[State, int]] = {
    State.RECEIVED: 1,
    State.STARTED: 2,
    State.RETRY: 3,
    State.FAILURE: 4,
    State.SUCCESS: 5,
    State.REVOKED: 6,
    State.FORGOTTEN: 7,
}

READY_STATES: Final = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})
#: The states a TaskEvent record carries (a forget has a record type of its own).
RECORD_STATES: Final = tuple(s for s in State if s is not State.FORGOTTEN)

# Bounds that keep order_token fixed-width (and so byte-comparable); MAX_TIMESTAMP_MS
# also bounds a duration in ms (a result TTL).
MAX_ATTEMPT: Final = 99_999
MAX_TIMESTAMP_MS: Final = 10**15 - 1
#: The last millisecond a datetime holds, 9999-12-31T23:59:59.999Z: the latest time an
#: event, an eta or a heartbeat may carry, and a command or the dashboard takes from a
#: user (a replay's start, an analytics window). Events took up to MAX_TIMESTAMP_MS
#: (year 33658) until 30 Nov 2026, which every reader of a time failed on: Python's
#: datetime, and asyncpg reading PostgreSQL's timestamps, end with year 9999.
LATEST_DATETIME_MS: Final = 253_402_300_799_999

OrderKey = tuple[int, int, int, str]


def order_key(attempt: int, state: State, timestamp_ms: int, event_id: str) -> OrderKey:
    if state is State.FORGOTTEN:
        attempt = MAX_ATTEMPT
    return (attempt, RANK[state], timestamp_ms, event_id)


def order_token(attempt: int, state: State, timestamp_ms: int, event_id: str) -> str:
    """``order_key`` as a string: 5-digit attempt, rank digit, 15-digit ms, event id."""
    return "%05d%d%015d%s" % order_key(attempt, state, timestamp_ms, event_id)
