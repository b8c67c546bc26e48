"""Hypothesis strategies for events: shared by the unit and integration tests."""

from __future__ import annotations

from hypothesis import strategies as st

from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import MAX_TIMESTAMP_MS, State

hex_ids = st.uuids().map(lambda u: u.hex)
json_text = st.sampled_from(['1', '"x"', '{"a":[1,2]}', 'null', '[]'])
maybe = st.none() | st.text(max_size=8)


@st.composite
def task_events(draw: st.DrawFn, task_ids: st.SearchStrategy[str] | None = None) -> TaskEvent:
    state = draw(st.sampled_from(list(State)))
    task_id = draw(task_ids if task_ids is not None else st.sampled_from(["a", "b", "c"]))
    timestamp = draw(st.integers(1_700_000_000_000, 1_700_000_000_003))
    if state is State.FORGOTTEN:  # a forget carries nothing else
        return TaskEvent(event_id=draw(hex_ids), task_id=task_id, state=state,
                         timestamp=timestamp, worker=draw(maybe))
    exc = None
    if state in (State.FAILURE, State.RETRY) and draw(st.booleans()):
        exc = ExceptionInfo(draw(st.sampled_from(["ValueError", "KeyError"])), "builtins", draw(st.text(max_size=5)))
    chord = draw(st.booleans())
    return TaskEvent(
        event_id=draw(hex_ids),
        task_id=task_id,
        state=state,
        # A narrow range of small values makes ties in attempt and timestamp common.
        timestamp=timestamp,
        attempt=draw(st.integers(0, 2)),
        task_name=draw(st.none() | st.sampled_from(["add", "mul"])),
        worker=draw(maybe),
        args=draw(st.none() | json_text),
        kwargs=draw(st.none() | json_text),
        result=draw(json_text) if state is State.SUCCESS else None,
        exception=exc,
        traceback=draw(st.none() | st.text(max_size=10)) if exc else None,
        runtime=draw(st.none() | st.floats(0, 10)),
        parent_id=draw(st.none() | st.just("p1")),
        group_id=draw(st.none() | st.just("g1")),
        chord_id="c1" if chord else None,
        chord_size=3 if chord else None,
        chord_index=draw(st.integers(0, 2)) if chord else None,
        meta=draw(st.sampled_from([{}, {}, {"trace": "1"}, {"celery.queue": "q", "trace": "2"}])),
        # TTLs that keep these timestamps' tasks (an expired winner's key is gone, and a
        # late loser then recreates it: fold.lua's known limit): tests of expiry draw their own.
        result_ttl_ms=draw(st.sampled_from([None, None, 0, MAX_TIMESTAMP_MS])),
    )
