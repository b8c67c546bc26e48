"""Percentiles read from runtime histograms (resultlog/dashboard/histogram.py): within
the stated relative error of PostgreSQL's percentile_cont over the same runtimes."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, strategies as st

from resultlog.dashboard.histogram import (
    MAX_RELATIVE_ERROR, SMALLEST_RUNTIME_S, ZERO_BUCKET, bucket_of, middle, percentiles)


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between order statistics."""
    xs = sorted(values)
    rank = q * (len(xs) - 1)
    j = math.floor(rank)
    f = rank - j
    return xs[j] if f == 0 else (1 - f) * xs[j] + f * xs[j + 1]


runtimes = st.one_of(st.just(0.0), st.floats(min_value=SMALLEST_RUNTIME_S, max_value=1e7))


@given(st.lists(runtimes, min_size=1, max_size=300),
       st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=5))
def test_percentiles_are_within_the_bound(values: list[float], qs: list[float]) -> None:
    counts = Counter(bucket_of(v) for v in values)
    for q, got in zip(qs, percentiles(counts, qs)):
        exact = percentile_cont(values, q)
        assert got is not None
        assert abs(got - exact) <= MAX_RELATIVE_ERROR * exact * (1 + 1e-9) + 1e-300


@given(st.floats(min_value=SMALLEST_RUNTIME_S, max_value=1e12))
def test_a_runtime_is_near_its_bucket_middle(x: float) -> None:
    m = middle(bucket_of(x))
    assert abs(m - x) <= MAX_RELATIVE_ERROR * x * (1 + 1e-9)


def test_zero_and_empty() -> None:
    assert bucket_of(0.0) == ZERO_BUCKET and middle(ZERO_BUCKET) == 0.0
    # A runtime that is not a number of seconds counts in no bucket (views/sql/0008).
    assert bucket_of(math.nan) is None and bucket_of(math.inf) is None
    assert bucket_of(-math.inf) == ZERO_BUCKET
    assert percentiles({}, [0.5, 0.99]) == [None, None]
    assert percentiles({ZERO_BUCKET: 3}, [0.5]) == [0.0]
    assert MAX_RELATIVE_ERROR < 0.045
    with pytest.raises(ValueError, match="within 0..1"):
        percentiles({0: 1}, [1.5])
