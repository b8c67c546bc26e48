"""A task event as the rows the views store: the history row and the Redis view row.

The two layouts are declared once, here, by name: :data:`HISTORY_COLUMNS` and
:data:`WINNER_HASH_FIELDS` with ``fold.STICKY_FIELDS``. Rows are built from a
:class:`TaskEvent` (:func:`history_row`, :func:`view_row`), or straight from a record's
bytes (:func:`read_rows`, through the reader ``schemas/taskcodec.py`` generates), which
returns None for anything but a well-formed, valid record of the version this package
reads, so the caller takes the first route (``tests/unit/test_taskrows.py`` checks the
two agree). Every string is stored through :func:`to_pg_text`, the reversible escape
of U+0000 that PostgreSQL text cannot hold (docs/history.md); the bytes route declines
such strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from json.encoder import encode_basestring as _json_str  # C-accelerated
from operator import attrgetter, itemgetter
from typing import Any, Final

from resultlog.errors import ValidationError
from resultlog.schemas import taskcodec
from resultlog.schemas.codec import HEADER_SIZE, TASK_EVENT, default_store
from resultlog.schemas.event import MAX_ID_LENGTH, MAX_NAME_LENGTH, TaskEvent, meta_text
from resultlog.schemas.fold import STICKY_FIELDS
from resultlog.schemas.states import LATEST_DATETIME_MS, MAX_ATTEMPT, MAX_TIMESTAMP_MS, RANK, State

_INT32 = 2**31
_INT64 = 2**63
_HEX = "0123456789abcdef"

_SCHEMA = default_store().latest(TASK_EVENT)
_TYPES = {f["name"]: f["type"] for f in _SCHEMA.parsed["fields"]}
#: The TaskEvent fields, in the schema's order.
FIELDS: Final = tuple(_TYPES)
# States by their index in the schema's enum (what the bytes route reads), then the
# fold's own FORGOTTEN (its own record type: only the event route meets it).
# Per-index tables: an Enum's hash and value are Python-level, too slow per event.
_STATES = (*(State(s) for s in _TYPES["state"]["symbols"]), State.FORGOTTEN)
_STATE_INDEX = {state: i for i, state in enumerate(_STATES)}
_STATE_TEXT = tuple(s.value for s in _STATES)
_STATE_RANK = tuple(str(RANK[s]) for s in _STATES)
_STATE_READY = tuple(s.ready for s in _STATES)
# What a row can hold besides the event's own fields.
_DERIVED = ("state_name", "token", "offset", "partition", "topic",
            "exc_type", "exc_module", "exc_message", "meta_json", "meta_text")
_AT = {name: i for i, name in enumerate(FIELDS + _DERIVED)}

#: The history staging columns, in the order of a history row: (column, PostgreSQL
#: type, what it holds). The staging table is a TEMP table: each connection has its
#: own, emptied at every commit.
HISTORY_LAYOUT: Final = (
    ("event_id", "uuid", "event_id"), ("ts_ms", "bigint", "timestamp"),
    ("runtime", "double precision", "runtime"), ("eta_ms", "bigint", "eta"),
    ("kafka_offset", "bigint", "offset"), ("attempt", "integer", "attempt"),
    ("chord_size", "integer", "chord_size"), ("chord_index", "integer", "chord_index"),
    ("kafka_partition", "integer", "partition"), ("task_id", "text", "task_id"),
    ("state", "text", "state_name"), ("token", "text", "token"),
    ("task_name", "text", "task_name"), ("worker", "text", "worker"),
    ("args", "text", "args"), ("kwargs", "text", "kwargs"), ("result", "text", "result"),
    ("exception_type", "text", "exc_type"), ("exception_module", "text", "exc_module"),
    ("exception_message", "text", "exc_message"), ("traceback", "text", "traceback"),
    ("parent_id", "text", "parent_id"), ("root_id", "text", "root_id"),
    ("group_id", "text", "group_id"), ("chord_id", "text", "chord_id"),
    ("meta", "jsonb", "meta_json"), ("kafka_topic", "text", "topic"),
    ("result_ttl_ms", "bigint", "result_ttl_ms"),
)
#: (column, PostgreSQL type) of the history staging table, in row order.
HISTORY_COLUMNS: Final = tuple((column, kind) for column, kind, _ in HISTORY_LAYOUT)
#: Where a history row holds the task state (the metrics count it).
STATE_COLUMN: Final = [column for column, _ in HISTORY_COLUMNS].index("state")
_HISTORY = itemgetter(*[_AT[source] for _, _, source in HISTORY_LAYOUT])

#: The view hash's winner fields (the layout is documented in fold.lua's header; the
#: script takes the field names as arguments, so these are the single source).
WINNER_HASH_FIELDS: Final = (
    "state", "event_id", "timestamp", "attempt", "worker", "result",
    "exc_type", "exc_module", "exc_message", "traceback", "runtime", "eta",
)
# A view row: token, expire_at, mask, the four winner fields every event has, then the
# optional ones (winner, then sticky), present ones only.
_VIEW_SOURCES = [{"meta": "meta_text"}.get(name, name)
                 for name in WINNER_HASH_FIELDS[4:] + STICKY_FIELDS]
_VIEW_OPTIONAL = itemgetter(*[_AT[source] for source in _VIEW_SOURCES])


def _view_text(avro_type: Any) -> Any:
    """How the view stores a value of ``avro_type`` as text (repr: the shortest exact
    round trip of a float); None: it is text already."""
    kind = avro_type[1] if isinstance(avro_type, list) else avro_type
    return {"double": repr, "int": str, "long": str}.get(kind) if isinstance(kind, str) else None


# Optional view values that are not text in the event: (position, to text).
_VIEW_CONVERT = tuple((i, _view_text(_TYPES[source])) for i, source in enumerate(_VIEW_SOURCES)
                      if source in _TYPES and _view_text(_TYPES[source]) is not None)
# Those values, read at once; usually all absent.
_VIEW_TO_CONVERT = itemgetter(*[_AT[_VIEW_SOURCES[i]] for i, _ in _VIEW_CONVERT])
_NONE_TO_CONVERT = _VIEW_TO_CONVERT([None] * len(_AT))

_EVENT_ID, _TASK_ID, _STATE, _TIMESTAMP, _ATTEMPT, _EXCEPTION, _META, _CHORD_ID, _TTL = (
    _AT[n] for n in ("event_id", "task_id", "state", "timestamp", "attempt", "exception",
                     "meta", "chord_id", "result_ttl_ms"))
_IDS = tuple(_AT[n] for n in ("parent_id", "root_id", "group_id"))
_NAMES = tuple(_AT[n] for n in ("task_name", "worker"))
_CHORD_SIZE, _CHORD_INDEX = _AT["chord_size"], _AT["chord_index"]
_TOKEN, _STATE_NAME = _AT["token"], _AT["state_name"]
_values = attrgetter(*FIELDS)
_read_values = taskcodec.make_reader(_SCHEMA.parsed, clean=True, to_event=False)
_FRAME = _SCHEMA.header


def to_pg_text(s: str) -> str:
    """``s`` storable as PostgreSQL text: U+0001 -> U+0001 U+0001, U+0000 -> U+0001 '0'.

    Injective, and the identity on strings without U+0000 and U+0001 (every realistic
    one), so rows and lookups keep the original text.
    """
    return s.replace("\x01", "\x01\x01").replace("\x00", "\x010")


_UNESCAPE_RE = re.compile("\x01(.)", re.DOTALL)


def from_pg_text(s: str) -> str:
    """The original of :func:`to_pg_text`'s ``s``."""
    if "\x01" not in s:
        return s
    return _UNESCAPE_RE.sub(lambda m: "\x00" if m[1] == "0" else m[1], s)


def optional_from_pg_text(s: str | None) -> str | None:
    """:func:`from_pg_text` of a nullable column (None stays None)."""
    return None if s is None else from_pg_text(s)


def meta_json(meta: Mapping[str, str]) -> str | None:
    """The history's jsonb text of a meta map (None when empty)."""
    # By hand: json.dumps() with options builds an encoder per call, 7x slower.
    if not meta:
        return None
    return "{" + ",".join([
        _json_str(to_pg_text(k)) + ":" + _json_str(to_pg_text(v)) for k, v in meta.items()
    ]) + "}"


def _extended(ext: list[Any], token: str, topic: str | None, partition: int | None,
              offset: int | None) -> list[Any]:
    """``ext``, the event's field values (the state as its index in ``_STATES``), with
    the derived ones (``_DERIVED`` order) appended."""
    exc = ext[_EXCEPTION]
    meta = ext[_META]
    ext += (_STATE_TEXT[ext[_STATE]], token, offset, partition, topic)
    if exc is None:
        ext += (None, None, None)
    else:
        ext += (exc.type, exc.module, exc.message)
    if meta:
        ext += (meta_json(meta), meta_text(meta))
    else:
        ext += (None, None)
    return ext


def _view_row(ext: list[Any], ttl_ms: int) -> list[Any]:
    """``ttl_ms``: the folding process's result TTL, for an event that carries none."""
    own_ttl = ext[_TTL]
    if own_ttl is not None:
        ttl_ms = own_ttl
    optional = _VIEW_OPTIONAL(ext)
    if _VIEW_TO_CONVERT(ext) != _NONE_TO_CONVERT:
        optional = list(optional)
        for i, to_text in _VIEW_CONVERT:
            v = optional[i]
            if v is not None:
                optional[i] = to_text(v)
    mask = "1111" + "".join(["0" if v is None else "1" for v in optional])
    timestamp = ext[_TIMESTAMP]
    # Exact integer arithmetic here: Lua numbers are doubles. (schemas/fold.py's
    # expire_at, on rows.)
    row = [ext[_TOKEN], str(timestamp + ttl_ms) if ttl_ms else "", mask, ext[_STATE_NAME],
           ext[_EVENT_ID], str(timestamp), str(ext[_ATTEMPT])]
    row += [v for v in optional if v is not None]
    return row


def _event_values(event: TaskEvent) -> list[Any]:
    values = list(_values(event))
    values[_STATE] = _STATE_INDEX[event.state]
    return values


def history_row(event: TaskEvent, topic: str, partition: int, offset: int) -> tuple[Any, ...]:
    """The row the history stores for ``event`` read at ``topic``/``partition``/
    ``offset``, in :data:`HISTORY_COLUMNS` order, strings escaped by :func:`to_pg_text`."""
    _check_ranges(event, partition, offset)
    row = _HISTORY(_extended(_event_values(event), event.token, topic, partition, offset))
    return tuple([to_pg_text(v) if type(v) is str else v for v in row])


def view_row(event: TaskEvent, ttl_ms: int) -> list[Any]:
    """``event`` as one row of ``fold.lua``'s batch: ``[token, expire_at, mask,
    *values]``, values in hash-field order (winner fields, then sticky ones) with the
    absent ones left out and marked "0" in the mask."""
    return _view_row(_extended(_event_values(event), event.token, None, None, None), ttl_ms)


def _check_ranges(e: TaskEvent, partition: int, offset: int) -> None:
    """Integers the columns cannot hold. The Avro types are the column types, but the
    reader does not bound them; this stops such an event before it fails a batch."""
    bad = None
    if not 0 <= partition < _INT32 or not 0 <= offset < _INT64:
        bad = f"partition {partition} / offset {offset}"
    elif e.eta is not None and not -_INT64 <= e.eta < _INT64:
        bad = f"eta {e.eta}"
    elif e.chord_size is not None and not -_INT32 <= e.chord_size < _INT32:
        bad = f"chord_size {e.chord_size}"
    elif e.chord_index is not None and not -_INT32 <= e.chord_index < _INT32:
        bad = f"chord_index {e.chord_index}"
    if bad is not None:
        raise ValidationError(f"event {e.event_id} of task {e.task_id!r}: {bad} out of range")


Rows = tuple[tuple[Any, ...], str, list[Any], int, "str | None", bool]


def read_rows(data: bytes, topic: str, partition: int, offset: int, ttl_ms: int) -> Rows | None:
    """``(history row, task id, view row, timestamp, chord id, ready)`` for a valid
    record of the TaskEvent version read here, else None. The rows are what
    :func:`history_row` and :func:`view_row` build from the decoded event."""
    if data[:HEADER_SIZE] != _FRAME:
        return None
    try:
        values = _read_values(data, HEADER_SIZE)
    except (taskcodec.Declined, IndexError, UnicodeDecodeError):
        return None
    # What the event model checks, on the field values (the reader bounded the ints).
    event_id, task_id = values[_EVENT_ID], values[_TASK_ID]
    if (len(event_id) != 32 or event_id.strip(_HEX)
            or not task_id or len(task_id) > MAX_ID_LENGTH or task_id.isspace()
            or not 0 <= values[_TIMESTAMP] <= LATEST_DATETIME_MS
            or not 0 <= values[_ATTEMPT] <= MAX_ATTEMPT or not _valid_tail(values)
            or not (values[_TTL] is None or 0 <= values[_TTL] <= MAX_TIMESTAMP_MS)):
        return None
    state = values[_STATE]
    # states.order_token's format (never FORGOTTEN here); the tests hold them equal.
    token = f"{values[_ATTEMPT]:05d}{_STATE_RANK[state]}{values[_TIMESTAMP]:015d}{event_id}"
    ext = _extended(values, token, topic, partition, offset)
    return (_HISTORY(ext), task_id, _view_row(ext, ttl_ms), ext[_TIMESTAMP],
            ext[_CHORD_ID], _STATE_READY[state])


def _valid_tail(v: list[Any]) -> bool:
    """The lineage and chord ids, and the names, as the event model checks them."""
    for i in _IDS:
        value = v[i]
        if value is not None and (not value or len(value) > MAX_ID_LENGTH):
            return False
    for i in _NAMES:
        value = v[i]
        if value is not None and len(value) > MAX_NAME_LENGTH:
            return False
    chord_id = v[_CHORD_ID]
    if chord_id is not None:
        size, index = v[_CHORD_SIZE], v[_CHORD_INDEX]
        if (not chord_id or len(chord_id) > MAX_ID_LENGTH or size is None or index is None
                or not 0 <= index < size):
            return False
    return True
