"""The rollups (views/sql/0005_rollups.sql) against a real PostgreSQL: whatever the
batches, their order and redeliveries, the trigger's rows are what
``rebuild_rollups()`` computes from the whole history and count every event of it;
the overview's per-name figures read from them agree with ``task_stats()``;
``prune`` and ``reset()`` leave them counting exactly the history that is left."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from resultlog import names
from resultlog.dashboard.histogram import MAX_RELATIVE_ERROR, bucket_of
from resultlog.dashboard.rollups import RollupReads, floor_to
from resultlog.schemas.event import ExceptionInfo, TaskEvent, now_ms
from resultlog.settings import Settings
from resultlog.views.analytics import Analytics
from resultlog.views.history import HistoryStore, stored
from resultlog.views.migrations import quote_ident
from resultlog.views.prune import prune
from tests.integration.test_task_summary import write_shuffled

HOUR_MS = 3_600_000
# The batch sizes these tests write with (the summary's tests use their own).
_SIZES = (1, 9, 80, 300)


def workload(seed: int, t0: int, tasks: int = 240, span_ms: int = 2 * HOUR_MS) -> list[TaskEvent]:
    """Tasks over ``span_ms`` from ``t0``: retried, failed, succeeded; one in five never
    names itself after RECEIVED (its later events carry no task name)."""
    rng = random.Random(seed)
    events: list[TaskEvent] = []
    for i in range(tasks):
        tid = f"task-{i}"
        t = t0 + i * span_ms // tasks
        name = f"app.t{i % 3}"
        anonymous = i % 5 == 0
        retries = rng.choice([0, 0, 1])
        events.append(TaskEvent.create(tid, "RECEIVED", timestamp=t, task_name=name))
        later = None if anonymous else name
        for a in range(retries + 1):
            at = t + 1000 * a
            events.append(TaskEvent.create(tid, "STARTED", timestamp=at + 1, attempt=a,
                                           worker="w", task_name=later))
            runtime = rng.choice([0.0, 0.0004, rng.uniform(0.01, 3.0), rng.uniform(0.01, 3.0)])
            if a < retries:
                events.append(TaskEvent.create(
                    tid, "RETRY", timestamp=at + 500, attempt=a, worker="w", task_name=later,
                    runtime=runtime, exc=ExceptionInfo("IOError", "builtins", "again")))
            else:
                failed = rng.random() < 0.2
                events.append(TaskEvent.create(
                    tid, "FAILURE" if failed else "SUCCESS", timestamp=at + 600, attempt=a,
                    worker="w", task_name=later, runtime=runtime,
                    exc=ExceptionInfo("KeyError", "builtins", "k") if failed else None))
    return events


async def rollups(pool: asyncpg.Pool, schema: str) -> tuple[set[tuple[Any, ...]], ...]:
    s = quote_ident(schema)
    minutes = await pool.fetch(f"SELECT * FROM {s}.{names.TASK_MINUTES_TABLE}")
    runtimes = await pool.fetch(f"SELECT * FROM {s}.{names.TASK_RUNTIMES_TABLE}")
    return {tuple(r) for r in minutes}, {tuple(r) for r in runtimes}


async def rebuilt(pool: asyncpg.Pool, schema: str) -> tuple[set[tuple[Any, ...]], ...]:
    """The rollups recomputed from the history (in a transaction rolled back)."""
    s = quote_ident(schema)
    async with pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute(f"SELECT {s}.{names.REBUILD_ROLLUPS_FUNCTION}("
                               "'2000-01-01 00:00+00', '2100-01-01 00:00+00')")
            return await rollups(conn, schema)  # type: ignore[arg-type]
        finally:
            await tr.rollback()


async def counts_match_history(pool: asyncpg.Pool, schema: str) -> None:
    s = quote_ident(schema)
    by_state = dict(await pool.fetch(f"SELECT state, count(*) FROM {s}.{names.HISTORY_TABLE}"
                                     " GROUP BY state"))
    sums = await pool.fetchrow(
        f"SELECT sum(received) AS \"RECEIVED\", sum(started) AS \"STARTED\","
        f" sum(retry) AS \"RETRY\", sum(failure) AS \"FAILURE\", sum(success) AS \"SUCCESS\""
        f" FROM {s}.{names.TASK_MINUTES_TABLE}")
    assert {k: v for k, v in dict(sums).items() if v} == by_state


async def test_rollups_count_the_history_whatever_the_batches(
        settings: Settings, pg_pool: asyncpg.Pool) -> None:
    schema = settings.postgres_schema
    events = workload(1, now_ms() - 3 * HOUR_MS)
    async with HistoryStore(settings) as store:
        await store.migrate()
        # Names arrive first (the RECEIVED events), so each event's name is known when
        # it is folded: then the trigger agrees with a rebuild exactly.
        received = [e for e in events if e.state == "RECEIVED"]
        await store.write_batch(stored(received), {}, consumer_group="g")
        await write_shuffled(store, [e for e in events if e.state != "RECEIVED"], seed=2, sizes=_SIZES)
        first = await rollups(pg_pool, schema)
        assert first == await rebuilt(pg_pool, schema)
        await counts_match_history(pg_pool, schema)
        assert {r[1] for r in first[0]} == {"app.t0", "app.t1", "app.t2"}
        assert {r[0] for r in first[1]} == {60, 3600}

        # The SQL bucket function is the Python one.
        runtimes = [0.0, 1e-9, 2.0 ** -20, 0.0004, 0.125, 1.0, 1.5, 2.0, 3.0, 7200.0]
        got = await pg_pool.fetch(f"SELECT r, {quote_ident(schema)}.runtime_bucket(r) AS b"
                                  " FROM unnest($1::float8[]) r", runtimes)
        assert [r["b"] for r in got] == [bucket_of(x) for x in runtimes]

        await store.reset()
        assert await rollups(pg_pool, schema) == (set(), set())
        await store.write_batch(stored(received), {}, consumer_group="g")
        await write_shuffled(store, [e for e in events if e.state != "RECEIVED"], seed=3, sizes=_SIZES)
        assert await rollups(pg_pool, schema) == first


async def test_overview_figures_agree_with_task_stats(settings: Settings,
                                                      pg_pool: asyncpg.Pool) -> None:
    t0 = now_ms() - 3 * HOUR_MS
    events = workload(5, t0, tasks=300)
    async with HistoryStore(settings) as store:
        await store.migrate()
        await store.write_batch(stored(events), {}, consumer_group="g")
    start = datetime.fromtimestamp(t0 / 1000, timezone.utc)
    # Whole hours (hour rows), minutes at both ends, and one bucket width per plot.
    since = floor_to(start, timedelta(minutes=1)) + timedelta(minutes=7)
    until = since + timedelta(hours=1, minutes=53)
    reads = RollupReads(pg_pool, settings.postgres_schema)
    async with Analytics(settings) as analytics:
        for got, exact in [
            (await reads.by_name(since, until), await analytics.stats(since, until)),
            (await reads.name_buckets("app.t1", since, until, timedelta(minutes=20)),
             await analytics.stats(since, until, bucket=timedelta(minutes=20), name="app.t1")),
        ]:
            assert len(got) == len(exact) > 0
            for g, e in zip(got, exact):
                assert (g.task_name, g.bucket_start, g.outcomes, g.succeeded, g.failed,
                        g.retried) == (e.task_name, e.bucket_start, e.outcomes, e.succeeded,
                                       e.failed, e.retried)
                for field in ("runtime_p50", "runtime_p95", "runtime_p99"):
                    a, b = getattr(g, field), getattr(e, field)
                    # Runtimes of 0 and 0.4 ms are exact or within the error bound; an
                    # interpolation between 0 and another runtime keeps the bound too.
                    assert a == pytest.approx(b, rel=MAX_RELATIVE_ERROR + 1e-9, abs=1e-12)
    series = await reads.state_series(since, until, timedelta(minutes=5))
    total = sum(v * 300 for vs in series.per_state.values() for v in vs)
    in_window = [e for e in events if since.timestamp() * 1000 <= e.timestamp < until.timestamp() * 1000]
    assert round(total) == len(in_window)


async def test_prune_leaves_rollups_of_what_is_left(settings: Settings,
                                                    pg_pool: asyncpg.Pool) -> None:
    schema = settings.postgres_schema
    t0 = now_ms() - 4 * HOUR_MS
    async with HistoryStore(settings) as store:
        await store.migrate()
        await store.write_batch(stored(workload(7, t0, span_ms=3 * HOUR_MS)), {},
                                consumer_group="g")
    cutoff = (t0 // HOUR_MS + 2) * HOUR_MS + 17 * 60_000 + 123  # within an hour
    await prune(settings, cutoff)
    s = quote_ident(schema)
    assert await pg_pool.fetchval(f"SELECT min(ts) FROM {s}.{names.HISTORY_TABLE}") >= \
        datetime.fromtimestamp(cutoff / 1000, timezone.utc)
    assert await rollups(pg_pool, schema) == await rebuilt(pg_pool, schema)
    await counts_match_history(pg_pool, schema)
    oldest = await pg_pool.fetchval(f"SELECT min(start) FROM {s}.{names.TASK_RUNTIMES_TABLE}")
    assert oldest == datetime.fromtimestamp(cutoff // HOUR_MS * 3600, timezone.utc)
