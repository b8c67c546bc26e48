"""A chord member's entry in the aggregator's table, and its fit within one changelog record.

Both kinds of chord keep one entry per member that returned (``m:`` keys in
:mod:`resultlog.chords.fold`, ``p:`` keys in :mod:`resultlog.chords.celeryfold`), a JSON
list laid out as the constants below, which the changelog holds as one record of at
most :func:`~resultlog.chords.changelog.max_value_bytes`. An event within
``max_event_bytes`` can make an entry larger than that: a character below U+0020 in an
exception message is 1 byte in the event and 6 (``\\u0001``) in the entry. A record the
changelog refuses would be retried for ever and stop every chord of the processor, so
the entry is cut to fit instead, as the emitter cuts an oversized FAILURE
(``producers/fitting.py``):

- a failed or revoked member's result goes first: a chord that fails never reads it;
- then the exception message, cut in its middle with the emitter's marker (the
  member's own task view keeps it whole);
- what still cannot fit (a SUCCESS whose result text no JSON writer made, or a
  fixed field that large) is recorded as the member failing with ``EventTooLarge``,
  saying so: the chord fails naming it, rather than never completing.

Cutting depends only on the entry and the limit, so replay makes the same cuts.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Final

from resultlog.chords.changelog import encode_value
from resultlog.chords.records import exception_fields
from resultlog.producers.fitting import marker, truncate_text
from resultlog.schemas.event import ExceptionInfo
from resultlog.schemas.states import State

log = logging.getLogger("resultlog.chords")

#: An entry's fields; a Celery member's entry has its index (or None) last.
STATE, TASK, RESULT, EXC_TYPE, EXC_MODULE, EXC_MESSAGE, TS, INDEX = range(8)

# The most bytes one UTF-8 byte of text takes once written by encode_value: a control
# character's 1 byte becomes 6 (\u0001); every other character takes at most 3 per byte.
_ESCAPED_PER_BYTE: Final = 6
# Characters a field of an entry takes at most once escaped (an astral character: 12),
# and what a list's brackets, commas, numbers and nulls add: the bound below which an
# entry is not measured.
_ESCAPED_PER_CHAR: Final = 12
_FIXED_BYTES: Final = 128


def member_entry(state: State, task_id: str, result: str | None, exception: ExceptionInfo | None,
                 timestamp: int, *extra: Any, max_bytes: int) -> list[Any]:
    """The member's entry (``extra`` last), fitted within ``max_bytes`` encoded bytes
    as the module docstring says; unchanged when it fits."""
    entry = _entry(state, task_id, result, exception, timestamp, extra)
    texts = (task_id, result, *(exception_fields(exception).values()))
    if _FIXED_BYTES + _ESCAPED_PER_CHAR * sum(len(t) for t in texts if t) <= max_bytes:
        return entry  # most entries: far within the limit, not worth encoding twice
    size = len(encode_value(entry))
    if size <= max_bytes:
        return entry
    if state is not State.SUCCESS:
        fitted = _fitted_failure(state, task_id, exception, timestamp, extra, max_bytes)
        if fitted is not None:
            log.warning("chord member %s: its %s entry was %d bytes, over the changelog's "
                        "%d-byte limit; its result dropped and its exception message cut to fit",
                        task_id, state.value, size, max_bytes)
            return fitted
    log.warning("chord member %s: its %s entry is %d bytes, over the changelog's %d-byte "
                "limit, and cannot be cut to fit; recorded as failing with EventTooLarge",
                task_id, state.value, size, max_bytes)
    too_large = ExceptionInfo(
        "EventTooLarge", "resultlog.errors",
        f"the {state.value} outcome of task {task_id} takes {size} bytes in the chord "
        f"aggregator's state, over its {max_bytes}-byte limit (RESULTLOG_MAX_EVENT_BYTES), "
        "and cannot be cut to fit")
    failed = State.FAILURE if state is State.SUCCESS else state
    return _entry(failed, task_id, None, too_large, timestamp, extra)


def _fitted_failure(state: State, task_id: str, exception: ExceptionInfo | None, timestamp: int,
                    extra: tuple[Any, ...], max_bytes: int) -> list[Any] | None:
    """A failed or revoked member's entry without its result (a chord that fails reads
    none), its exception message cut if need be; None if that is not enough."""
    entry = _entry(state, task_id, None, exception, timestamp, extra)
    if len(encode_value(entry)) <= max_bytes:
        return entry
    if exception is None:
        return None
    rest = len(encode_value(_entry(state, task_id, None, replace(exception, message=""), timestamp, extra)))
    # What the cut message may take, escaped, in place of the empty one ("" is 2 bytes).
    room = max_bytes - rest + 2 - len(encode_value(marker(len(exception.message.encode()))))
    if room < 0:
        return None
    cut = replace(exception, message=truncate_text(exception.message, room // _ESCAPED_PER_BYTE))
    entry = _entry(state, task_id, None, cut, timestamp, extra)
    return entry if len(encode_value(entry)) <= max_bytes else None


def _entry(state: State, task_id: str, result: str | None, exception: ExceptionInfo | None,
           timestamp: int, extra: tuple[Any, ...]) -> list[Any]:
    return [state.value, task_id, result, *exception_fields(exception).values(), timestamp, *extra]
