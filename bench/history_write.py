"""Rows/s of HistoryStore.write_batch at several batch sizes, on the configured Postgres.

    .venv/bin/python bench/history_write.py                  # 100,000 events x 500/2000/5000
    .venv/bin/python bench/history_write.py --events 200000 --repeat 3 --batch 2000
    .venv/bin/python bench/history_write.py --without-summary   # task_summary's trigger off
    .venv/bin/python bench/history_write.py --without-rollups   # the rollups' trigger off

Uses ``RESULTLOG_POSTGRES_DSN`` (default: the local stack, ``resultlog dev up``) and a
throwaway schema ``bench_history`` that is dropped at the end. Events look like a real
workload: each task emits RECEIVED (args, kwargs), STARTED and SUCCESS (a result), with
current timestamps (ten events a millisecond: 10,000 a minute), a worker name, a trace
header, and one of ten task names. Each batch also upserts the
offsets of 8 partitions, as the processor does. The processor must sustain 20,000
events/s into both views, so this should be well above that.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from resultlog import names
from resultlog.schemas.event import TaskEvent, now_ms
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore, StoredEvent
from resultlog.views.migrations import quote_ident

SCHEMA = "bench_history"
PARTITIONS = 8


def make_events(n: int) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    offsets = [0] * PARTITIONS
    t0 = now_ms()
    for i in range(n):
        task_id = f"task-{i // 3}"
        kind = i % 3
        state = ("RECEIVED", "STARTED", "SUCCESS")[kind]
        event = TaskEvent.create(
            task_id, state,
            timestamp=t0 + i // 10,
            task_name=f"proj.tasks.t{(i // 3) % 10}",
            worker="celery@worker-07.example.internal",
            args=[f"s3://bucket/{uuid.uuid4().hex}.png", 640] if kind == 0 else None,
            kwargs={"quality": 85, "format": "webp"} if kind == 0 else None,
            result={"width": 640, "height": 480, "bytes": 48213} if kind == 2 else None,
            runtime=0.05 + (i % 97) / 1000 if kind == 2 else None,
            meta={"trace_id": uuid.uuid4().hex},
        )
        p = hash(task_id) % PARTITIONS
        out.append(StoredEvent(event, "resultlog.events", p, offsets[p]))
        offsets[p] += 1
    return out


async def run_once(store: HistoryStore, events: list[StoredEvent], batch: int) -> float:
    await store.reset()
    started = time.perf_counter()
    for i in range(0, len(events), batch):
        chunk = events[i:i + batch]
        offsets: dict[tuple[str, int], int] = {}
        for s in chunk:
            key = (s.topic, s.partition)
            offsets[key] = max(offsets.get(key, 0), s.offset + 1)
        inserted = await store.write_batch(chunk, offsets, consumer_group="bench")
        assert inserted == len(chunk), (inserted, len(chunk))
    return len(events) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--without-summary", action="store_true",
                        help="disable the trigger that keeps task_summary, to see its cost")
    parser.add_argument("--without-rollups", action="store_true",
                        help="disable the trigger that keeps the per-minute rollups")
    args = parser.parse_args()
    batches = args.batch or [500, 2000, 5000]
    settings = Settings.from_env(postgres_schema=SCHEMA)
    events = make_events(args.events)
    async with HistoryStore(settings) as store:
        await store.pool.execute(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        await store.migrate()
        if args.without_summary:
            await store.pool.execute(
                f"ALTER TABLE {quote_ident(SCHEMA)}.{names.HISTORY_TABLE}"
                f" DISABLE TRIGGER {names.TASK_SUMMARY_TRIGGER}")
        if args.without_rollups:
            await store.pool.execute(
                f"ALTER TABLE {quote_ident(SCHEMA)}.{names.HISTORY_TABLE}"
                f" DISABLE TRIGGER {names.ROLLUPS_TRIGGER}")
        try:
            version = await store.pool.fetchval("SHOW server_version")
            print(f"PostgreSQL {version}; {args.events:,} events per run, best and median of {args.repeat}")
            for batch in batches:
                rates = [await run_once(store, events, batch) for _ in range(args.repeat)]
                print(f"batch {batch:>5}: best {max(rates):>9,.0f} rows/s   "
                      f"median {statistics.median(rates):>9,.0f} rows/s   "
                      f"runs: {', '.join(f'{r:,.0f}' for r in rates)}")
        finally:
            await store.pool.execute(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")


if __name__ == "__main__":
    asyncio.run(main())
