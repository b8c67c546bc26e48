"""task_summary (views/sql/0004_task_summary.sql) against a real PostgreSQL: whatever the
batches and their order, and with duplicates, it holds each task's fold winner, the
same as the ``tasks`` view computes from the whole history; ``reset()`` empties it; and
a schema migrated with history already in it gets its summary from that history."""

from __future__ import annotations

import random
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.schemas.event import ExceptionInfo, TaskEvent, now_ms
from resultlog.settings import Settings
from resultlog.views import migrations
from resultlog.views.history import HistoryStore, stored
from resultlog.views.migrations import quote_ident


def workload(seed: int) -> list[TaskEvent]:
    rng = random.Random(seed)
    t0 = now_ms() - 60_000
    events: list[TaskEvent] = []
    for i in range(150):
        tid = f"task-{i}"
        t = t0 + i * 10
        name = f"app.t{i % 4}"
        retries = rng.choice([0, 0, 1, 2])
        events.append(TaskEvent.create(tid, "RECEIVED", timestamp=t, task_name=name))
        for a in range(retries + 1):
            w = f"w{rng.randrange(3)}"
            events.append(TaskEvent.create(tid, "STARTED", timestamp=t + 100 * a + 1, attempt=a,
                                           worker=w))
            if a < retries:
                events.append(TaskEvent.create(
                    tid, "RETRY", timestamp=t + 100 * a + 50, attempt=a, worker=w,
                    exc=ExceptionInfo("IOError", "builtins", "again")))
        last = rng.choice(["SUCCESS", "FAILURE", "STARTED"])
        if last != "STARTED":
            events.append(TaskEvent.create(
                tid, last, timestamp=t + 100 * retries + 60, attempt=retries, worker="wz",
                exc=None if last == "SUCCESS" else ExceptionInfo("KeyError", "builtins", "k")))
    return events


async def summary(pool: asyncpg.Pool, schema: str) -> dict[str, tuple[Any, ...]]:
    rows = await pool.fetch(
        f"SELECT task_id, first_seen, last_seen, attempt, token, state, task_name, worker,"
        f" exception_type FROM {quote_ident(schema)}.{names.TASK_SUMMARY_TABLE}")
    return {r["task_id"]: tuple(r) for r in rows}


async def from_view(pool: asyncpg.Pool, schema: str) -> dict[str, tuple[Any, ...]]:
    s = quote_ident(schema)
    rows = await pool.fetch(
        f"SELECT t.task_id, t.first_seen, t.retries, t.token, t.state, t.task_name,"
        f" t.exception_type FROM {s}.{names.TASKS_VIEW} t")
    return {r["task_id"]: tuple(r) for r in rows}


async def write_shuffled(store: HistoryStore, events: list[TaskEvent], seed: int,
                         sizes: tuple[int, ...] = (1, 7, 60, 250)) -> None:
    """Write ``events`` shuffled, in batches of random ``sizes`` (both the one-statement
    and the COPY paths), some of them twice: a redelivery must change nothing."""
    rng = random.Random(seed)
    rows = stored(events)
    rng.shuffle(rows)
    i = 0
    while i < len(rows):
        n = rng.choice(sizes)
        batch = rows[i:i + n]
        await store.write_batch(batch, {}, consumer_group="g")
        if rng.random() < 0.3:
            await store.write_batch(batch, {}, consumer_group="g")
        i += n


async def test_summary_is_the_fold_whatever_the_batches(settings: Settings, pg_pool: asyncpg.Pool) -> None:
    events = workload(1)
    schema = settings.postgres_schema
    async with HistoryStore(settings) as store:
        await store.migrate()
        await write_shuffled(store, events, seed=2)
        first = await summary(pg_pool, schema)
        assert len(first) == 150
        view = await from_view(pg_pool, schema)
        for task_id, (_, first_seen, _, attempt, token, state, name, _, exc) in first.items():
            assert view[task_id] == (task_id, first_seen, attempt, token, state, name, exc)
        # The worker (and name) of the greatest-token event that carries one.
        for field, column in (("worker", 7), ("task_name", 6)):
            latest: dict[str, TaskEvent] = {}
            for e in events:
                if getattr(e, field) is not None and (
                        e.task_id not in latest or e.token > latest[e.task_id].token):
                    latest[e.task_id] = e
            assert {t: row[column] for t, row in first.items()} == \
                {t: getattr(latest[t], field) if t in latest else None for t in first}

        await store.reset()
        assert await summary(pg_pool, schema) == {}
        await write_shuffled(store, events, seed=3)
        assert await summary(pg_pool, schema) == first


async def test_migration_folds_an_existing_history(settings: Settings, pg_pool: asyncpg.Pool) -> None:
    events = workload(4)
    schema = settings.postgres_schema
    async with HistoryStore(settings) as store:
        await store.migrate()
        await store.write_batch(stored(events), {}, consumer_group="g")
        expected = await summary(pg_pool, schema)
        s = quote_ident(schema)
        # Back to before 0004, keeping the history: the migration must fold it.
        await pg_pool.execute(
            f"DROP TABLE {s}.{names.TASK_SUMMARY_TABLE}; DROP FUNCTION {s}.fold_task_summary CASCADE;"
            f" DROP INDEX {s}.task_events_parent_id_idx, {s}.task_events_group_id_idx,"
            f" {s}.task_events_chord_id_idx;"
            f" DELETE FROM {s}.{names.MIGRATIONS_TABLE} WHERE version = 4")
        async with pg_pool.acquire() as conn:
            assert await migrations.migrate(conn, schema) == [4]
    assert await summary(pg_pool, schema) == expected
