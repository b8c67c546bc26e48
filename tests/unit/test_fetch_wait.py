"""The processor's fetch settings for a linger: answered at once without one, held for
the linger (or until enough has arrived) with one."""

from __future__ import annotations

from resultlog.processors.engine import EMPTY_FETCH_WAIT_MS, LINGER_FETCH_BYTES, fetch_wait


def test_without_a_linger_one_record_answers_the_fetch() -> None:
    # One record answers it; the wait bounds only a fetch that finds nothing.
    assert fetch_wait(0) == {"fetch_max_wait_ms": EMPTY_FETCH_WAIT_MS, "fetch_min_bytes": 1}


def test_a_linger_holds_the_fetch_for_it_or_until_enough_has_arrived() -> None:
    assert fetch_wait(20) == {"fetch_max_wait_ms": 20, "fetch_min_bytes": LINGER_FETCH_BYTES}
    assert fetch_wait(1000)["fetch_max_wait_ms"] == 1000
