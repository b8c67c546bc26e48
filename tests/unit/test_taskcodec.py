"""The generated TaskEvent writer and reader must agree with fastavro.

(Moved from test_emitter_encoding.py and test_codec.py with the code; same assertions.)
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings, strategies as st

from resultlog.errors import EventTooLarge, ValidationError
from resultlog.schemas.codec import HEADER_SIZE, TASK_EVENT, Codec, event_from_record
from resultlog.schemas.taskcodec import EventEncoder, make_reader
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State
from tests.unit.strategies import task_events

ENCODER = EventEncoder(Codec())


def test_fast_path_covers_the_latest_schema() -> None:
    # Fails when the latest TaskEvent schema uses a type taskcodec cannot generate code
    # for (every event would then go through the slower generic codec).
    assert Codec().task_event_writer() is not None
    assert ENCODER.fast


@settings(max_examples=500)
@given(task_events())
def test_bytes_equal_the_codec(event: TaskEvent) -> None:
    assert ENCODER.encode(event) == ENCODER.codec.encode(event)
    assert ENCODER.codec.decode(ENCODER.encode(event)) == event


@settings(max_examples=300)
@given(
    text=st.text(max_size=300),
    number=st.integers(-(2**63), 2**63 - 1),
    runtime=st.floats(allow_nan=False),
    meta=st.dictionaries(st.text(max_size=5), st.text(max_size=200), max_size=4),
    chord=st.integers(1, 2**31 - 1),
)
def test_bytes_equal_the_codec_on_wide_values(
    text: str, number: int, runtime: float, meta: dict[str, str], chord: int
) -> None:
    event = TaskEvent(
        event_id="ab" * 16,
        task_id="t",
        state=State.RETRY,
        timestamp=0,
        task_name=text,
        traceback=text * 3,
        exception=ExceptionInfo("E", "m", text),
        runtime=runtime,
        eta=number,
        chord_id="c",
        chord_size=chord,
        chord_index=chord - 1,
        meta=meta,
    )
    try:
        expected = ENCODER.codec.encode(event)
    except ValidationError:  # e.g. lone surrogates: both must refuse alike
        with pytest.raises(ValidationError):
            ENCODER.encode(event)
        return
    assert ENCODER.encode(event) == expected


def test_too_large_is_the_codecs_error() -> None:
    encoder = EventEncoder(Codec(max_bytes=2048))
    event = TaskEvent.create("t", State.SUCCESS, result="x" * 5000)
    with pytest.raises(EventTooLarge, match="RESULTLOG_MAX_EVENT_BYTES"):
        encoder.encode(event)


def test_out_of_range_int_is_the_codecs_error() -> None:
    event = TaskEvent.create("t", State.SUCCESS, chord_id="c", chord_size=2**40, chord_index=0)
    with pytest.raises(ValidationError):
        ENCODER.encode(event)


def test_older_pinned_schema_gets_its_own_writer_equal_to_the_codec() -> None:
    # Was "falls back to the codec": the writer is now generated from whichever
    # version the codec writes, so v1 has one too; the bytes must still be the codec's.
    encoder = EventEncoder(Codec(pin={TASK_EVENT: 1}))
    assert encoder.fast
    event = TaskEvent.create("t", State.STARTED)
    assert encoder.encode(event) == encoder.codec.encode(event)


@given(task_events())
def test_the_generated_reader_agrees_with_fastavro(event: TaskEvent) -> None:
    assume(event.state is not State.FORGOTTEN)  # a TaskForgotten record, not a TaskEvent
    codec = Codec()
    read = make_reader(codec.schema_for(TASK_EVENT).parsed)
    data = codec.encode(event)
    assert read(data, HEADER_SIZE) == event_from_record(codec.decode_record(data)[1]) == event
