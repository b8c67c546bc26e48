"""Sustained fold throughput of one processor process (or a few) into both views.

Pre-loads N events (default 300,000: 100,000 tasks x STARTED/SUCCESS/+1 RECEIVED)
into a fresh topic, starts `resultlog process` (``--processors 2``: two of them in one
consumer group, sharing the partitions), and measures how fast the history
table and the Redis view fill, excluding the processor's start-up (the clock starts
at the first written row). Prints events/s, and the processor's own CPU time per event
(the figure to compare on a shared machine: the rate moves with the load), and where the
stores run on this machine (the local stack), theirs: PostgreSQL's (all its processes)
and Redis's, with the time Redis spent inside the fold script and in the commands it
calls (``INFO commandstats``, before and after: wall time, as Redis counts it, so it
includes any time Redis waited for a core), and how busy the whole machine was.

``--redis-latency``: while the processor folds, another client PINGs Redis every 2 ms
and the round trips' p50, p99, p99.9 and maximum are printed: what any other Redis client
(a waiting ``get()``, a Celery broker on the same Redis) sees while the view is written
in batches (Redis runs each fold call alone).

``--history-rows N``: before the processor starts, the run's schema is migrated and its
history filled with N rows of other, older tasks (``bench/history_fill.py``: through
the history's triggers, so task_summary and the rollups grow too); the fill's time and
the tables' sizes are printed, then the timed fold runs as without it.

``--task-ids uuid``: the events' task ids are uuids (as Celery's and Chicory's are)
instead of ``task-<n>``. Sequential ids fall in one narrow range of task_summary's
primary key, so their upserts touch few of its pages; uuids touch pages all over it,
which is what a large history costs a real fold.

``--spread W``: the log holds the tasks in waves of W, each wave's RECEIVED beside the
wave before's STARTED and the SUCCESS of the wave before that, as live traffic spreads a
task's events over time. When a partition's share of a wave (3W events over the
topic's partitions) is more than a batch (5,000 events; W = 20,000 with 8 partitions),
the three events of a task fall into three batches: its Redis hash and its
task_summary row are written three times instead of once (each a state change, so
none of the summary's updates is HOT). The default, 0, puts each task's three events
next to each other.

    .venv/bin/python -m bench.fold_throughput [--events 300000] [--processors 1]
        [--history-rows 0] [--history-days 14] [--task-ids sequential|uuid] [--spread 0]
        [--redis-latency]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping

import asyncpg
from aiokafka import AIOKafkaProducer

from bench._common import (CpuMeter, cleanup, cpu_seconds, isolated, local_servers_cpu, percentiles,
                           start_processor)
from bench.history_fill import describe, fill_history
from resultlog.producers.options import DEFAULT_COMPRESSION
from resultlog.producers.topics import ensure_topics
from resultlog.redis_access import sync_client
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.views import RedisView


def task_id(k: int, kind: str) -> str:
    """Task ``k``'s id: ``task-<k>``, or a uuid derived from k (never one of
    bench/history_fill.py's, which hash another prefix)."""
    if kind == "uuid":
        return str(uuid.UUID(bytes=hashlib.md5(f"fold-task-{k}".encode()).digest()))
    return f"task-{k}"


def event_order(n_tasks: int, spread: int) -> Iterator[tuple[int, int]]:
    """(task, step) in log order: each task's steps 0, 1, 2 next to each other, or with
    ``spread`` W > 0 in waves of W tasks, step s of wave w beside step 0 of wave w + s."""
    if spread == 0:
        for k in range(n_tasks):
            yield k, 0
            yield k, 1
            yield k, 2
        return
    waves = -(-n_tasks // spread)
    for wave in range(waves + 2):
        for j in range(spread):
            for step in range(3):
                k = (wave - step) * spread + j
                if 0 <= k < n_tasks:  # waves before the first and after the last: none
                    yield k, step


async def preload(settings, n_events: int, ids: str, spread: int = 0) -> None:  # type: ignore[no-untyped-def]
    await ensure_topics(settings, settings.events_topic)
    codec = Codec()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                enable_idempotence=True, linger_ms=20, max_batch_size=512 * 1024,
                                # The emitter's, as a live processor reads (gzip until
                                # 30 Nov 2026: docs/benchmarks.md, "A fast spell ...").
                                compression_type=DEFAULT_COMPRESSION)
    await producer.start()
    try:
        states = (State.RECEIVED, State.STARTED, State.SUCCESS)
        for k, step in event_order(n_events // 3, spread):
            i = 3 * k + step
            task = task_id(k, ids)
            ev = TaskEvent.create(task, states[step], result=i if step == 2 else None,
                                  task_name="bench.add", args=[i, 1] if step == 0 else None, worker="w1")
            await producer.send(settings.events_topic, codec.encode(ev), key=task.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--processors", type=int, default=1, help="processes in the consumer group")
    ap.add_argument("--history-rows", type=int, default=0,
                    help="rows of older tasks in the history before the fold starts")
    ap.add_argument("--history-days", type=float, default=14.0,
                    help="days before now over which those rows are spread")
    ap.add_argument("--task-ids", choices=("sequential", "uuid"), default="sequential",
                    help="task-<n> (default) or uuids, which spread over task_summary's index")
    ap.add_argument("--spread", type=int, default=0, metavar="W",
                    help="tasks per wave when a task's three events lie waves apart "
                         "(as live traffic spreads them); 0: next to each other")
    ap.add_argument("--redis-latency", action="store_true",
                    help="PING Redis every 2 ms during the fold and print the round trips")
    args = ap.parse_args()
    if args.processors < 1:
        raise SystemExit("--processors must be at least 1")
    if args.history_rows < 0:
        raise SystemExit("--history-rows must be 0 or more")
    if args.history_days <= 0:
        raise SystemExit("--history-days must be more than 0")
    if args.spread < 0:
        raise SystemExit("--spread must be 0 (events next to each other) or more")
    n = args.events - args.events % 3
    settings = isolated("fold", result_ttl_s=0)
    try:
        await run(settings, n, args.processors, args.history_rows, args.history_days,
                  args.redis_latency, args.task_ids, args.spread)
    finally:
        await cleanup(settings)


class StoreMeter:
    """The stores' CPU time while the processor folds, when they run on this machine, and
    what Redis spent in each command."""

    def __init__(self, settings, servers: Mapping[str, Callable[[], float]]) -> None:  # type: ignore[no-untyped-def]
        self.client = sync_client(settings)
        self.cpu = CpuMeter({name: read for name, read in servers.items() if name in ("PostgreSQL", "Redis")})
        self.before = self._commands()

    def _commands(self) -> dict[str, tuple[int, int]]:
        return {name.removeprefix("cmdstat_"): (v["calls"], v["usec"])
                for name, v in self.client.info("commandstats").items()}

    def report(self, events: int) -> str:
        stats, used_cpu, cores = self._commands(), self.cpu.seconds(), self.cpu.machine_cores()
        self.client.close()

        def per_event(seconds: float) -> str:
            return f"{seconds * 1e6 / events:.1f} us"
        parts = [f"{name} {per_event(used_cpu[name]) if name in used_cpu else 'not on this machine'}"
                 for name in ("PostgreSQL", "Redis")]
        used = {}
        for name, (calls, usec) in stats.items():
            calls0, usec0 = self.before.get(name, (0, 0))
            used[name] = (calls - calls0, (usec - usec0) / 1e6)
        script = used.get("evalsha", (0, 0.0))[1] + used.get("eval", (0, 0.0))[1]
        # Commands a script calls are counted both on their own and in the script's time.
        inside = sorted(((secs, name) for name, (calls, secs) in used.items()
                         if name not in ("evalsha", "eval") and calls >= events // 100),
                        reverse=True)
        commands = ", ".join(f"{name} {per_event(secs)}" for secs, name in inside[:4])
        return (f"stores' CPU per event: {'; '.join(parts)} (time inside fold.lua "
                f"{per_event(script)}, of which in the commands it calls: {commands or 'none'}); "
                f"the whole machine: {cores:.2f} of {os.cpu_count()} cores busy")


class RedisPinger(threading.Thread):
    """PINGs Redis every :data:`PING_EVERY_S` until stopped; keeps the round trips (ms)."""

    PING_EVERY_S = 0.002

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.client = sync_client(settings)  # the product's client: TLS and credentials too
        self.stopped = threading.Event()
        self.round_trips: list[float] = []

    def run(self) -> None:
        while not self.stopped.wait(self.PING_EVERY_S):
            began = time.perf_counter_ns()
            self.client.ping()
            self.round_trips.append((time.perf_counter_ns() - began) / 1e6)

    def report(self) -> str:
        self.stopped.set()
        self.join()
        self.client.close()
        if len(self.round_trips) < 2:
            return "a Redis client's PING during the fold: too few round trips to say"
        p50, p99, p999 = percentiles(self.round_trips, 50, 99, 99.9)
        return (f"a Redis client's PING during the fold ({len(self.round_trips):,} round trips): "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 {p999:.2f} ms, "
                f"max {max(self.round_trips):.2f} ms")


async def run(settings, n: int, processors: int, history_rows: int,  # type: ignore[no-untyped-def]
              history_days: float, redis_latency: bool = False, ids: str = "sequential",
              spread: int = 0) -> None:
    if history_rows:
        print(f"filling the history of {settings.postgres_schema} with {history_rows:,} rows ...",
              flush=True)
        print(describe(await fill_history(settings, history_rows, history_days)), flush=True)
    print(f"pre-loading {n:,} events into {settings.events_topic} ...", flush=True)
    t0 = time.monotonic()
    await preload(settings, n, ids, spread)
    print(f"  pre-loaded in {time.monotonic() - t0:.1f}s", flush=True)
    servers = await local_servers_cpu(settings)
    procs = [start_processor(settings) for _ in range(processors)]
    conn = None
    try:
        while conn is None:
            try:
                conn = await asyncpg.connect(settings.postgres_dsn)
                # Only whether the processor has migrated the schema: count(*) would scan a
                # --history-rows history (~0.9 s for 10 million rows) while it starts.
                await conn.fetchval(f'SELECT 1 FROM "{settings.postgres_schema}".task_events LIMIT 1')
            except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError,
                    asyncpg.UndefinedFunctionError):
                if conn:
                    await conn.close()
                conn = None
                await asyncio.sleep(0.05)
        count = 0
        first_at = None
        # Progress from the offsets table (a few rows), not count(*) over the history:
        # counting a growing table every 50 ms would steal a core from the processor.
        progress_sql = (f'SELECT coalesce(sum(next_offset), 0)::bigint FROM "{settings.postgres_schema}".consumer_offsets'
                        " WHERE consumer_group = $1")
        while count < n:
            count = await conn.fetchval(progress_sql, settings.consumer_group)
            if count and first_at is None:
                first_at, first_count = time.monotonic(), count
                first_cpu = sum(cpu_seconds(p.pid) for p in procs)
                stores = StoreMeter(settings, servers)
                if redis_latency:
                    pinger = RedisPinger(settings)
                    pinger.start()
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a processor died")
            await asyncio.sleep(0.05)
        history_done = time.monotonic()
        async with RedisView(settings) as view:
            while True:
                last = await view.get(task_id(n // 3 - 1, ids))
                if last is not None and last.state is State.SUCCESS:
                    break
                await asyncio.sleep(0.01)
        done = time.monotonic()
        stores_used = stores.report(n - first_count)
        pinged = pinger.report() if redis_latency else None
        # Counted after the clock stops: over a large history the count takes seconds.
        total = await conn.fetchval(f'SELECT count(*) FROM "{settings.postgres_schema}".task_events')
        assert total == n + history_rows, f"history holds {total} rows, expected {n + history_rows}"
        cpu = sum(cpu_seconds(p.pid) for p in procs) - first_cpu
        assert first_at is not None
        rate = (n - first_count) / (done - first_at)
        order = f"spread in waves of {spread:,} tasks" if spread else "next to each other"
        print(f"fold throughput (history + Redis, {len(procs)} processor(s), {ids} task ids, "
              f"a task's events {order}): "
              f"{rate:,.0f} events/s "
              f"({n:,} events; history complete after {history_done - first_at:.2f}s, "
              f"Redis after {done - first_at:.2f}s)")
        print(f"processor CPU (all processes): {cpu * 1e6 / (n - first_count):.1f} us per event "
              f"({cpu:.2f}s user+system for {n - first_count:,} events)")
        print(stores_used)
        if pinged is not None:
            print(pinged)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        if conn is not None:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
