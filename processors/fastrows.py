"""Kafka record bytes -> the history row and the view row, in one pass.

Why this exists: the write path's canonical route is bytes -> :class:`TaskEvent`
(``schemas/fastread.py``, with validation) -> ``history.history_row`` and
``redis_view.view_row``. That route costs ~20 us of Python per event, which is most of
what replay spends (the issue's target, 50,000 events/s on two cores shared with
Redis and PostgreSQL, leaves ~10). This module reads a TaskEvent v2 body straight
into the two rows, with no event object in between.

It is not a second source of truth. It handles exactly the records whose writer
schema is TaskEvent v2 and that are well-formed and valid; for anything else it
returns ``None`` and the caller takes the canonical route, which then raises the
proper error (a dead letter) or decodes the record the generic way.
``tests/unit/test_fastrows.py`` checks, on generated events and on corrupted bytes,
that this module returns exactly what the canonical route returns, or ``None``.
"""

from __future__ import annotations

import struct
from typing import Any

from resultlog.schemas.codec import HEADER_SIZE, MAGIC, TASK_EVENT, default_store
from resultlog.schemas.event import MAX_ID_LENGTH, meta_text
from resultlog.schemas.fastread import read_long as _varint
from resultlog.schemas.states import MAX_ATTEMPT, MAX_TIMESTAMP_MS, RANK, State
from resultlog.views.history import meta_json
from resultlog.views.redis_view import view_value

#: The framing header of a TaskEvent v2 record (magic + writer fingerprint).
V2_HEADER = MAGIC + default_store().get(TASK_EVENT, 2).fingerprint
_STATES = (State.RECEIVED, State.STARTED, State.RETRY, State.SUCCESS, State.FAILURE, State.REVOKED)
# Per enum index: state name, rank digit, ready.
_STATE_NAME = tuple(s.value for s in _STATES)
_STATE_RANK = tuple(str(RANK[s]) for s in _STATES)
_STATE_READY = tuple(s.ready for s in _STATES)
_HEX = "0123456789abcdef"
_INT32 = 2**31
_INT64 = 2**63
_unpack_double = struct.Struct("<d").unpack_from
# Seven null union branches (parent_id .. eta) and an empty meta map.
_NO_TAIL = bytes(8)


class _Decline(Exception):
    """Not for the fast route: the canonical one decides what the record is."""


def _string(data: bytes, pos: int) -> tuple[str, int]:
    b = data[pos]
    if b < 0x80:
        n = b >> 1
        if b & 1:
            raise _Decline
        pos += 1
    else:
        n, pos = _varint(data, pos)
        if n < 0:
            raise _Decline
    end = pos + n
    if end > len(data):
        raise _Decline
    s = data[pos:end].decode()
    if "\x00" in s or "\x01" in s:
        raise _Decline  # stored escaped (history.to_pg_text): the canonical route does it
    return s, end


def _opt_string(data: bytes, pos: int) -> tuple[str | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise _Decline
    return _string(data, pos + 1)


def _opt_long(data: bytes, pos: int) -> tuple[int | None, int]:
    branch = data[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise _Decline
    return _varint(data, pos + 1)


def _check_id(value: str | None) -> None:
    if value is not None and (not value or len(value) > MAX_ID_LENGTH):
        raise _Decline


Rows = tuple[tuple[Any, ...], str, list[Any], int, "str | None", bool]


def read_rows(data: bytes, topic: str, partition: int, offset: int, ttl_ms: int) -> Rows | None:
    """``(history row, task id, view row, timestamp, chord id, ready)`` for a valid
    TaskEvent v2 record, else None. The rows are what ``history.history_row`` and
    ``redis_view.view_row`` build from the decoded event."""
    if data[:HEADER_SIZE] != V2_HEADER:
        return None
    try:
        return _read(data, topic, partition, offset, ttl_ms)
    except (_Decline, IndexError, UnicodeDecodeError):
        return None


def _read(data: bytes, topic: str, partition: int, offset: int, ttl_ms: int) -> Rows:
    pos = HEADER_SIZE
    event_id, pos = _string(data, pos)
    if len(event_id) != 32 or event_id.strip(_HEX):
        raise _Decline
    task_id, pos = _string(data, pos)
    if not task_id or len(task_id) > MAX_ID_LENGTH or task_id.isspace():
        raise _Decline
    state_index, pos = _varint(data, pos)
    if not 0 <= state_index < 6:
        raise _Decline
    timestamp, pos = _varint(data, pos)
    if not 0 <= timestamp <= MAX_TIMESTAMP_MS:
        raise _Decline
    task_name, pos = _opt_string(data, pos)
    worker, pos = _opt_string(data, pos)
    attempt, pos = _varint(data, pos)
    if not 0 <= attempt <= MAX_ATTEMPT:
        raise _Decline
    args, pos = _opt_string(data, pos)
    kwargs, pos = _opt_string(data, pos)
    result, pos = _opt_string(data, pos)
    branch = data[pos]
    pos += 1
    exc_type = exc_module = exc_message = None
    if branch == 2:
        exc_type, pos = _string(data, pos)
        exc_module, pos = _string(data, pos)
        exc_message, pos = _string(data, pos)
    elif branch != 0:
        raise _Decline
    traceback, pos = _opt_string(data, pos)
    branch = data[pos]
    pos += 1
    runtime = None
    if branch == 2:
        if pos + 8 > len(data):
            raise _Decline
        (runtime,) = _unpack_double(data, pos)
        pos += 8
    elif branch != 0:
        raise _Decline
    if data[pos:] == _NO_TAIL:  # the usual event: no lineage, chord, eta or meta
        parent_id = root_id = group_id = chord_id = meta = meta_view = None
        chord_size = chord_index = eta = None
    else:
        (parent_id, root_id, group_id, chord_id, chord_size, chord_index, eta, meta,
         meta_view) = _tail(data, pos)
    state = _STATE_NAME[state_index]
    token = f"{attempt:05d}{_STATE_RANK[state_index]}{timestamp:015d}{event_id}"
    history_row = (
        event_id, timestamp, runtime, eta, offset, attempt, chord_size, chord_index,
        partition, task_id, state, token, task_name, worker, args, kwargs, result,
        exc_type, exc_module, exc_message, traceback, parent_id, root_id, group_id,
        chord_id, meta, topic,
    )
    # redis_view.view_row: winner slots, then sticky slots; absent values are left out
    # and marked "0" in the mask.
    optional = (
        worker, result, exc_type, exc_module, exc_message, traceback,
        view_value(runtime), view_value(eta),
        task_name, args, kwargs, parent_id, root_id, group_id, chord_id,
        view_value(chord_size), view_value(chord_index), meta_view,
    )
    mask = "1111" + "".join(["0" if v is None else "1" for v in optional])
    view_row = [token, str(timestamp + ttl_ms) if ttl_ms else "", mask,
                state, event_id, str(timestamp), str(attempt)]
    view_row += [v for v in optional if v is not None]
    return history_row, task_id, view_row, timestamp, chord_id, _STATE_READY[state_index]


def _tail(data: bytes, pos: int) -> tuple[Any, ...]:
    """The fields after runtime, checked as the event model checks them."""
    parent_id, pos = _opt_string(data, pos)
    root_id, pos = _opt_string(data, pos)
    group_id, pos = _opt_string(data, pos)
    chord_id, pos = _opt_string(data, pos)
    chord_size, pos = _opt_long(data, pos)
    chord_index, pos = _opt_long(data, pos)
    eta, pos = _opt_long(data, pos)
    meta = meta_view = None
    if data[pos] == 0:
        pos += 1
    else:
        read, pos = _read_meta(data, pos)
        meta, meta_view = meta_json(read), meta_text(read)
    if pos != len(data):
        raise _Decline
    _check_id(parent_id)
    _check_id(root_id)
    _check_id(group_id)
    if chord_id is not None:
        _check_id(chord_id)
        if chord_size is None or chord_index is None or not 0 <= chord_index < chord_size:
            raise _Decline
    if ((chord_size is not None and not -_INT32 <= chord_size < _INT32)
            or (chord_index is not None and not -_INT32 <= chord_index < _INT32)
            or (eta is not None and not -_INT64 <= eta < _INT64)):
        raise _Decline
    return parent_id, root_id, group_id, chord_id, chord_size, chord_index, eta, meta, meta_view


def _read_meta(data: bytes, pos: int) -> tuple[dict[str, str], int]:
    meta: dict[str, str] = {}
    while True:
        count, pos = _varint(data, pos)
        if count == 0:
            break
        if count < 0:  # a block with its byte size: skip the size, read |count| pairs
            _, pos = _varint(data, pos)
            count = -count
        for _ in range(count):
            key, pos = _string(data, pos)
            meta[key], pos = _string(data, pos)
    return meta, pos
