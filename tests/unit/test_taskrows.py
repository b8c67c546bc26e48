"""taskrows.read_rows (bytes -> rows) returns exactly what the canonical route builds,
or None. (Moved from test_fastrows.py with the code; same assertions.)

The canonical route: Codec.decode_any -> TaskEvent -> taskrows.history_row and
taskrows.view_row. The fast route must never store anything the canonical one
would not, so on corrupted bytes it must decline wherever the canonical one fails.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from resultlog.errors import CodecError, ValidationError
from resultlog.schemas.codec import TASK_EVENT, Codec
from resultlog.schemas.event import MAX_NAME_LENGTH, ExceptionInfo, TaskEvent
from resultlog.schemas.fold import expire_at, fold
from resultlog.schemas.states import LATEST_DATETIME_MS, MAX_TIMESTAMP_MS, RECORD_STATES, State
from resultlog.schemas.taskrows import history_row, read_rows, view_row
from tests.unit.strategies import task_events

CODEC = Codec()
TASK_HEADER = CODEC.schema_for(TASK_EVENT).header
TTL_MS = 86_400_000
# Any text, including U+0000/U+0001 (which the history escapes), non-ASCII, and
# strings long enough for multi-byte length prefixes.
text = st.text(max_size=80)
opt_text = st.none() | text
ids = st.text(min_size=1, max_size=70).filter(lambda s: not s.isspace())


@st.composite
def wide_events(draw: st.DrawFn) -> TaskEvent:
    """Events with every field drawn from its whole range."""
    chord_size = draw(st.none() | st.integers(1, 2**31 - 1))
    chord = chord_size is not None and draw(st.booleans())
    return TaskEvent(
        event_id=draw(st.uuids()).hex,
        task_id=draw(ids),
        state=draw(st.sampled_from(RECORD_STATES)),
        timestamp=draw(st.integers(0, LATEST_DATETIME_MS)),
        task_name=draw(opt_text),
        worker=draw(opt_text),
        attempt=draw(st.integers(0, 99_999)),
        args=draw(opt_text),
        kwargs=draw(opt_text),
        result=draw(opt_text),
        exception=draw(st.none() | st.builds(ExceptionInfo, text, text, text)),
        traceback=draw(opt_text),
        runtime=draw(st.none() | st.floats(allow_nan=False)),
        parent_id=draw(st.none() | ids),
        root_id=draw(st.none() | ids),
        group_id=draw(st.none() | ids),
        chord_id=draw(ids) if chord else None,
        chord_size=chord_size,
        chord_index=draw(st.integers(0, chord_size - 1)) if chord and chord_size else draw(
            st.none() | st.integers(-2**31, 2**31 - 1)),
        eta=draw(st.none() | st.integers(-2**63, 2**63 - 1)),
        meta=draw(st.dictionaries(text, text, max_size=3)),
    )


def canonical(data: bytes, partition: int, offset: int) -> tuple[Any, ...] | None:
    """What the sink's canonical route makes of ``data``; None where it refuses it."""
    try:
        event = CODEC.decode_any(data)
        if not isinstance(event, TaskEvent):
            return None
        return (history_row(event, "events", partition, offset), event.task_id,
                view_row(event, TTL_MS), event.timestamp, event.chord_id, event.state.ready)
    except (CodecError, ValidationError):
        return None


def _has_escapes(event: TaskEvent) -> bool:
    strings = [event.task_id, event.task_name, event.worker, event.args, event.kwargs,
               event.result, event.traceback, event.parent_id, event.root_id,
               event.group_id, event.chord_id, *event.meta, *event.meta.values()]
    if event.exception is not None:
        strings += [event.exception.type, event.exception.module, event.exception.message]
    return any(s is not None and ("\x00" in s or "\x01" in s) for s in strings)


@settings(max_examples=400)
@given(event=wide_events() | task_events(), partition=st.integers(0, 2**31 - 1),
       offset=st.integers(0, 2**63 - 1))
def test_the_fast_rows_are_the_canonical_rows(event: TaskEvent, partition: int, offset: int) -> None:
    data = CODEC.encode(event)
    fast = read_rows(data, "events", partition, offset, TTL_MS)
    if _has_escapes(event):
        # Such strings are stored escaped: left to the canonical route.
        assert fast is None
    elif event.state is State.FORGOTTEN:
        # A TaskForgotten record, not a TaskEvent: the canonical route's.
        assert fast is None and canonical(data, partition, offset) is not None
    else:
        assert fast is not None, "a valid event of the latest version must take the fast route"
        assert fast == canonical(data, partition, offset)


@given(event=task_events())
def test_without_expiry_the_view_row_has_no_expire_at(event: TaskEvent) -> None:
    assume(not _has_escapes(event) and event.state is not State.FORGOTTEN)
    assume(not event.result_ttl_ms)
    fast = read_rows(CODEC.encode(event), "events", 0, 0, 0)
    assert fast is not None and fast[2] == view_row(event, 0) and fast[2][1] == ""


@given(event=task_events(), own=st.none() | st.integers(0, MAX_TIMESTAMP_MS),
       ttl_ms=st.sampled_from([0, TTL_MS]))
def test_an_events_own_ttl_wins_over_the_processors(event: TaskEvent, own: int | None,
                                                     ttl_ms: int) -> None:
    """expire_at is the timestamp plus the event's own TTL, else the processor's; 0 (either
    way) is no expiry: the rule schemas/fold.py's expire_at states, on rows."""
    assume(not _has_escapes(event) and event.state is not State.FORGOTTEN)
    event = replace(event, result_ttl_ms=own)
    fast = read_rows(CODEC.encode(event), "events", 0, 0, ttl_ms)
    assert fast is not None and fast[2] == view_row(event, ttl_ms)
    at = expire_at(fold([event])[event.task_id], ttl_ms)
    assert fast[2][1] == ("" if at is None else str(at))
    ttl = ttl_ms if own is None else own
    assert at == (event.timestamp + ttl if ttl else None)


@settings(max_examples=600)
@given(event=wide_events(), data=st.data())
def test_corrupted_bytes_are_never_stored_differently(event: TaskEvent, data: st.DataObject) -> None:
    raw = bytearray(CODEC.encode(event))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if how == "flip":
        i = data.draw(st.integers(len(TASK_HEADER), len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        del raw[data.draw(st.integers(len(TASK_HEADER), len(raw) - 1)):]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=4))
    mangled = bytes(raw)
    fast = read_rows(mangled, "events", 0, 7, TTL_MS)
    if fast is not None:
        # Compared by repr: a flipped byte can make a float NaN, and NaN != NaN.
        assert repr(fast) == repr(canonical(mangled, 0, 7))


def test_other_records_take_the_canonical_route() -> None:
    event = TaskEvent.create("t1", State.SUCCESS, result=1)
    v1 = Codec(pin={"io.resultlog.TaskEvent": 1}).encode(event)
    assert read_rows(v1, "events", 0, 0, TTL_MS) is None
    assert read_rows(b"", "events", 0, 0, TTL_MS) is None
    assert read_rows(b"not avro at all", "events", 0, 0, TTL_MS) is None
    assert read_rows(CODEC.encode(event), "events", 0, 0, TTL_MS) is not None


def test_invalid_events_are_declined() -> None:
    """Values the Avro types allow but the event model does not: the canonical route
    names them (a dead letter), so the fast one must not store them."""
    good = TaskEvent.create("t1", State.SUCCESS, result=1)
    data = CODEC.encode(good)
    # The task id "t1" is 2 bytes: a length prefix 0x04 after the 32-char event id.
    at = len(TASK_HEADER) + 1 + 32
    assert data[at:at + 3] == b"\x04t1"
    blank = data[:at] + b"\x02 " + data[at + 3:]  # task id " "
    assert read_rows(blank, "events", 0, 0, TTL_MS) is None
    assert canonical(blank, 0, 0) is None
    # Names longer than the history's indexes can hold (MAX_NAME_LENGTH).
    for name in ("task_name", "worker"):
        event = TaskEvent.create("t1", State.SUCCESS, result=1)
        object.__setattr__(event, name, "n" * (MAX_NAME_LENGTH + 1))  # past the model's check
        data = CODEC.encode(event)
        assert read_rows(data, "events", 0, 0, TTL_MS) is None
        assert canonical(data, 0, 0) is None
        object.__setattr__(event, name, "\U0001F600" * MAX_NAME_LENGTH)
        assert read_rows(CODEC.encode(event), "events", 0, 0, TTL_MS) is not None


def test_the_sink_sends_what_no_column_can_hold_to_dead_letters() -> None:
    """A foreign producer's record that fits the Avro encoding but not the history
    (chord_size beyond 32 bits: Avro ints and longs share one wire format) becomes a
    dead letter naming the field, instead of failing its whole batch's write."""
    import io
    import json
    from pathlib import Path

    from fastavro import parse_schema, schemaless_writer

    from resultlog.processors.sink import FoldSink, RawRecord
    from resultlog.schemas.codec import event_to_record
    from resultlog.settings import Settings

    schema = json.loads((Path(__file__).parents[2] / "schemas" / "avro" / "task_event.v3.avsc").read_text())
    for f in schema["fields"]:
        if f["name"] == "chord_size":
            f["type"] = ["null", "long"]
    wide = TaskEvent.create("t2", State.SUCCESS, result=1, chord_id="c", chord_size=3, chord_index=1)
    record = event_to_record(wide) | {"chord_size": 2**40}
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(schema), record)
    foreign = TASK_HEADER + body.getvalue()
    good = CODEC.encode(TaskEvent.create("t1", State.SUCCESS, result=1))

    sink = FoldSink(Settings(), consumer_group="g")
    prepared = sink.prepare([RawRecord("events", 0, 0, None, good),
                             RawRecord("events", 0, 1, b"t2", foreign),
                             RawRecord("events", 0, 2, None, None)])
    assert [row[9] for row in prepared.rows] == ["t1"]
    assert [(d.offset, d.reason) for d in prepared.bad] == [
        (1, f"ValidationError: event {wide.event_id} of task 't2': chord_size {2**40} out of range"),
        (2, "CodecError: record has no value (a tombstone?)"),
    ]
    assert prepared.offsets == {("events", 0): 3}


@given(event=task_events())
def test_the_rows_token_is_the_events_order_token(event: TaskEvent) -> None:
    # The bytes route writes states.order_token's format itself.
    assume(not _has_escapes(event) and event.state is not State.FORGOTTEN)
    fast = read_rows(CODEC.encode(event), "events", 0, 0, TTL_MS)
    assert fast is not None and fast[0][11] == fast[2][0] == event.token
