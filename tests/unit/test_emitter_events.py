"""Building events (TaskEvent.create, what the emitter's per-state calls use): validation up front."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resultlog.errors import ConfigurationError, InvalidTaskId, ResultNotSerializable, UnknownState, ValidationError
from resultlog.producers import Emitter, SyncEmitter
from resultlog.producers.calls import EmittingCalls
from resultlog.producers.options import resolve
from resultlog.schemas.event import TaskEvent, eta_ms, new_event_id, to_json
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.timeouts import checked_timeout


def test_event_ids_are_32_hex_and_unique() -> None:
    ids = {new_event_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_success_carries_json_result_and_fields() -> None:
    event = TaskEvent.create(
        "t1", State.SUCCESS, worker="w1",
        task_name="add", args=(1, 2), kwargs={"z": 3}, group_id="g", meta={"k": "v"},
        result={"sum": 3}, runtime=1, attempt=2,
    )
    assert (event.state, event.task_id, event.worker, event.attempt) == (State.SUCCESS, "t1", "w1", 2)
    assert json.loads(event.result or "") == {"sum": 3}
    assert event.args == "[1,2]" and event.kwargs == '{"z":3}'
    assert event.runtime == 1.0 and isinstance(event.runtime, float)
    assert event.group_id == "g" and dict(event.meta) == {"k": "v"}


class Calls(EmittingCalls[TaskEvent]):
    """The per-state calls, returning the event they would send."""

    def __init__(self, default_ttl_ms: int | None = None) -> None:
        self.default_ttl_ms = default_ttl_ms

    def _worker_name(self) -> str:
        return "w1"

    def _default_result_ttl_ms(self) -> int | None:
        return self.default_ttl_ms

    def _send(self, event: TaskEvent, wait: bool) -> TaskEvent:
        return event


def test_the_calls_give_the_emitters_expiry_unless_the_caller_gives_one() -> None:
    # A read-your-writes emitter's events carry its result_ttl_s (Pipeline.encode_recorded).
    assert Calls().success("t", 1).result_ttl_ms is None
    assert Calls(86_400_000).success("t", 1).result_ttl_ms == 86_400_000
    assert Calls(86_400_000).started("t", result_ttl=None).result_ttl_ms == 86_400_000
    assert Calls(86_400_000).failure("t", ValueError("x"), result_ttl=0).result_ttl_ms == 0
    assert Calls(86_400_000).revoked("t", result_ttl=timedelta(seconds=2)).result_ttl_ms == 2_000


def test_worker_can_be_overridden_per_event() -> None:
    assert Calls().started("t").worker == "w1"
    assert Calls().started("t", worker="other").worker == "other"


def test_per_state_calls_refuse_fields_they_do_not_take() -> None:
    with pytest.raises(ValidationError, match="unknown event field"):
        Calls().received("t", result=1)  # type: ignore[call-arg]


def test_failure_takes_type_module_message_and_traceback() -> None:
    try:
        raise KeyError("boom")
    except KeyError as exc:
        event = TaskEvent.create("t", State.FAILURE, exc=exc)
    assert event.exception is not None
    assert (event.exception.type, event.exception.module) == ("KeyError", "builtins")
    assert event.exception.message == "'boom'"
    assert event.traceback is not None and "KeyError: 'boom'" in event.traceback
    assert event.result is None


def test_retry_eta() -> None:
    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    event = TaskEvent.create("t", State.RETRY, exc=ValueError("x"), attempt=1, eta=when)
    assert event.eta == int(when.timestamp() * 1000)
    assert eta_ms(datetime(2030, 1, 1)) == event.eta  # naive means UTC
    assert event.traceback is None  # never raised: no traceback to format


@pytest.mark.parametrize("task_id", ["", "   ", None, 42, b"bytes", "x" * 256])
def test_bad_task_ids(task_id: object) -> None:
    with pytest.raises(InvalidTaskId):
        TaskEvent.create(task_id, State.STARTED)  # type: ignore[arg-type]


def test_unserializable_result_args_and_kwargs() -> None:
    with pytest.raises(ResultNotSerializable, match="result"):
        TaskEvent.create("t", State.SUCCESS, result=object())
    with pytest.raises(ResultNotSerializable, match="args"):
        TaskEvent.create("t", State.STARTED, args=[object()])
    with pytest.raises(ResultNotSerializable, match="kwargs"):
        TaskEvent.create("t", State.STARTED, kwargs={"a": {1, 2}})
    with pytest.raises(ResultNotSerializable):
        TaskEvent.create("t", State.SUCCESS, result=float("nan"))


def test_unknown_state() -> None:
    with pytest.raises(UnknownState, match="PENDING"):
        TaskEvent.create("t", "PENDING")
    assert TaskEvent.create("t", "success", result=1).state is State.SUCCESS


def test_other_bad_input() -> None:
    with pytest.raises(ValidationError, match="unknown event field"):
        TaskEvent.create("t", State.STARTED, colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="exception"):
        TaskEvent.create("t", State.FAILURE, exc="not an exception")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="chord"):
        TaskEvent.create("t", State.SUCCESS, chord_id="c", chord_size=2, chord_index=2)
    with pytest.raises(ValidationError, match="attempt"):
        TaskEvent.create("t", State.STARTED, attempt=-1)
    with pytest.raises(ValidationError, match="args must be a list or tuple .* got int: 5"):
        TaskEvent.create("t", State.RECEIVED, args=5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="args must be a list or tuple .* got str: 'ab'"):
        TaskEvent.create("t", State.RECEIVED, args="ab")
    with pytest.raises(ValidationError, match=r"kwargs must be a mapping .* got list: \[1\]"):
        TaskEvent.create("t", State.RECEIVED, kwargs=[1])  # type: ignore[arg-type]
    assert TaskEvent.create("t", State.RECEIVED, args=(1, "x"), kwargs={"k": 2}).args == '[1,"x"]'
    with pytest.raises(ValidationError, match="chord_size must be an int, got '3'"):
        TaskEvent.create("t", State.SUCCESS, chord_id="c", chord_size="3", chord_index=0)  # type: ignore[arg-type]


def test_bools_are_not_ints_for_timestamp_and_attempt() -> None:
    with pytest.raises(ValidationError, match="timestamp True must be an int of ms since the epoch"):
        TaskEvent.create("t", State.STARTED, timestamp=True)
    with pytest.raises(ValidationError, match="attempt True must be an int"):
        TaskEvent.create("t", State.STARTED, attempt=True)
    with pytest.raises(ValidationError, match="attempt False must be an int"):
        Calls().started("t", attempt=False)


@pytest.mark.parametrize("name", ["chord_size", "chord_index"])
def test_a_negative_chord_size_or_index_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=f"^{name} must not be negative, got -1$"):
        TaskEvent.create("t", State.STARTED, **{name: -1})  # type: ignore[arg-type]


@pytest.mark.parametrize("eta", [-5, -1, datetime(1, 1, 1), datetime(1969, 12, 31, 23, 59, tzinfo=timezone.utc),
                                 10**15])
def test_an_eta_out_of_the_timestamps_range_is_refused(eta: datetime | int) -> None:
    with pytest.raises(ValidationError, match="eta must be at or after the epoch"):
        Calls().retry("t", ValueError("x"), attempt=0, eta=eta)
    with pytest.raises(ValidationError, match="eta must be at or after the epoch"):
        eta_ms(eta)


@pytest.mark.parametrize(("meta", "message"), [
    ("abc", "meta must be a mapping of str to str (headers such as a trace id), got str: 'abc'"),
    ([("k", "v")], "meta must be a mapping of str to str"),
    ({"k": 1}, "meta['k'] must be a str, got int: 1; convert it with str() first"),
    ({1: "v"}, "meta keys must be str, got int: 1"),
])
def test_meta_that_is_not_str_to_str_is_refused_by_name(meta: object, message: str) -> None:
    with pytest.raises(ValidationError, match=f"^{re.escape(message)}"):
        Calls().started("a1", meta=meta)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan"), float("inf"), True, "2.5"])
def test_a_runtime_that_is_no_duration_is_refused_where_the_event_is_made(bad: object) -> None:
    with pytest.raises(ValidationError, match=r"runtime must be seconds, a finite number >= 0"):
        TaskEvent.create("t", State.SUCCESS, result=1, runtime=bad)  # type: ignore[arg-type]
    # A record another producer wrote is read as it is: the contract's runtime is a double.
    assert TaskEvent(event_id="0" * 32, task_id="t", state=State.SUCCESS, timestamp=1,
                     runtime=-0.5).runtime == -0.5


def test_options_are_validated() -> None:
    settings = Settings()
    assert resolve(settings, {}).buffer_timeout_s == settings.kafka_timeout_s
    with pytest.raises(ConfigurationError, match="unknown emitter option"):
        resolve(settings, {"linger": 5})  # type: ignore[typeddict-unknown-key]
    with pytest.raises(ConfigurationError, match="compression_type"):
        resolve(settings, {"compression_type": "brotli"})  # type: ignore[typeddict-item]
    with pytest.raises(ConfigurationError, match="max_batch_bytes"):
        resolve(settings, {"max_batch_bytes": 10})


@pytest.mark.parametrize(("options", "message"), [
    # The option is named as the caller spelled it (linger_ms, not the pipeline's linger_s).
    ({"linger_ms": -1}, "linger_ms must not be negative, not -1"),
    ({"linger_ms": "5"}, "linger_ms must be a finite number, not '5'"),
    ({"linger_ms": float("nan")}, "linger_ms must be a finite number, not nan"),
    ({"buffer_timeout_s": float("inf")}, "buffer_timeout_s must be a finite number, not inf"),
    ({"close_timeout_s": -0.5}, "close_timeout_s must not be negative"),
    ({"max_buffered_events": 0}, "max_buffered_events must be at least 1, not 0"),
    ({"max_buffered_events": 2.5}, "max_buffered_events must be an int, not 2.5"),
    ({"max_buffered_bytes": True}, "max_buffered_bytes must be an int, not True"),
    ({"max_batch_bytes": "64k"}, "max_batch_bytes must be an int, not '64k'"),
    ({"read_your_writes": "yes"}, "read_your_writes must be True or False, not 'yes'"),
    ({"create_topics": 1}, "create_topics must be True or False, not 1"),
    ({"client_id": ""}, "client_id must be a non-empty str"),
    ({"client_id": 7}, "client_id must be a non-empty str, not 7"),
])
def test_a_bad_option_is_named_with_what_was_wrong(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^emitter option {re.escape(message)}"):
        resolve(Settings(), options)  # type: ignore[arg-type]


@pytest.mark.parametrize("worker", [5, "", "  ", b"w1"])
def test_a_bad_worker_name_is_refused_when_the_emitter_is_made(worker: object) -> None:
    message = "^emitter option worker must be a non-empty str"
    with pytest.raises(ConfigurationError, match=message):
        Emitter(Settings(), worker=worker)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message):
        SyncEmitter(Settings(), worker=worker)  # type: ignore[arg-type]


@pytest.mark.parametrize(("worker", "message"), [
    ("w" * 256, "must be a str of at most 255 characters"),  # the history indexes it
    ("w\udc80", "is not valid Unicode text"),
])
def test_a_worker_name_no_event_can_carry_is_refused_when_the_emitter_is_made(
        worker: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^emitter option worker .*{message}"):
        Emitter(Settings(), worker=worker)
    assert Emitter(Settings(), worker="\U0001F600" * 255).worker == "\U0001F600" * 255


@pytest.mark.parametrize("bad", ["x", "30", True, float("nan"), [1]])
def test_a_timeout_that_is_no_number_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="^timeout_s must be None or a number of seconds, not"):
        checked_timeout(bad, "timeout_s")
    with pytest.raises(ValidationError, match="^timeout must be None or a number of seconds, not"):
        checked_timeout(bad, negative=True)


def test_a_negative_timeout_is_refused_unless_the_caller_takes_one() -> None:
    with pytest.raises(ValidationError, match=r"^timeout_s must be None or a number of seconds >= 0, not -1$"):
        checked_timeout(-1, "timeout_s")
    assert checked_timeout(-1, negative=True) == -1.0
    assert checked_timeout(None) is None and checked_timeout(0) == 0.0
    assert checked_timeout(float("inf")) == float("inf") and checked_timeout(10**400) == float("inf")
    assert checked_timeout(-(10**400), negative=True) == float("-inf")


def test_good_options_are_taken_as_given() -> None:
    opts = resolve(Settings(), {"linger_ms": 0, "buffer_timeout_s": 2, "max_buffered_events": 10,
                                "close_timeout_s": 0.5, "client_id": "w1", "read_your_writes": True})
    assert (opts.linger_s, opts.buffer_timeout_s, opts.max_buffered_events) == (0, 2, 10)
    assert (opts.close_timeout_s, opts.producer.client_id, opts.read_your_writes) == (0.5, "w1", True)


def test_a_forked_child_never_repeats_its_parents_event_ids() -> None:
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, "".join(new_event_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    parent = {new_event_id() for _ in range(8)}
    with os.fdopen(read) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    child = {data[i : i + 32] for i in range(0, len(data), 32)}
    assert len(child) == 8 and not parent & child


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500)
@given(_json_values)
def test_to_json_is_exactly_compact_json_dumps(value: object) -> None:
    # Was "the emitter's fast JSON is exactly to_json": there is one encoder now.
    assert to_json(value, "result") == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1, 2}, object(), {"k": b"bytes"}, {(1, 2): 3}])
def test_to_json_refuses_what_json_refuses(bad: object) -> None:
    with pytest.raises(ResultNotSerializable, match="result"):
        to_json(bad, "result")


def test_to_json_refuses_circular_values() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ResultNotSerializable, match="Circular"):
        to_json(loop, "result")
