"""Runtime histograms as the rollups keep them (views/sql/0005_rollups.sql), and the
percentiles read from them as docs/dashboard.md describes. The error bound: a runtime of
at least 2^-20 s is within a factor 2^(1/16) of its bucket's geometric middle, and the
interpolation between two such values keeps that bound (:data:`MAX_RELATIVE_ERROR`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

BUCKETS_PER_OCTAVE: Final = 8
ZERO_BUCKET: Final = -32768
SMALLEST_RUNTIME_S: Final = 2.0 ** -20
MAX_RELATIVE_ERROR: Final = 2.0 ** (1 / (2 * BUCKETS_PER_OCTAVE)) - 1


def bucket_of(runtime_s: float) -> int | None:
    """The bucket of a runtime, as the SQL function ``runtime_bucket`` computes it: None
    for NaN and +infinity, which no bucket counts (views/sql/0008)."""
    if math.isnan(runtime_s) or runtime_s == math.inf:
        return None
    if runtime_s <= 0:
        return ZERO_BUCKET
    return math.floor(BUCKETS_PER_OCTAVE * math.log(max(runtime_s, SMALLEST_RUNTIME_S))
                      / math.log(2.0))


def middle(bucket: int) -> float:
    """The value a bucket stands for: its geometric middle (0 for the zero bucket)."""
    if bucket == ZERO_BUCKET:
        return 0.0
    return float(2.0 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE))


def percentiles(counts: Mapping[int, int], qs: Iterable[float]) -> list[float | None]:
    """``percentile_cont(q)`` of each ``q`` in ``qs`` (0..1) over the runtimes counted in
    ``counts`` (bucket -> how many); None for each when nothing was counted."""
    items = sorted((b, n) for b, n in counts.items() if n > 0)
    total = sum(n for _, n in items)
    qs = list(qs)
    if total == 0:
        return [None] * len(qs)

    def at(index: int) -> float:
        seen = 0
        for b, n in items:
            seen += n
            if index < seen:
                return middle(b)
        return middle(items[-1][0])

    out: list[float | None] = []
    for q in qs:
        if not 0 <= q <= 1:
            raise ValueError(f"percentile {q!r} must be within 0..1")
        rank = q * (total - 1)
        j = math.floor(rank)
        f = rank - j
        low = at(j)
        out.append(low if f == 0 else (1 - f) * low + f * at(j + 1))
    return out
