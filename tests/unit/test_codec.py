from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import given

from resultlog.errors import (
    CodecError,
    CorruptResult,
    EventTooLarge,
    InvalidTaskId,
    ResultNotSerializable,
    UnknownSchema,
    ValidationError,
)
from resultlog.schemas.codec import MAGIC, SCHEMA_DIR, TASK_EVENT, Codec, crc64_avro
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State
from tests.unit.strategies import task_events


def test_crc64_avro_matches_the_specification_vector() -> None:
    # Avro's own test vector (share/test/data/schema-tests.txt): the schema "null".
    assert crc64_avro(b'"null"') == 7195948357588979594


@given(task_events())
def test_round_trip(event: TaskEvent) -> None:
    codec = Codec()
    data = codec.encode(event)
    assert data[:2] == MAGIC
    assert codec.decode(data) == event


def test_every_schema_version_is_kept_and_readable() -> None:
    codec = Codec()
    versions = [v.version for v in codec.store.versions(TASK_EVENT)]
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 2
    assert len(list(SCHEMA_DIR.glob("task_event.v*.avsc"))) == len(versions)


def test_an_event_written_under_v1_is_read_by_current_code() -> None:
    old_writer = Codec(pin={TASK_EVENT: 1})
    event = TaskEvent.create("t1", State.FAILURE, task_name="div",
                             exc=ExceptionInfo("ZeroDivisionError", "builtins", "division by zero"))
    decoded = Codec().decode(old_writer.encode(event))
    assert decoded == event  # the v2-only fields take their defaults
    assert decoded.meta == {} and decoded.eta is None


def test_a_newer_optional_field_is_ignored_by_older_code() -> None:
    event = TaskEvent.create("t1", State.RETRY, eta=1_800_000_000_000, meta={"trace": "abc"})
    old_reader = Codec(pin={TASK_EVENT: 1})
    decoded = old_reader.decode(Codec().encode(event))
    assert decoded.task_id == "t1" and decoded.state is State.RETRY
    assert decoded.eta is None and decoded.meta == {}


def test_a_v1_event_file_from_disk_decodes() -> None:
    """Bytes as an old release wrote them stay readable forever."""
    v1 = json.loads((SCHEMA_DIR / "task_event.v1.avsc").read_text())
    assert v1["name"] == "TaskEvent"
    data = Codec(pin={TASK_EVENT: 1}).encode(TaskEvent.create("x", "SUCCESS", result=[1]))
    assert Codec().decode(data).result_value() == [1]


def test_result_ttl_is_v3_and_reads_as_none_from_older_records() -> None:
    """A v2 writer (an emitter not yet upgraded) carries no TTL: the processor's applies.
    A reader pinned to v2 skips the field: its own TTL applies."""
    event = TaskEvent.create("t", State.SUCCESS, result=1, result_ttl=timedelta(seconds=1.5))
    assert event.result_ttl_ms == 1500
    assert Codec().decode(Codec().encode(event)).result_ttl_ms == 1500
    assert Codec(pin={TASK_EVENT: 2}).decode(Codec().encode(event)).result_ttl_ms is None
    assert Codec().decode(Codec(pin={TASK_EVENT: 2}).encode(event)).result_ttl_ms is None


@pytest.mark.parametrize("bad", [-1, timedelta(seconds=-1), 1.5, "60", True, 10**15])
def test_a_bad_result_ttl_is_named(bad: object) -> None:
    with pytest.raises(ValidationError, match="result_ttl"):
        TaskEvent.create("t", State.SUCCESS, result=1, result_ttl=bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="result_ttl_ms"):
        TaskEvent(event_id="0" * 32, task_id="t", state=State.SUCCESS, timestamp=1,
                  result_ttl_ms=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [5, 0])
def test_a_forget_carries_no_ttl(ttl: int) -> None:
    """Its record (TaskForgotten) has no such field: a TTL would be lost on the wire."""
    with pytest.raises(ValidationError, match="result_ttl_ms"):
        TaskEvent.create("t", State.FORGOTTEN, result_ttl=ttl)


def test_garbage_is_a_codec_error() -> None:
    codec = Codec()
    with pytest.raises(CodecError, match="single-object"):
        codec.decode(b"not avro at all")
    with pytest.raises(UnknownSchema, match="fingerprint"):
        codec.decode(MAGIC + b"\x00" * 8 + b"\x02")
    good = codec.encode(TaskEvent.create("t", "SUCCESS", result=1))
    with pytest.raises(CodecError):
        codec.decode(good[:14])


def test_an_event_over_the_size_limit_is_refused() -> None:
    codec = Codec(max_bytes=2048)
    with pytest.raises(EventTooLarge, match="2048-byte limit"):
        codec.encode(TaskEvent.create("t", "SUCCESS", result="x" * 5000))


def test_bad_input_is_named() -> None:
    with pytest.raises(InvalidTaskId, match="empty"):
        TaskEvent.create("", "SUCCESS")
    with pytest.raises(InvalidTaskId, match="must be a str"):
        TaskEvent.create(42, "SUCCESS")  # type: ignore[arg-type]
    # A lone surrogate (bytes that were not UTF-8, as Python decodes argv): no store
    # takes it, and redis-py and asyncpg failed with their own encoding errors.
    with pytest.raises(InvalidTaskId, match=r"not valid Unicode text: a lone surrogate '\\udcff' at position 2"):
        TaskEvent.create("ab\udcff", "SUCCESS")
    with pytest.raises(ValidationError, match="group_id .* not valid Unicode text"):
        TaskEvent.create("t", "SUCCESS", group_id="\ud800")
    assert TaskEvent.create("tâche-€", "SUCCESS").task_id == "tâche-€"
    with pytest.raises(ResultNotSerializable, match="result cannot be encoded as JSON"):
        TaskEvent.create("t", "SUCCESS", result=object())
    with pytest.raises(ResultNotSerializable):
        TaskEvent.create("t", "SUCCESS", result=float("nan"))
    with pytest.raises(ValidationError, match="event_id"):
        TaskEvent.create("t", "SUCCESS", event_id="nope")
    with pytest.raises(ValidationError, match="event_id '' must be"):  # not "make one up"
        TaskEvent.create("t", "SUCCESS", event_id="")
    with pytest.raises(ValidationError, match="chord_index"):
        TaskEvent.create("t", "SUCCESS", chord_id="c", chord_size=2, chord_index=2)


def test_a_record_the_fast_reader_rejects_gets_the_generic_error() -> None:
    data = Codec().encode(TaskEvent.create("t", "SUCCESS", result=1))
    with pytest.raises(CodecError, match="corrupt"):
        Codec().decode(data + b"\x07")  # trailing garbage
    with pytest.raises(CodecError):
        Codec().decode(data[:-3])


def test_a_forget_round_trips_as_its_own_record_and_outranks_every_attempt() -> None:
    from resultlog.schemas.codec import TASK_FORGOTTEN
    from resultlog.schemas.fold import fold, visible

    codec = Codec()
    forget = TaskEvent.create("t", State.FORGOTTEN, timestamp=1_000, worker="client")
    data = codec.encode(forget)
    assert codec.decode_record(data)[0] == TASK_FORGOTTEN
    assert codec.decode(data) == forget
    # A later attempt's SUCCESS, even one timed after the forget, does not bring it back.
    late = TaskEvent.create("t", State.SUCCESS, timestamp=2_000, attempt=7, result=1)
    for events in ([forget, late], [late, forget]):
        view = fold(events)["t"]
        assert view.state is State.FORGOTTEN and visible(view) is None


def test_a_forget_refuses_fields_its_record_cannot_carry() -> None:
    with pytest.raises(ValidationError, match="FORGOTTEN event carries only"):
        TaskEvent.create("t", State.FORGOTTEN, task_name="x")


@pytest.mark.parametrize("text", ["not json", "", "1 2", "9" * 5000, "[" * 100_000 + "]" * 100_000])
def test_stored_text_that_is_not_json_python_reads_is_a_corrupt_result(text: str) -> None:
    event = TaskEvent.create("t", "SUCCESS", result=1)
    object.__setattr__(event, "result", text)  # as another producer's record may hold it
    with pytest.raises(CorruptResult, match="the result of task 't' is not JSON text"):
        event.result_value()


def test_a_result_nested_deeper_than_json_writes_is_not_serializable() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ResultNotSerializable, match="cannot be encoded as JSON"):
        TaskEvent.create("t", "SUCCESS", result=deep)
