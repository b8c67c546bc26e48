"""resultlog/gc_policy.py: what settle_after_start leaves the garbage collector doing."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from resultlog.gc_policy import YOUNG_THRESHOLD, settle_after_start


class Node:
    """A container that can refer to itself: only the cyclic collector frees such a cycle."""

    def __init__(self) -> None:
        self.me: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A weak reference to a self-referencing Node nothing else holds: garbage that
    only the cyclic collector frees."""
    node = Node()
    node.me = node
    return weakref.ref(node)


@pytest.fixture
def settled() -> Iterator[tuple[int, int, int]]:
    """The collector's thresholds before the test; put back afterwards, frozen objects
    thawed, so that the rest of the test session runs with the defaults."""
    before = gc.get_threshold()
    try:
        yield before
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_raises_only_the_young_threshold_and_freezes_what_lives(
        settled: tuple[int, int, int]) -> None:
    kept = Node()
    settle_after_start()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, settled[1], settled[2])
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()  # tuned, not switched off
    assert not any(obj is kept for obj in gc.get_objects())  # frozen: no generation lists it


def test_garbage_left_before_it_is_freed_not_frozen(settled: tuple[int, int, int]) -> None:
    # A frozen cycle would never be freed: the collection before freezing frees it.
    ref = cycle()
    settle_after_start()
    assert ref() is None


def test_cycles_made_after_it_are_still_collected(settled: tuple[int, int, int]) -> None:
    settle_after_start()
    ref = cycle()
    gc.collect()
    assert ref() is None
