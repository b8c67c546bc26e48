"""Sizing figures for docs/operations.md, measured on the local stack.

Emits --events events (default 1,000,000: a third as many tasks with uuid4 ids, each
RECEIVED with its name, args and kwargs, STARTED on a worker, SUCCESS with a runtime
and a JSON result of about --result-bytes bytes of random hex) with the emitter (its
default batching and compression), folds them with one `resultlog process`, then
measures:

- the events topic in the local stack's Kafka data directory: log bytes per event;
- Redis: MEMORY USAGE of every key under the run's prefix, per result;
- PostgreSQL: pg_total_relation_size of every table of the run's schema (heap, TOAST
  and indexes), per million events;
- with --restore: how long `resultlog replay --fresh` takes to rebuild each store
  from the log (Redis only, then the history only), as a restore would.

Everything is in an isolated topic/prefix/schema, deleted at the end.

    .venv/bin/python -m bench.sizing [--events 1000000] [--result-bytes 100] [--restore]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio

from bench._common import cleanup, isolated, start_processor
from resultlog.processors.replay import replay
from resultlog.producers import Emitter
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings


async def emit(settings: Settings, n_events: int, result_bytes: int) -> None:
    # Random task ids (uuid4, as Celery's) and a random result: repetitive data would
    # compress to nothing in the log and understate every figure.
    rng = random.Random(18)
    async with Emitter(settings) as emitter:
        for i in range(n_events // 3):
            task = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            payload = rng.randbytes(max(0, result_bytes - 30) // 2).hex()
            await emitter.emit(TaskEvent.create(task, State.RECEIVED, task_name="billing.invoice",
                                                args=[i, "EUR"], kwargs={"retry": True}))
            await emitter.emit(TaskEvent.create(task, State.STARTED, task_name="billing.invoice",
                                                worker="celery@worker-03"))
            await emitter.emit(TaskEvent.create(task, State.SUCCESS, task_name="billing.invoice",
                                                worker="celery@worker-03", runtime=0.0421,
                                                result={"invoice": i, "pdf": payload}))


async def fold(settings: Settings, n_events: int) -> float:
    """Runs one processor until the history holds every event; returns events/s."""
    proc = start_processor(settings)
    sql = (f'SELECT coalesce(sum(next_offset), 0)::bigint FROM "{settings.postgres_schema}".consumer_offsets'
           " WHERE consumer_group = $1")
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        started = None
        done = 0
        while done < n_events:
            if proc.poll() is not None:
                raise SystemExit("the processor died")
            try:
                done = await conn.fetchval(sql, settings.consumer_group)
            except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                done = 0
            if done and started is None:
                started, first = time.monotonic(), done
            await asyncio.sleep(0.2)
        assert started is not None
        return (done - first) / max(time.monotonic() - started, 1e-9)
    finally:
        proc.terminate()
        proc.wait()
        await conn.close()


def log_bytes(settings: Settings) -> int | None:
    """Bytes of the events topic in the local stack's Kafka data directory (one replica);
    None when the broker is not the local stack's."""
    data = Path(settings.dev_dir) / "kafka" / "data"
    if not data.is_dir():
        return None
    # Only the .log segments: Kafka preallocates each active segment's index files.
    return sum(f.stat().st_size for d in data.glob(f"{settings.events_topic}-*")
               if d.name.rpartition("-")[2].isdigit() for f in d.glob("*.log"))


async def redis_bytes(settings: Settings) -> tuple[int, int]:
    """(keys, bytes) under the run's prefix, by MEMORY USAGE (key, value and overhead)."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    keys = total = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=5000):
            batch.append(key)
            if len(batch) == 5000:
                total += await _usage(client, batch)
                keys += len(batch)
                batch = []
        if batch:
            total += await _usage(client, batch)
            keys += len(batch)
    finally:
        await client.aclose()
    return keys, total


async def _usage(client: redis.asyncio.Redis, keys: list[bytes]) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(int(n or 0) for n in await pipe.execute())


async def pg_bytes(settings: Settings) -> tuple[int, int, int]:
    """(heap + TOAST, indexes, rows) of the run's schema."""
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(pg_table_size(c.oid)), 0)::bigint AS heap,"
            " coalesce(sum(pg_indexes_size(c.oid)), 0)::bigint AS idx"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relkind = 'r'", settings.postgres_schema)
        rows = await conn.fetchval(f'SELECT count(*) FROM "{settings.postgres_schema}".task_events')
        return int(row["heap"]), int(row["idx"]), int(rows)
    finally:
        await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--result-bytes", type=int, default=100)
    ap.add_argument("--restore", action="store_true",
                    help="then time `replay --fresh` of each store from the log")
    args = ap.parse_args()
    n = args.events - args.events % 3
    settings = isolated("sizing")
    try:
        t0 = time.monotonic()
        await emit(settings, n, args.result_bytes)
        print(f"emitted {n:,} events ({n // 3:,} tasks) in {time.monotonic() - t0:.1f}s", flush=True)
        rate = await fold(settings, n)
        print(f"folded by one processor at {rate:,.0f} events/s", flush=True)
        log = log_bytes(settings)
        keys, rbytes = await redis_bytes(settings)
        heap, idx, rows = await pg_bytes(settings)
        assert rows == n, f"history holds {rows} rows, expected {n}"
        per_m = 1_000_000 / n
        if log is not None:
            print(f"events topic on disk: {log / 2**20:,.1f} MiB = {log / n:,.0f} bytes/event "
                  f"= {log * per_m / 2**30:,.2f} GiB per million events (one replica)")
        print(f"Redis: {keys:,} keys, {rbytes / 2**20:,.1f} MiB by MEMORY USAGE = "
              f"{rbytes / (n // 3):,.0f} bytes per result ({n // 3:,} results)")
        print(f"PostgreSQL history: {(heap + idx) / 2**20:,.1f} MiB for {rows:,} events "
              f"(heap+TOAST {heap / 2**20:,.1f} MiB, indexes {idx / 2**20:,.1f} MiB) = "
              f"{(heap + idx) * per_m / 2**30:,.2f} GiB per million events")
        if args.restore:
            for label, which in (("Redis view", dict(history=False)), ("history", dict(redis=False))):
                summary = await replay(settings, fresh=True, **which)
                print(f"restore of the {label} from the log (replay --fresh): {summary.seconds:.1f}s "
                      f"for {n:,} events ({summary.rate:,.0f} events/s)", flush=True)
    finally:
        await cleanup(settings)


if __name__ == "__main__":
    asyncio.run(main())
