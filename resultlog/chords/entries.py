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
- what still cannot fit (a fixed field that large) is recorded as the member failing
  with ``EventTooLarge``, saying so: the chord fails naming it, rather than never
  completing.

A SUCCESS member's result is spliced, as text, into its chord's results list (``"["`` +
the members' texts joined by ``","`` + ``"]"``), so it must be exactly one JSON value.
resultlog's emitters write only that, but another producer's record may hold any text:
``1,2`` made a chord of 2 members return 3 values, and a text that is not JSON (or two
halves that only together are) made the chord's results unreadable. Such a member is
recorded as failing with ``ResultNotSerializable``, which the chord's failure names.
A valid JSON result takes at most 3 times its bytes in an entry (``"`` and ``\\`` 2,
``é`` 6 for 2), within the record limit: only a text no JSON writer made (control
characters left raw) could not fit, and it is not JSON.

Both decisions depend only on the entry and the limit (and on Python's limit on an
integer's digits, the same in every process unless ``PYTHONINTMAXSTRDIGITS`` changes
it), so replay makes the same ones.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from itertools import accumulate
from typing import Any, Final

from resultlog.chords.changelog import encode_value
from resultlog.chords.records import exception_fields
from resultlog.errors import ValidationError
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

#: The deepest a member's result may nest. Python's json reads nesting as deep as the
#: stack it is called on leaves room for (some 990 levels from an empty stack, fewer
#: from a deep one), so whether json.loads reads a deeply nested text depends on where
#: it is called: a fixed bound, checked on the text, makes the live fold and a replay
#: decide the same, and leaves a reader of the chord's results (one level deeper) room.
MAX_RESULT_DEPTH: Final = 500

# A JSON string (its escapes included), and every byte but a bracket's: what is left of
# a text without both is its brackets, in order (bytes.translate: far faster than a
# regular expression on a text of many short runs, such as [[],[],...]).
_STRING: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET: Final = bytes(range(256)).translate(None, b"[]{}")
_BRACKET_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def member_entry(state: State, task_id: str, result: str | None, exception: ExceptionInfo | None,
                 timestamp: int, *extra: Any, max_bytes: int) -> list[Any]:
    """The member's entry (``extra`` last), fitted within ``max_bytes`` encoded bytes
    as the module docstring says; unchanged when it fits. A SUCCESS whose result is not
    exactly one JSON value is recorded as failing with ``ResultNotSerializable``."""
    if state is State.SUCCESS and result is not None:
        why = _not_one_json_value(result)
        if why is not None:
            log.warning("chord member %s: its result is not JSON text (%s); recorded as "
                        "failing with ResultNotSerializable", task_id, why)
            not_json = ExceptionInfo(
                "ResultNotSerializable", "resultlog.errors",
                f"the result of task {task_id} is not JSON text ({why}); a producer other "
                f"than resultlog's emitters wrote it: {result!r:.120}")
            return member_entry(State.FAILURE, task_id, None, not_json, timestamp, *extra,
                                max_bytes=max_bytes)
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
    failed, too_large = failing_too_large(
        state, task_id, f"{size} bytes in the chord aggregator's state, over its {max_bytes}-byte "
        "limit (RESULTLOG_MAX_EVENT_BYTES), and cannot be cut to fit")
    return _entry(failed, task_id, None, too_large, timestamp, extra)


def failing_too_large(state: State, task_id: str, takes: str) -> tuple[State, ExceptionInfo]:
    """How a chord member whose outcome is too large for the chord's path is recorded:
    as failing (a SUCCESS; a FAILURE or REVOKED stays what it was) with ``EventTooLarge``,
    whose message says the outcome "takes ``takes``", so that its chord fails naming it
    rather than never completing. The member's own view and history keep it whole."""
    return (State.FAILURE if state is State.SUCCESS else state,
            ExceptionInfo("EventTooLarge", "resultlog.errors",
                          f"the {state.value} outcome of task {task_id} takes {takes}"))


def check_fits(what: str, chord_id: str, value: Any, texts: tuple[str | None, ...],
               max_bytes: int) -> None:
    """ValidationError unless ``value`` (a chord's summary or body, holding ``texts``)
    fits within ``max_bytes`` encoded bytes; call it before writing anything of the record.

    Unlike a member's entry, a declaration's callback kwargs or a Celery chord's body
    cannot be cut: the callback needs them whole. Written as resultlog's writers write
    them (JSON text, at most 3 bytes an event byte once escaped) they fit; another
    producer's text with control characters left raw can take 6, and a value the
    changelog refuses would be retried for ever, stopping every chord of the processor.
    So such a record is refused, and the aggregator sends it to its dead letters."""
    if _FIXED_BYTES + _ESCAPED_PER_CHAR * sum(len(t) for t in texts if t) <= max_bytes:
        return  # nearly every value: far within the limit, not worth encoding
    size = len(encode_value(value))
    if size > max_bytes:
        raise ValidationError(
            f"chord {chord_id}: its {what} takes {size} bytes in the chord aggregator's state, "
            f"over its {max_bytes}-byte limit (RESULTLOG_MAX_EVENT_BYTES); write it as JSON "
            "text (resultlog's writers do), whose escapes fit")


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


def _not_one_json_value(text: str) -> str | None:
    """Why ``text`` is not exactly one JSON value Python's json reads back; None if it is.

    Read once (a chord member, not every event, pays for it) and never re-encoded: the
    text is kept as its producer wrote it. Python's json refuses what RFC 8259 does
    (two values, a raw control character in a string...) and integers of more digits
    than ``sys.get_int_max_str_digits()`` (4,300 by default); it reads ``NaN`` and
    ``Infinity``, as the member's own task view does. Nesting is bounded first, on the
    text: json.loads then never runs out of stack."""
    if _nests_deeper_than(text, MAX_RESULT_DEPTH):
        return f"nested deeper than {MAX_RESULT_DEPTH} levels"
    try:
        json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _nests_deeper_than(text: str, limit: int) -> bool:
    """Whether ``text``'s brackets outside strings nest deeper than ``limit`` (on the
    text alone, whatever the stack: see :data:`MAX_RESULT_DEPTH`)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # most results: they cannot nest deeper than they have brackets
    # Outside strings a JSON text is ASCII: what is not (in a text that is not JSON) is
    # no bracket, and dropping it changes no depth.
    brackets = _STRING.sub("", text).encode("ascii", "ignore").translate(None, _NOT_BRACKET)
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit
