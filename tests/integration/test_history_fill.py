"""bench/history_fill.py against a real PostgreSQL: the rows it makes in SQL are ones the
library reads back as valid events, with the order token the library would compute,
and the history's triggers fold them into task_summary and the rollups like any rows."""

from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped]

from bench.history_fill import fill_history
from resultlog.schemas.states import State, order_token
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore
from resultlog.views.migrations import quote_ident


async def test_fill_is_history_the_library_reads(settings: Settings) -> None:
    rows = 3_001  # not a multiple of 3: the last task has only its RECEIVED
    report = await fill_history(settings, rows, days=2.0, progress=False)
    assert report.sizes["task_events"][0] == rows
    assert report.sizes["task_summary"][0] == 1_001
    s = quote_ident(settings.postgres_schema)
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        task_ids = [r["task_id"] for r in await conn.fetch(
            f"SELECT task_id FROM {s}.task_summary ORDER BY first_seen")]
        states = dict(await conn.fetch(
            f"SELECT state, count(*) FROM {s}.task_summary GROUP BY state"))
        minutes = await conn.fetchval(
            f"SELECT sum(received + started + retry + failure + success + revoked)"
            f" FROM {s}.task_minutes")
        outcomes = await conn.fetchval(
            f"SELECT sum(outcomes) FROM {s}.task_runtimes WHERE span_s = 60")
        spread_h = await conn.fetchval(
            f"SELECT extract(epoch FROM max(ts) - min(ts)) / 3600 FROM {s}.task_events")
    finally:
        await conn.close()
    # uuid ids: none can be a bench's "task-<n>"
    assert all(str(uuid.UUID(t)) == t for t in task_ids)
    assert states.keys() <= {"RECEIVED", "SUCCESS", "FAILURE", "REVOKED"}
    assert states["RECEIVED"] == 1 and states["SUCCESS"] > states["FAILURE"] > 0
    assert minutes == rows and outcomes == 1_000
    assert 47 < spread_h < 48
    async with HistoryStore(settings) as store:
        for task_id in (task_ids[0], task_ids[500], task_ids[-2]):
            events = await store.history(task_id)
            assert [e.state for e in events][:2] == [State.RECEIVED, State.STARTED]
            assert len(events) == 3 and events[2].state.ready
            assert events[2].runtime is not None and 0.01 <= events[2].runtime <= 30.0
            assert len({e.task_name for e in events}) == 1
            latest = await store.latest(task_id)
            assert latest == events[2]
        async with store.pool.acquire() as conn:
            tokens = await conn.fetch(
                f"SELECT event_id, token FROM {s}.task_events WHERE task_id = $1", task_ids[0])
        by_id = {r["event_id"].hex: r["token"] for r in tokens}
        for e in await store.history(task_ids[0]):
            assert by_id[e.event_id] == order_token(e.attempt, e.state, e.timestamp, e.event_id)
