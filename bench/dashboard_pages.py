"""Server time of each dashboard page over a history of a million tasks.

    .venv/bin/python -m bench.dashboard_pages                      # 1,000,000 tasks, 20 runs a page
    .venv/bin/python -m bench.dashboard_pages --tasks 200000 --runs 5
    .venv/bin/python -m bench.dashboard_pages --keep               # keep the schema for the next run
    .venv/bin/python -m bench.dashboard_pages --schema bench_dash_x   # reuse a kept one

Generates the history with SQL (INSERT ... SELECT over generate_series, in chunks of
100,000 tasks, through the real table, so the task_summary trigger folds every chunk
as it would a processor's batch): tasks first seen evenly over the last 7 days, 10 task
names, 20 workers; each task RECEIVED, STARTED and SUCCESS, except one in 20 that
fails and one in 20 that is retried once (RETRY, STARTED, SUCCESS): 3.1 events a task.
The rollups' trigger (views/sql/0005_rollups.sql) folds each chunk too. The 20 workers
have heartbeats every 30 s over the 7 days up to the generation (403,220 rows; the
last of worker-19 says it stopped).
Then VACUUM ANALYZE (what autovacuum does on its own) and serves the dashboard with
uvicorn in this process on 127.0.0.1, requesting each page ``--runs`` times and
reading its ``Server-Timing`` header (request to first byte: all of a page's work).

Uses the configured services (default: the local stack) with its own schema, Redis
prefix and an 8-partition topic, all removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
import urllib.request
import uuid
from datetime import datetime, timezone

import asyncpg  # type: ignore[import-untyped]
import uvicorn
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from bench._common import cleanup
from resultlog import names
from resultlog.connections import kafka_client_args
from resultlog.dashboard.app import create_app
from resultlog.dashboard.tasklist import Cursor
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore
from resultlog.views.migrations import quote_ident

CHUNK = 100_000
DAY_MS = 86_400_000
SPAN_MS = 7 * DAY_MS

_GENERATE = """
INSERT INTO {h} (event_id, ts, runtime, kafka_offset, attempt, kafka_partition, task_id,
                 state, token, task_name, worker, exception_type, exception_module,
                 exception_message, args, result, kafka_topic)
SELECT e.u, {s}.ms_to_timestamptz(e.ms), e.runtime, e.i, e.attempt, (e.i % 8)::int,
       e.task_id, e.state,
       lpad(e.attempt::text, 5, '0')
         || CASE e.state WHEN 'RECEIVED' THEN '1' WHEN 'STARTED' THEN '2'
                         WHEN 'RETRY' THEN '3' WHEN 'FAILURE' THEN '4' ELSE '5' END
         || lpad(e.ms::text, 15, '0') || replace(e.u::text, '-', ''),
       e.name, e.worker, e.exc, CASE WHEN e.exc IS NOT NULL THEN 'builtins' END,
       CASE WHEN e.exc IS NOT NULL THEN 'bad input ' || e.i END,
       CASE WHEN e.state = 'RECEIVED' THEN '[' || e.i || ', "s3://bucket/' || e.i || '.png"]' END,
       CASE WHEN e.state = 'SUCCESS' THEN '{{"bytes": ' || e.i || '}}' END,
       'bench'
FROM (
    SELECT gen_random_uuid() AS u, x.* FROM (
        SELECT t.i, t.task_id, 0 AS attempt, 'RECEIVED' AS state, t.t0 AS ms, t.name,
               t.worker, NULL::float8 AS runtime, NULL AS exc FROM t
        UNION ALL
        SELECT t.i, t.task_id, 0, 'STARTED', t.t0 + 5, t.name, t.worker, NULL, NULL FROM t
        UNION ALL
        SELECT t.i, t.task_id, 0,
               CASE WHEN t.retried THEN 'RETRY' WHEN t.failed THEN 'FAILURE' ELSE 'SUCCESS' END,
               t.t0 + 50 + t.i % 97, t.name, t.worker, (50 + t.i % 97) / 1000.0,
               CASE WHEN t.retried OR t.failed THEN 'ValueError' END FROM t
        UNION ALL
        SELECT t.i, t.task_id, 1, 'STARTED', t.t0 + 1000, t.name, t.worker, NULL, NULL
        FROM t WHERE t.retried
        UNION ALL
        SELECT t.i, t.task_id, 1, 'SUCCESS', t.t0 + 1100, t.name, t.worker, 0.1, NULL
        FROM t WHERE t.retried
    ) x
) e
"""
_TASKS = """
WITH t AS (
    SELECT i, md5(i::text)::uuid::text AS task_id, $1::bigint + i * $2::bigint / $3::bigint AS t0,
           'bench.task_' || (i % 10) AS name, 'worker-' || lpad((i % 20)::text, 2, '0') AS worker,
           i % 20 = 0 AS retried, i % 20 = 7 AS failed
    FROM generate_series($4::bigint, $5::bigint) AS i
)
"""


async def generate(settings: Settings, tasks: int) -> None:
    start_ms = int(time.time() * 1000) - SPAN_MS
    async with HistoryStore(settings) as store:
        await store.migrate()
        await store.ensure_partitions(start_ms, start_ms + SPAN_MS + DAY_MS)
    s = quote_ident(settings.postgres_schema)
    sql = _TASKS + _GENERATE.format(h=f"{s}.{names.HISTORY_TABLE}", s=s)
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        began = time.perf_counter()
        for a in range(1, tasks + 1, CHUNK):
            b = min(tasks, a + CHUNK - 1)
            await conn.execute(sql, start_ms, SPAN_MS, tasks, a, b)
            print(f"  tasks {a:,}..{b:,} in {time.perf_counter() - began:.0f} s", flush=True)
        await conn.execute(f"VACUUM ANALYZE {s}.{names.HISTORY_TABLE}")
        await conn.execute(f"VACUUM ANALYZE {s}.{names.TASK_SUMMARY_TABLE}")
        events = await conn.fetchval(f"SELECT count(*) FROM {s}.{names.HISTORY_TABLE}")
        summary = await conn.fetchval(f"SELECT count(*) FROM {s}.{names.TASK_SUMMARY_TABLE}")
        print(f"generated {events:,} events of {summary:,} tasks in "
              f"{time.perf_counter() - began:.0f} s")
    finally:
        await conn.close()


_HEARTBEATS = """
INSERT INTO {t} (event_id, worker_id, source, hostname, pid, queue, concurrency,
                 tasks_processed, tasks_failed, active_tasks, started_at, beat_at, ttl_s,
                 is_running)
SELECT md5(w || ':' || b), 'worker-' || lpad(w::text, 2, '0'), 'bench', 'host-' || w, 1000 + w,
       'celery', 8, b * 7, b / 3, b % 8, to_timestamp($1 / 1000.0),
       to_timestamp(($1 + b * 30000) / 1000.0), 90, NOT (w = 19 AND b = $2)
FROM generate_series(0, 19) w, generate_series(0, $2) b
"""


async def heartbeats(settings: Settings) -> None:
    """Heartbeats of the 20 workers (unless the schema has them already)."""
    s = quote_ident(settings.postgres_schema)
    table = f"{s}.{names.WORKER_HEARTBEATS_TABLE}"
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        if await conn.fetchval(f"SELECT count(*) FROM {table}"):
            return
        start_ms = int(time.time() * 1000) - SPAN_MS
        await conn.execute(_HEARTBEATS.format(t=table), start_ms, SPAN_MS // 30_000)
        await conn.execute(f"VACUUM ANALYZE {table}")
        print(f"generated {await conn.fetchval(f'SELECT count(*) FROM {table}'):,} heartbeats")
    finally:
        await conn.close()


async def pages(settings: Settings) -> list[tuple[str, str]]:
    """(label, path) of each page to time; a deep cursor and a task id come from SQL."""
    s = quote_ident(settings.postgres_schema)
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        mid = await conn.fetchrow(
            f"SELECT first_seen, task_id FROM {s}.{names.TASK_SUMMARY_TABLE}"
            " ORDER BY first_seen LIMIT 1 OFFSET (SELECT count(*) / 2 FROM"
            f" {s}.{names.TASK_SUMMARY_TABLE})")
        retried = await conn.fetchval(
            f"SELECT task_id FROM {s}.{names.TASK_SUMMARY_TABLE} WHERE attempt = 1 LIMIT 1")
    finally:
        await conn.close()
    deep = Cursor(mid["first_seen"], mid["task_id"]).encode()
    return [
        ("overview, 15m window", "/?window=15m"),
        ("overview, 1h window", "/"),
        ("overview, 6h window", "/?window=6h"),
        ("overview, 24h window", "/?window=24h"),
        ("overview, 24h, another name", "/?window=24h&name=bench.task_7"),
        ("tasks, first page", "/tasks"),
        ("tasks, page in the middle (keyset)", f"/tasks?after={deep}"),
        ("tasks, state=FAILURE", "/tasks?state=FAILURE"),
        ("tasks, name + state, middle", f"/tasks?name=bench.task_3&state=SUCCESS&after={deep}"),
        ("tasks, worker", "/tasks?worker=worker-07"),
        ("tasks, id prefix", "/tasks?id=ab"),
        ("task page (retried)", f"/tasks/{retried}"),
        ("workers, 1h window", "/workers"),
        ("workers, 24h window", "/workers?window=24h"),
    ]


def server_ms(url: str) -> float:
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
        timing = response.headers["Server-Timing"]
        assert response.status == 200, (url, response.status)
    return float(timing.split("dur=")[1])


async def measure(settings: Settings, runs: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        print(f"{'page':<38} {'median ms':>10} {'max ms':>8}   ({runs} runs, server time)")
        for label, path in await pages(settings):
            url = f"http://127.0.0.1:{port}{path}"
            await asyncio.to_thread(server_ms, url)  # warm: connections, plans
            times = [await asyncio.to_thread(server_ms, url) for _ in range(runs)]
            print(f"{label:<38} {statistics.median(times):>10.1f} {max(times):>8.1f}", flush=True)
    finally:
        server.should_exit = True
        await serving


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the generated schema")
    parser.add_argument("--schema", help="reuse a schema kept by an earlier --keep run")
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    schema = args.schema or f"bench_dash_{tag}"
    settings = Settings.from_env().replace(
        events_topic=f"bench.dash.{schema}", consumer_group=f"bench.dash.{schema}",
        redis_prefix=f"bench{schema}:", postgres_schema=schema, topic_partitions=8)
    admin = AIOKafkaAdminClient(**kafka_client_args(settings))
    await admin.start()
    try:
        if settings.events_topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(settings.events_topic, 8, 1)])
    finally:
        await admin.close()
    try:
        if args.schema is None:
            print(f"generating {args.tasks:,} tasks in schema {schema} "
                  f"({datetime.now(timezone.utc):%H:%M:%S} UTC)")
            await generate(settings, args.tasks)
        await heartbeats(settings)
        await measure(settings, args.runs)
    finally:
        if args.keep:
            print(f"kept: --schema {schema}")
        else:
            await cleanup(settings)


if __name__ == "__main__":
    asyncio.run(main())
