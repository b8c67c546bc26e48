"""The emitter's fast event writer must produce exactly the codec's bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from resultlog.errors import EventTooLarge, ValidationError
from resultlog.producers.encoding import FAST_VERSION, EventEncoder
from resultlog.schemas.codec import TASK_EVENT, Codec
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State
from tests.unit.strategies import task_events

ENCODER = EventEncoder(Codec())


def test_fast_path_covers_the_latest_schema() -> None:
    # Fails when a new TaskEvent schema version is added: update encoding.py with it
    # (until then every event goes through the slower generic codec).
    assert Codec().schema_for(TASK_EVENT).version == FAST_VERSION
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


def test_older_pinned_schema_falls_back_to_the_codec() -> None:
    encoder = EventEncoder(Codec(pin={TASK_EVENT: 1}))
    assert not encoder.fast
    event = TaskEvent.create("t", State.STARTED)
    assert encoder.encode(event) == encoder.codec.encode(event)
