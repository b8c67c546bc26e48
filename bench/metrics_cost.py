"""What the processor's metrics cost per batch and per scrape (no services needed).

    .venv/bin/python -m bench.metrics_cost

Times ProcessorMetrics.batch_written (what the fold engine calls once per written
batch) on a 5,000-event and a 4-event batch, and one scrape of the whole registry
(8 partitions), as docs/operations.md reports them.
"""

from __future__ import annotations

import timeit

from prometheus_client import generate_latest

from resultlog.processors.foldstatus import FoldStatus, PartitionProgress
from resultlog.processors.metrics import ProcessorMetrics
from resultlog.views.history import STATE_COLUMN


def main() -> None:
    status = FoldStatus(True, {p: PartitionProgress(100, 120) for p in range(8)}, 0.5, False, False, 0)
    metrics = ProcessorMetrics(lambda: status, 10_000)
    rows = []
    for i in range(5000):
        row: list[object] = [None] * (STATE_COLUMN + 17)
        row[STATE_COLUMN] = ("RECEIVED", "STARTED", "SUCCESS")[i % 3]
        rows.append(tuple(row))
    n = 2000
    t = timeit.timeit(lambda: metrics.batch_written(rows, 0.01, 0.005, 0), number=n) / n
    print(f"batch_written, 5,000-event batch: {t * 1e6:,.0f} us per batch = {t / 5000 * 1e9:.0f} ns per event")
    small = rows[:4]
    n = 20_000
    t = timeit.timeit(lambda: metrics.batch_written(small, 0.0004, 0.0003, 0), number=n) / n
    print(f"batch_written, 4-event batch: {t * 1e6:.1f} us per batch")
    n = 500
    t = timeit.timeit(lambda: generate_latest(metrics.registry), number=n) / n
    print(f"one scrape (8 partitions): {t * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
