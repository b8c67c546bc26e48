from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resultlog.errors import UnknownState
from resultlog.schemas.states import (
    MAX_ATTEMPT,
    MAX_TIMESTAMP_MS,
    PENDING,
    State,
    order_key,
    order_token,
)


def test_lifecycle_within_an_attempt_only_moves_forward() -> None:
    order = [State.RECEIVED, State.STARTED, State.RETRY, State.FAILURE, State.SUCCESS, State.REVOKED,
             State.FORGOTTEN]
    assert sorted(State, key=lambda s: s.rank) == order


def test_a_later_attempt_beats_any_state_of_an_earlier_one() -> None:
    assert order_key(1, State.RECEIVED, 0, "0" * 32) > order_key(0, State.REVOKED, 9, "f" * 32)


def test_ready_states() -> None:
    assert {s for s in State if s.ready} == {State.SUCCESS, State.FAILURE, State.REVOKED}


def test_parse_accepts_names_and_rejects_unknown_ones() -> None:
    assert State.parse("success") is State.SUCCESS
    assert State.parse(State.RETRY) is State.RETRY
    with pytest.raises(UnknownState, match="PENDING"):
        State.parse(PENDING)  # never emitted: it is what an unknown task reads as
    with pytest.raises(UnknownState, match="expected one of"):
        State.parse(3)


keys = st.tuples(
    st.integers(0, MAX_ATTEMPT),
    st.sampled_from(list(State)),
    st.integers(0, MAX_TIMESTAMP_MS),
    st.uuids().map(lambda u: u.hex),
)


@given(keys, keys)
def test_token_order_equals_key_order(a: tuple[int, State, int, str], b: tuple[int, State, int, str]) -> None:
    """Redis and Postgres compare tokens as strings; that must agree with the tuple order."""
    assert (order_token(*a) < order_token(*b)) == (order_key(*a) < order_key(*b))
    assert (order_token(*a) == order_token(*b)) == (order_key(*a) == order_key(*b))
