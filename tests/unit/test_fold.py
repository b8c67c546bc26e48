"""The fold is a join: any permutation and duplication of events gives the same views."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from resultlog.schemas.event import TaskEvent
from resultlog.schemas.fold import apply, fold
from resultlog.schemas.states import State
from tests.unit.strategies import task_events

event_lists = st.lists(task_events(), min_size=1, max_size=25)


@given(event_lists, st.randoms(use_true_random=False))
def test_any_permutation_folds_to_the_same_views(events: list[TaskEvent], rnd: random.Random) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert fold(shuffled) == fold(events)


@given(event_lists, st.data())
def test_duplicates_change_nothing(events: list[TaskEvent], data: st.DataObject) -> None:
    dupes = data.draw(st.lists(st.sampled_from(events), max_size=25))
    assert fold(events + dupes) == fold(events)
    assert fold(dupes + events + dupes) == fold(events)


@given(event_lists, event_lists)
def test_folding_is_associative(xs: list[TaskEvent], ys: list[TaskEvent]) -> None:
    left = fold(xs)
    combined = dict(left)
    for event in ys:
        combined[event.task_id] = apply(combined.get(event.task_id), event)
    assert combined == fold(xs + ys)


@given(event_lists)
def test_the_winner_is_the_greatest_key(events: list[TaskEvent]) -> None:
    for task_id, view in fold(events).items():
        winner = max((e for e in events if e.task_id == task_id), key=lambda e: e.key)
        assert view.event_id == winner.event_id
        assert view.state is winner.state


def test_sticky_fields_survive_a_winner_that_does_not_repeat_them() -> None:
    received = TaskEvent.create("t", State.RECEIVED, task_name="add", args=[1, 2], timestamp=1)
    success = TaskEvent.create("t", State.SUCCESS, result=3, timestamp=2)
    view = fold([success, received])["t"]
    assert (view.state, view.result, view.task_name, view.args) == (State.SUCCESS, "3", "add", "[1,2]")


def test_a_late_retry_of_an_old_attempt_does_not_regress_a_success() -> None:
    success = TaskEvent.create("t", State.SUCCESS, attempt=1, result=1, timestamp=5)
    late_retry = TaskEvent.create("t", State.RETRY, attempt=0, timestamp=9)
    assert fold([success, late_retry])["t"].state is State.SUCCESS


def test_views_that_differ_only_in_their_metas_key_order_agree() -> None:
    # The Redis view keeps the order the event gave; the history's jsonb its own.
    a = fold([TaskEvent.create("t", "SUCCESS", result=1, meta={"zz": "1", "a": "2"})])["t"]
    b = replace(a, meta='{"a":"2","zz":"1"}')
    assert a.meta != b.meta and a.public() == b.public()
    assert a.public() != replace(a, meta='{"a":"2"}').public()
