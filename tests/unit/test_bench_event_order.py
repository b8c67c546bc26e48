"""bench/fold_throughput.py's log order: every event once, each task's in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.fold_throughput import event_order


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=40))
def test_every_event_once_and_each_task_in_order(n_tasks: int, spread: int) -> None:
    order = list(event_order(n_tasks, spread))
    assert sorted(order) == [(k, step) for k in range(n_tasks) for step in range(3)]
    position = {event: i for i, event in enumerate(order)}
    for k in range(n_tasks):
        assert position[(k, 0)] < position[(k, 1)] < position[(k, 2)]


def test_a_spread_puts_a_whole_wave_between_a_tasks_events() -> None:
    order = list(event_order(30, 10))
    position = {event: i for i, event in enumerate(order)}
    # Task 0's RECEIVED opens wave 0; its STARTED comes after the whole of wave 0's
    # RECEIVEDs, and its SUCCESS after wave 1's events.
    assert position[(0, 1)] > position[(9, 0)]
    assert position[(0, 2)] > position[(19, 0)]


def test_no_spread_keeps_each_task_together() -> None:
    assert list(event_order(2, 0)) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
