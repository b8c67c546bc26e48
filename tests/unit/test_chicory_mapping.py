"""Chicory's TaskResult and WorkerStats through resultlog's records and back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("chicory")

from chicory.types import BackendStatus, TaskResult, TaskState, WorkerStats  # noqa: E402

from resultlog.chicory_backend.mapping import (  # noqa: E402
    FROM_EVENT_STATE,
    heartbeat,
    task_event,
    task_result,
    worker_stats,
)
from resultlog import names  # noqa: E402
from resultlog.errors import CorruptResult, ResultNotSerializable, ValidationError  # noqa: E402
from resultlog.schemas.codec import Codec  # noqa: E402
from resultlog.schemas.event import ExceptionInfo, TaskEvent  # noqa: E402
from resultlog.schemas.fold import fold  # noqa: E402
from resultlog.schemas.states import State  # noqa: E402
from resultlog.schemas.workers import WorkerHeartbeat  # noqa: E402

codec = Codec()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
task_results = st.builds(
    lambda state, result, error, tb: TaskResult[Any](
        task_id="t-1", state=state, result=result, error=error, traceback=tb),
    st.sampled_from(list(TaskState)), json_values,
    st.none() | st.text(max_size=30), st.none() | st.text(max_size=60))


def through_the_log(result: TaskResult[Any]) -> TaskResult[Any]:
    event = codec.decode(codec.encode(task_event(result.task_id, result, "w1")))
    return task_result(fold([event])[result.task_id])


@given(task_results)
def test_every_task_result_round_trips_exactly(result: TaskResult[Any]) -> None:
    assert through_the_log(result) == result


def test_dead_lettered_is_a_failure_to_the_contract_and_dead_lettered_to_chicory() -> None:
    result = TaskResult[Any](task_id="t-1", state=TaskState.DEAD_LETTERED, error="boom", traceback="tb")
    event = task_event("t-1", result, None)
    assert event.state is State.FAILURE and event.state.ready
    assert event.exception is not None and (event.exception.module, event.exception.type,
                                            event.exception.message) == ("builtins", "Exception", "boom")
    assert through_the_log(result).state is TaskState.DEAD_LETTERED


def test_a_success_carries_its_plain_value() -> None:
    event = task_event("t-1", TaskResult[Any](task_id="t-1", state=TaskState.SUCCESS,
                                              result={"a": [1, 2]}), None)
    assert event.result_value() == {"a": [1, 2]}


def test_a_later_state_of_the_same_attempt_wins_the_fold() -> None:
    started = task_event("t-1", TaskResult[Any](task_id="t-1", state=TaskState.STARTED), None)
    dead = task_event("t-1", TaskResult[Any](task_id="t-1", state=TaskState.DEAD_LETTERED, error="x"), None)
    # Chicory's worker sends STARTED then the outcome; the order of arrival does not matter.
    assert task_result(fold([dead, started])["t-1"]).state is TaskState.DEAD_LETTERED


def test_results_go_through_pydantic_json_mode_as_chicorys_own_backends_do() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    back = through_the_log(TaskResult[Any](task_id="t-1", state=TaskState.SUCCESS, result=moment))
    assert back.result == TaskResult[Any].model_validate_json(
        TaskResult[Any](task_id="t-1", state=TaskState.SUCCESS, result=moment).model_dump_json()).result


@pytest.mark.parametrize("value", [object(), b"\xff\x00", {"nested": [object()]}])
@pytest.mark.parametrize("state", [TaskState.SUCCESS, TaskState.RETRY])
def test_a_result_json_mode_cannot_encode_is_result_not_serializable(
        value: Any, state: TaskState) -> None:
    """Was pydantic's PydanticSerializationError, or a UnicodeDecodeError for bytes that
    are not UTF-8; the emitter's own error for what JSON cannot encode instead."""
    with pytest.raises(ResultNotSerializable, match="^the task's result cannot be encoded as JSON"):
        task_event("t-1", TaskResult[Any](task_id="t-1", state=state, result=value), None)


def read_back(event: TaskEvent, **fields: Any) -> TaskResult[Any]:
    """``event``, with ``fields`` set past the model's checks (another producer's record
    may hold anything), as the backend reads it once folded."""
    for name, value in fields.items():
        object.__setattr__(event, name, value)
    return task_result(fold([codec.decode(codec.encode(event))])[event.task_id])


@pytest.mark.parametrize("state, named", [
    (State.STARTED, "SUCCESS"),  # read as ready while wait() waited on, its event STARTED
    (State.STARTED, "FAILURE"),
    (State.RECEIVED, "SUCCESS"),
    (State.RETRY, "DEAD_LETTERED"),
    (State.FAILURE, "PENDING"),
    (State.REVOKED, "FAILURE"),  # task_event never writes a REVOKED event
    (State.STARTED, "BOGUS"),  # these were a bare ValueError: "'BOGUS' is not a valid TaskState"
    (State.STARTED, [1]),
    (State.FAILURE, None),
])
def test_a_wrapper_whose_state_is_not_of_its_events_state_reads_as_the_plain_event(
        state: State, named: Any) -> None:
    wrapper = {names.CHICORY_STATE_KEY: named, names.CHICORY_RESULT_KEY: 42}
    exc = ExceptionInfo("Exception", "builtins", "x") if state in (State.FAILURE, State.REVOKED) else None
    back = read_back(TaskEvent.create("k", state, exc=exc), result=json.dumps(wrapper))
    assert back.state is FROM_EVENT_STATE[state] and back.result == wrapper


@pytest.mark.parametrize("text", ["nope", "", "[" * 100_000 + "]" * 100_000, "1" * 5_000])
@pytest.mark.parametrize("state", [State.SUCCESS, State.STARTED])
def test_a_result_that_is_no_json_is_corrupt_result_naming_the_task(text: str, state: State) -> None:
    """Was a bare JSONDecodeError, RecursionError or ValueError."""
    event = TaskEvent.create("k-bad", state, result=1)
    with pytest.raises(CorruptResult, match="^the result of task 'k-bad' is not JSON text"):
        read_back(event, result=text)


def stats(**changes: Any) -> WorkerStats:
    values: dict[str, Any] = dict(
        worker_id="w-1", hostname="h", pid=12, queue="default", concurrency=4,
        tasks_processed=10, tasks_failed=2, active_tasks=1,
        started_at=datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),
        last_heartbeat=datetime(2026, 1, 2, 3, 5, 5, 456000, tzinfo=UTC), is_running=True)
    values.update(changes)
    return WorkerStats(**values)


@pytest.mark.parametrize("changes", [
    {}, {"is_running": False},
    {"backend": BackendStatus(connected=False, error="down")},
])
def test_worker_stats_round_trip_through_a_heartbeat_record(changes: dict[str, Any]) -> None:
    original = stats(**changes)
    hb = WorkerHeartbeat.decode(codec, heartbeat("w-1", original, 30).encode(codec))
    assert hb.source == "chicory" and hb.ttl_s == 30
    assert hb.expires_at == hb.beat_at + 30_000
    assert worker_stats(hb) == original


def test_worker_times_are_kept_to_the_millisecond() -> None:
    original = stats(started_at=datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC))
    back = worker_stats(heartbeat("w-1", original, 30))
    assert back.started_at == datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)


def test_a_last_heartbeat_more_than_an_hour_ahead_is_refused_as_kafka_would() -> None:
    """Kafka refuses such a record (InvalidTimestampError): it reached Chicory as a
    retriable BrokerUnavailable, and again from disconnect()."""
    now = datetime.now(UTC)
    with pytest.raises(ValidationError, match="^last_heartbeat .* of 'w-1' is .* s ahead"):
        heartbeat("w-1", stats(last_heartbeat=now + timedelta(hours=2)), 30)
    # Up to an hour ahead (a host's clock a little fast) is what Kafka takes.
    hb = heartbeat("w-1", stats(last_heartbeat=now + timedelta(minutes=59)), 30)
    assert worker_stats(hb).last_heartbeat is not None
