"""An oversized outcome (FAILURE, RETRY, REVOKED) is cut to fit the limit, never refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from resultlog.errors import EventTooLarge
from resultlog.names import TRUNCATED_META_KEY
from resultlog.schemas.taskcodec import EventEncoder
from resultlog.producers.fitting import FITTED_STATES, fit_within_limit, marker, truncate_text
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import ExceptionInfo, TaskEvent, now_ms
from resultlog.schemas.states import State

UNLIMITED = EventEncoder(Codec(max_bytes=10**9))

# Text with multi-byte characters, so cuts land inside characters too.
texts = st.text(alphabet=st.sampled_from("ab\né✓𝄞"), max_size=3000)


def encoder(limit: int) -> EventEncoder:
    return EventEncoder(Codec(max_bytes=limit))


def event(state: State, *, tb: str | None = "", message: str = "", args: str | None = None,
          kwargs: str | None = None, meta: dict[str, str] | None = None, task_name: str = "t",
          worker: str = "w") -> TaskEvent:
    return TaskEvent(
        event_id="a" * 32, task_id="task-1", state=state, timestamp=now_ms(), task_name=task_name,
        worker=worker, args=args, kwargs=kwargs,
        exception=None if state is State.REVOKED else ExceptionInfo("ValueError", "builtins", message),
        traceback=tb, meta=meta or {},
    )


@given(texts, st.integers(0, 4000))
def test_truncated_text_keeps_a_head_and_a_tail_around_the_marker(text: str, keep: int) -> None:
    cut = truncate_text(text, keep)
    size = len(text.encode())
    if keep >= size:
        assert cut == text
        return
    head, _, tail = cut.partition(marker(size))
    assert text.startswith(head) and text.endswith(tail)
    assert len(head.encode()) + len(tail.encode()) <= keep
    # Nothing lost beyond what a split character costs at each of the two cuts.
    assert len(head.encode()) + len(tail.encode()) >= keep - 6


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(sorted(FITTED_STATES, key=lambda s: s.value)),
    tb=texts, message=texts,
    args=st.none() | st.lists(st.integers(), max_size=300).map(json.dumps),
    kwargs=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=50), max_size=30).map(json.dumps),
    meta=st.dictionaries(st.text(max_size=10), st.text(max_size=400), max_size=5),
    limit=st.integers(1024, 12_000),
)
def test_an_outcome_always_encodes_within_the_limit(
    state: State, tb: str, message: str, args: str | None, kwargs: str | None, meta: dict[str, str], limit: int,
) -> None:
    original = event(state, tb=tb, message=message, args=args, kwargs=kwargs, meta=meta)
    enc = encoder(limit)
    data = fit_within_limit(original, enc.encode)[1]  # never raises: the fixed fields are small
    assert len(data) <= limit
    got = enc.codec.decode(data)
    whole = UNLIMITED.encode(original)
    if len(whole) <= limit:
        assert data == whole  # what fits is left alone
        return
    # The same event, with only the cuttable fields changed and every cut noted.
    assert (got.event_id, got.state, got.task_id, got.timestamp) == (
        original.event_id, original.state, original.task_id, original.timestamp)
    noted = dict(item.rsplit(":", 1) for item in got.meta[TRUNCATED_META_KEY].split(","))
    sizes = {"traceback": tb, "exception.message": message, "args": args, "kwargs": kwargs}
    for name, text in sizes.items():
        if name in noted:
            assert text is not None and int(noted[name]) == len(text.encode())
    if "traceback" in noted:
        assert got.traceback is not None and marker(len(tb.encode())) in got.traceback
    else:
        assert got.traceback == original.traceback
    if "exception.message" in noted:
        assert got.exception is not None and marker(len(message.encode())) in got.exception.message
    else:
        assert got.exception == original.exception
    assert got.args == (None if "args" in noted else args)
    assert got.kwargs == (None if "kwargs" in noted else kwargs)
    if "meta" not in noted:
        assert {k: v for k, v in got.meta.items() if k != TRUNCATED_META_KEY} == meta


def test_a_5_mb_traceback_and_a_3_mb_message_both_keep_a_share() -> None:
    original = event(State.FAILURE, tb="T" * 5_000_000, message="m" * 3_000_000, args="[1,2]")
    enc = encoder(1_000_000)
    got = enc.codec.decode(fit_within_limit(original, enc.encode)[1])
    assert got.traceback is not None and got.exception is not None
    assert 400_000 < len(got.traceback) < 500_100 and 400_000 < len(got.exception.message) < 500_100
    assert got.args == "[1,2]"  # text went first; args were not needed
    assert got.meta[TRUNCATED_META_KEY] == "traceback:5000000,exception.message:3000000"


def test_huge_args_are_dropped_when_cutting_text_is_not_enough() -> None:
    original = event(State.RETRY, tb="short", args=json.dumps(["x" * 2_000_000]))
    enc = encoder(1_000_000)
    got = enc.codec.decode(fit_within_limit(original, enc.encode)[1])
    assert got.args is None and got.traceback == "short"
    assert got.meta[TRUNCATED_META_KEY] == "args:2000004"  # ["…"]


def test_a_success_over_the_limit_is_refused_with_its_size() -> None:
    big = TaskEvent.create("task-1", State.SUCCESS, result="x" * 5000)
    with pytest.raises(EventTooLarge, match="RESULTLOG_MAX_EVENT_BYTES") as raised:
        fit_within_limit(big, encoder(2048).encode)
    assert raised.value.limit == 2048 and raised.value.size == len(UNLIMITED.encode(big))


def test_an_outcome_whose_uncut_fields_exceed_the_limit_is_refused_saying_which() -> None:
    # Names of the greatest length, in 4-byte characters: 2,040 bytes of the 2,048.
    original = event(State.FAILURE, tb="x" * 5000, task_name="\U0001F600" * 255,
                     worker="\U0001F601" * 255)
    with pytest.raises(EventTooLarge, match="task name, worker name or exception type"):
        fit_within_limit(original, encoder(2048).encode)
