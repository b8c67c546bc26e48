"""Fill a benchmark's history with N rows of made-up past tasks, inside PostgreSQL.

For the fold rate against a large history (``bench/fold_throughput.py --history-rows``):
the schema is migrated first, so the rows go through the history's own triggers
(task_summary, the rollups) exactly as the processor's would, and those tables end up
as large as N rows of history would make them.

The rows: ~N/3 tasks (uuid task ids, which cannot collide with the bench's
``task-<n>`` ids) of 8 task names on 6 workers, each RECEIVED, STARTED, then SUCCESS
(90%), FAILURE (7%, with an exception) or REVOKED (3%), runtimes from 10 ms to 30 s.
Tasks are spread evenly over the ``days`` before now and inserted in time order, as a
live fold would have, a chunk of tasks per INSERT ... SELECT over generate_series (one
statement, one trigger firing, one commit per chunk). Their events name a topic of
their own (the bench's topic + ``.history``), so no offset of theirs is the bench's.

Then VACUUM ANALYZE: a history that grew over days would have been vacuumed and
analysed by autovacuum long before; without it, autovacuum would set about the fresh
tables during the timed fold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from resultlog import names
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore
from resultlog.views.migrations import quote_ident

CHUNK_TASKS = 100_000
TASK_NAMES = ("app.tasks.send_email", "app.tasks.resize_image", "app.tasks.charge_card",
              "app.tasks.sync_inventory", "app.tasks.render_report", "app.tasks.index_document",
              "app.tasks.notify_webhook", "app.tasks.cleanup_sessions")

# One row per (task k, step 0..2) of the tasks [$1, $2). $3: the first task's time (ms),
# $4: ms between two tasks' starts, $5: the topic. Per-task choices come from a
# multiplicative hash of k, so a task's three rows agree on its name, worker and outcome.
FILL_SQL = """
INSERT INTO {s}.{history} (event_id, ts, runtime, kafka_offset, attempt, kafka_partition,
    task_id, state, token, task_name, worker, args, kwargs, result, exception_type,
    exception_module, exception_message, traceback, kafka_topic)
SELECT e.hex::uuid, {s}.ms_to_timestamptz(e.ms), e.runtime, e.r, 0, (e.k % 3)::int,
       e.task_id, e.state,
       '00000' || e.rank || lpad(e.ms::text, 15, '0') || e.hex,
       ($6::text[])[e.name_i], 'celery@worker-' || e.worker_i, e.args, e.kwargs, e.result,
       e.exc_type, e.exc_module, e.exc_message, e.traceback, $5
FROM (
    SELECT g.k, g.step, g.k * 3 + g.step AS r, md5('hist-task-' || g.k)::uuid::text AS task_id,
           md5('hist-event-' || (g.k * 3 + g.step)) AS hex,
           (g.u % 8)::int + 1 AS name_i, (g.u / 8 % 6)::int AS worker_i,
           o.state, o.rank,
           CASE g.step WHEN 0 THEN g.base
                       WHEN 1 THEN g.base + g.wait_ms
                       ELSE g.base + g.wait_ms + (g.runtime * 1000)::bigint END AS ms,
           CASE WHEN g.step = 2 THEN g.runtime END AS runtime,
           CASE WHEN g.step = 0 THEN '[' || g.k || ', 1]' END AS args,
           CASE WHEN g.step = 0 THEN '{{}}' END AS kwargs,
           CASE WHEN o.state = 'SUCCESS' THEN '{{"ok": true, "n": ' || g.k || '}}' END AS result,
           CASE WHEN o.state = 'FAILURE' THEN 'ValueError' END AS exc_type,
           CASE WHEN o.state = 'FAILURE' THEN 'builtins' END AS exc_module,
           CASE WHEN o.state = 'FAILURE' THEN 'bad input ' || g.k END AS exc_message,
           CASE WHEN o.state = 'FAILURE'
                THEN 'Traceback (most recent call last):\n  File "app/tasks.py", line 42, in run\n'
                     || 'ValueError: bad input ' || g.k END AS traceback
    FROM (
        SELECT k, step, u, $3::bigint + ((k - $1::bigint) * $4::float8)::bigint AS base,
               5 + u / 48 % 200 AS wait_ms,
               -- 10 ms .. 30 s, evenly on a log scale: every runtime bucket gets some.
               exp(ln(0.01::float8) + (u / 1000 % 1000)::float8 / 1000 * ln(3000::float8))
                   AS runtime,
               u / 1000000 % 100 AS pick
        FROM (SELECT k, (k * 2654435761) % 4294967296 AS u
              FROM generate_series($1::bigint, $2::bigint - 1) AS k) AS t
        CROSS JOIN generate_series(0, 2) AS step
    ) AS g
    -- (state, its rank digit of the order token)
    CROSS JOIN LATERAL (
        SELECT * FROM (VALUES ('RECEIVED', 1), ('STARTED', 2), ('SUCCESS', 5),
                              ('FAILURE', 4), ('REVOKED', 6)) AS v (state, rank)
        WHERE v.state = CASE WHEN g.step = 0 THEN 'RECEIVED' WHEN g.step = 1 THEN 'STARTED'
                             WHEN g.pick < 90 THEN 'SUCCESS' WHEN g.pick < 97 THEN 'FAILURE'
                             ELSE 'REVOKED' END
    ) AS o
    WHERE g.k * 3 + g.step < $7
) AS e
ORDER BY e.k, e.step
"""


@dataclass(frozen=True)
class FillReport:
    rows: int
    fill_s: float
    vacuum_s: float
    sizes: dict[str, tuple[int, int]]  # table -> (rows, total bytes with indexes)


async def fill_history(settings: Settings, rows: int, days: float,
                       progress: bool = True) -> FillReport:
    """Migrate ``settings.postgres_schema`` and insert ``rows`` history rows (see the
    module's docstring) spread over the ``days`` before now."""
    if rows < 0:
        raise ValueError(f"history rows must be >= 0, got {rows}")
    if days <= 0:
        raise ValueError(f"history days must be > 0, got {days}")
    n_tasks = -(-rows // 3)
    now_ms = time.time_ns() // 1_000_000
    span_ms = int(days * 86_400_000)
    # The last task ends at most ~31 s after its start: start it a minute before now.
    start_ms = now_ms - span_ms
    step_ms = (span_ms - 60_000) / max(n_tasks, 1)
    async with HistoryStore(settings) as store:
        await store.migrate()
        await store.ensure_partitions(start_ms, now_ms)
    s = quote_ident(settings.postgres_schema)
    sql = FILL_SQL.format(s=s, history=names.HISTORY_TABLE)
    topic = f"{settings.events_topic}.history"
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        # Session settings of this connection only: the shared server is left as is.
        # A commit per chunk need not wait for its fsync; the triggers' sorts fit in
        # memory.
        await conn.execute("SET synchronous_commit = off; SET work_mem = '256MB'")
        t0 = time.monotonic()
        for lo in range(0, n_tasks, CHUNK_TASKS):
            hi = min(lo + CHUNK_TASKS, n_tasks)
            await conn.execute(sql, lo, hi, start_ms + int(lo * step_ms), step_ms, topic,
                               list(TASK_NAMES), rows)
            if progress:
                print(f"  history fill: {min(hi * 3, rows):,} / {rows:,} rows, "
                      f"{time.monotonic() - t0:.0f}s", flush=True)
        fill_s = time.monotonic() - t0
        t1 = time.monotonic()
        await conn.execute(f"VACUUM (ANALYZE) {s}.{names.HISTORY_TABLE}")
        tables = await conn.fetch(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = to_regnamespace($1)"
            " AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname", s)
        for t in tables:
            if t["relname"] != names.HISTORY_TABLE:
                await conn.execute(f"VACUUM (ANALYZE) {s}.{quote_ident(t['relname'])}")
        vacuum_s = time.monotonic() - t1
        sizes = {}
        for t in tables:
            table = f"{s}.{quote_ident(t['relname'])}"
            count = await conn.fetchval(f"SELECT count(*) FROM {table}")
            # The history's rows are in its partitions (pg_partition_tree lists nothing
            # for a plain table).
            size = await conn.fetchval(
                "SELECT coalesce((SELECT sum(pg_total_relation_size(relid))"
                " FROM pg_partition_tree($1::regclass)), pg_total_relation_size($1::regclass))::bigint",
                table)
            sizes[t["relname"]] = (count, size)
    finally:
        await conn.close()
    return FillReport(rows, fill_s, vacuum_s, sizes)


def describe(report: FillReport) -> str:
    lines = [f"history filled with {report.rows:,} rows in {report.fill_s:.1f}s "
             f"({report.rows / report.fill_s if report.fill_s else 0:,.0f} rows/s), "
             f"VACUUM ANALYZE {report.vacuum_s:.1f}s; tables (rows, size with indexes):"]
    for name, (count, size) in report.sizes.items():
        lines.append(f"  {name}: {count:,} rows, {size / 2**20:,.1f} MiB")
    return "\n".join(lines)
