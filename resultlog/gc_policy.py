"""The cyclic garbage collector's settings for the processes resultlog runs itself
(``resultlog process``, ``resultlog replay`` and its workers), which fold events in bulk.

Why they differ from CPython's defaults: a fold holds each batch's rows (lists and
tuples, a few per event, up to thousands of events) alive while it writes them to
PostgreSQL and Redis. With the default young threshold of 700 allocations nearly every
young collection finds those rows alive and moves them on to the older generations,
and they soon make up the quarter of the old generation that starts a full collection:
one every ~1.5 s while folding flat out, each walking every object the process holds
(faust, aiokafka, redis-py, asyncpg: ~90,000 of them), 70–140 ms a time on a 2-core
machine. With the settings below the collector's time in a processor folding 300,000
events falls from ~1.7 s to ~0.2 s and its CPU per event by ~6%; in each of a replay's
workers, over a million events, from ~3.7 s to ~0.1 s (docs/benchmarks.md, "The garbage
collector's share of the fold").

:func:`settle_after_start` is called once the process has imported and built what it
keeps for its whole life:

- ``gc.freeze()`` moves those objects to the permanent generation, which no later
  collection walks (the modules, classes and functions of the libraries never become
  garbage);
- the young threshold is raised to :data:`YOUNG_THRESHOLD`, so a batch's rows are
  mostly freed by reference counting before a young collection ever looks at them.

Cyclic garbage is still collected, only in larger and rarer steps: at most
:data:`YOUNG_THRESHOLD` container objects wait for a young collection. Applications
that embed the emitter or read results are never touched: only these commands call it.
"""

from __future__ import annotations

import gc

#: Net container allocations between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 50_000


def settle_after_start() -> None:
    """Collect once, freeze what survives, and raise the young generation's threshold
    (the older generations' stay as they are). Call once the process has started."""
    gc.collect()  # what start-up left as garbage is freed, not frozen for good
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
