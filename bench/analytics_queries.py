"""Latency of the analytics queries on a history of one million rows.

    .venv/bin/python bench/analytics_queries.py                  # 1,000,000 rows, 7 runs each
    .venv/bin/python bench/analytics_queries.py --rows 200000 --runs 11 --keep

Loads ``--rows`` events (about 3.2 per task: RECEIVED, STARTED, then SUCCESS, FAILURE
or RETRY and a second attempt) over the two days before now, across 50 task names,
with ``HistoryStore.write_batch`` into a throwaway schema on ``RESULTLOG_POSTGRES_DSN``
(default: the local stack), then ANALYZE. It times, over several runs, each with other
arguments than the last:

  (a) ``task_stats()`` for one task name over one hour (and over one hour, all names),
  (b) one task's history (``HistoryStore.history``: every event, in the fold's order),
  (c) one task's row of the ``tasks`` view,

prints the median (and the range), then the EXPLAIN (ANALYZE, BUFFERS) plan of each,
which shows the indexes used. The schema is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from resultlog.schemas.event import ExceptionInfo, TaskEvent, now_ms
from resultlog.settings import Settings
from resultlog.views.analytics import Analytics
from resultlog.views.history import HistoryStore, StoredEvent
from resultlog.views.migrations import quote_ident

NAMES = [f"proj.tasks.job_{i:02d}" for i in range(50)]
SPAN_MS = 2 * 86_400_000
PARTITIONS = 8
BATCH = 5000


def task_events(rnd: random.Random, n: int, t0: int, index: int) -> list[TaskEvent]:
    """One task's events: 85% succeed, 8% fail, 7% retry once then succeed."""
    task_id = f"{uuid.UUID(int=rnd.getrandbits(128)).hex}"
    name = NAMES[index % len(NAMES)]
    worker = f"celery@worker-{rnd.randrange(16):02d}"
    runtime = rnd.lognormvariate(-1.0, 1.0)
    common: dict[str, Any] = {"task_name": name, "worker": worker}
    out = [
        TaskEvent.create(task_id, "RECEIVED", timestamp=t0, args=[index, "s3://bucket/key"],
                         kwargs={"quality": 85}, **common),
        TaskEvent.create(task_id, "STARTED", timestamp=t0 + 5, **common),
    ]
    end = t0 + 5 + int(runtime * 1000)
    fate = rnd.random()
    if fate < 0.85:
        out.append(TaskEvent.create(task_id, "SUCCESS", timestamp=end, result={"ok": True},
                                    runtime=runtime, **common))
    elif fate < 0.93:
        out.append(TaskEvent.create(
            task_id, "FAILURE", timestamp=end, runtime=runtime, traceback="Traceback ...",
            exc=ExceptionInfo("TimeoutError", "builtins", "upstream timed out"), **common))
    else:
        out.append(TaskEvent.create(
            task_id, "RETRY", timestamp=end, eta=end + 1000,
            exc=ExceptionInfo("ConnectionError", "builtins", "reset"), **common))
        out.append(TaskEvent.create(task_id, "STARTED", timestamp=end + 1000, attempt=1, **common))
        out.append(TaskEvent.create(task_id, "SUCCESS", timestamp=end + 1000 + int(runtime * 1000),
                                    attempt=1, result={"ok": True}, runtime=runtime, **common))
    return out


def generate(rows: int, end_ms: int, seed: int = 1) -> Iterator[list[StoredEvent]]:
    """Batches of stored events, ``rows`` in all, task start times uniform over two days."""
    rnd = random.Random(seed)
    offsets = [0] * PARTITIONS
    batch: list[StoredEvent] = []
    produced = 0
    index = 0
    while produced < rows:
        t0 = end_ms - SPAN_MS + rnd.randrange(SPAN_MS - 60_000)
        for e in task_events(rnd, rows, t0, index)[: rows - produced]:
            p = index % PARTITIONS
            batch.append(StoredEvent(e, "resultlog.events", p, offsets[p]))
            offsets[p] += 1
            produced += 1
        index += 1
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def load(store: HistoryStore, rows: int, end_ms: int) -> list[str]:
    """Write the history; returns a sample of task ids to look up."""
    started = time.perf_counter()
    sample: list[str] = []
    written = 0
    for batch in generate(rows, end_ms):
        offsets: dict[tuple[str, int], int] = {}
        for s in batch:
            key = (s.topic, s.partition)
            offsets[key] = max(offsets.get(key, 0), s.offset + 1)
        written += await store.write_batch(batch, offsets, consumer_group="bench")
        if len(sample) < 1000:
            sample.append(batch[len(batch) // 2].event.task_id)
        if written % 100_000 < BATCH:
            print(f"  {written:,} rows, {written / (time.perf_counter() - started):,.0f} rows/s",
                  flush=True)
    assert written == rows, (written, rows)
    await store.pool.execute(f"ANALYZE {quote_ident(store.settings.postgres_schema)}.task_events")
    print(f"loaded {written:,} rows in {time.perf_counter() - started:.1f} s (and ANALYZE)")
    return sample


async def timed(runs: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    await call(-1)  # warm the connection's statement cache
    times = []
    for i in range(runs):
        t = time.perf_counter()
        await call(i)
        times.append((time.perf_counter() - t) * 1000)
    return times


def report(label: str, times: list[float]) -> None:
    print(f"{label:<48} median {statistics.median(times):7.2f} ms"
          f"   (min {min(times):.2f}, max {max(times):.2f}, {len(times)} runs)")


async def explain(store: HistoryStore, title: str, query: str, *args: Any) -> None:
    rows = await store.pool.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {query}", *args)
    print(f"\n-- {title}\n-- {query}\n" + "\n".join(r[0] for r in rows))


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the schema (printed)")
    parser.add_argument("--schema", help="reuse this already loaded schema instead of loading")
    args = parser.parse_args()
    schema = args.schema or f"bench_analytics_{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(postgres_schema=schema)
    end_ms = now_ms()
    async with HistoryStore(settings) as store:
        try:
            if args.schema:
                sample = [r["task_id"] for r in await store.pool.fetch(
                    f"SELECT task_id FROM {quote_ident(schema)}.task_events"
                    " TABLESAMPLE SYSTEM (1) LIMIT 1000")]
                end_ms = await store.pool.fetchval(
                    f"SELECT {quote_ident(schema)}.timestamptz_to_ms(max(ts)) + 60000"
                    f" FROM {quote_ident(schema)}.task_events")
            else:
                await store.migrate()
                sample = await load(store, args.rows, end_ms)
            await run_queries(settings, store, sample, end_ms, args.runs)
        finally:
            if args.keep or args.schema:
                print(f"\nschema kept: {schema}")
            else:
                await store.pool.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")


async def run_queries(settings: Settings, store: HistoryStore, sample: list[str], end_ms: int,
                      runs: int) -> None:
    rnd = random.Random(2)
    end = datetime.fromtimestamp(end_ms / 1000, timezone.utc)
    # Whole hours inside the loaded span, a different one (and name) per run.
    hours = [end.replace(minute=0, second=0, microsecond=0) - timedelta(hours=h)
             for h in range(2, 46)]
    hour_of = [rnd.choice(hours) for _ in range(runs + 1)]
    name_of = [rnd.choice(NAMES) for _ in range(runs + 1)]
    task_of = [rnd.choice(sample) for _ in range(runs + 1)]
    async with Analytics(settings, store.pool) as analytics:
        print()
        report("(a) task_stats: one name, one hour", await timed(runs, lambda i: analytics.stats(
            hour_of[i], hour_of[i] + timedelta(hours=1), name=name_of[i])))
        report("(a) task_stats: one name, one hour, 5m buckets", await timed(
            runs, lambda i: analytics.stats(hour_of[i], hour_of[i] + timedelta(hours=1),
                                            bucket=timedelta(minutes=5), name=name_of[i])))
        report("(a) task_stats: all 50 names, one hour", await timed(
            runs, lambda i: analytics.stats(hour_of[i], hour_of[i] + timedelta(hours=1))))
        report("(b) history of one task", await timed(
            runs, lambda i: store.history(task_of[i])))
        report("(c) tasks view, one task", await timed(runs, lambda i: analytics.task(task_of[i])))
        report("(c) attempts view, one task", await timed(
            runs, lambda i: analytics.attempts(task_of[i])))
        s = quote_ident(settings.postgres_schema)
        t = time.perf_counter()
        states = await store.pool.fetch(
            f"SELECT state, count(*) AS n FROM {s}.tasks GROUP BY state ORDER BY state")
        took = (time.perf_counter() - t) * 1000
        counts = ", ".join(f"{r['state']} {r['n']:,}" for r in states)
        print(f"{'(d) whole tasks view: count per state':<48} once   {took:9.0f} ms   ({counts})")

    hour, name, task = hour_of[0], name_of[0], task_of[0]
    await explain(store, "(a) one name, one hour",
                  f"SELECT * FROM {s}.task_stats(NULL, $1, $2, $3)",
                  hour, hour + timedelta(hours=1), name)
    await explain(store, "(b) history of one task",
                  f"SELECT * FROM {s}.task_events WHERE task_id = $1 ORDER BY token", task)
    await explain(store, "(c) tasks view, one task",
                  f"SELECT * FROM {s}.tasks WHERE task_id = $1", task)


if __name__ == "__main__":
    asyncio.run(main())
