"""Chicory end to end: a Chicory worker process (concurrency 8, Redis broker) runs no-op
tasks sent with ``delay()``, with Chicory's Redis backend, its Postgres backend and
resultlog, in one run.

    python -m bench.chicory_backend [--tasks 20000] [--window 200] [--latency 300]
                                   [--backends redis,postgres,resultlog]

Two figures per backend:
- tasks/s: ``--tasks`` tasks, ``--window`` in flight (a window is sent, then collected
  with Chicory's ``AsyncResult.get()`` in order), over the whole run;
- result latency: ``--latency`` tasks one at a time; from the moment the task function
  returned (its return value is ``time.time()``) to ``get()`` returning: the backend's
  store, then the reader noticing. For resultlog it is measured twice: with Chicory's
  ``get()`` (polls every 0.1 s) and with resultlog's push wait (``backend.wait()``).

The broker is Redis db 13 on the local stack, Chicory's Redis backend db 14 (Chicory's
keys there are deleted first), its Postgres backend the local stack's database (Chicory
creates its two tables, chicory_task_results and chicory_worker_heartbeats, in the
role's default schema; they are dropped at the end); resultlog runs with a processor and
isolated settings (deleted at the end). Needs ``resultlog dev up``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis

from bench._common import cleanup, isolated, percentiles
from bench.chicory_app import make_app
from resultlog.chicory_backend import ResultlogBackend
from resultlog.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BROKER_DB, REDIS_BACKEND_DB = 13, 14


def quantiles(values: list[float]) -> str:
    p50, p99 = percentiles(values, 50, 99)
    return f"p50 {p50 * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms"


async def measure(name: str, tasks: int, window: int, latency_tasks: int) -> None:
    app = make_app(name)
    await app.connect()
    noop = app.get_task("bench.noop")
    try:
        await (await noop.delay()).get(timeout=120)  # the worker (and processor) are up
        start = time.perf_counter()
        for first in range(0, tasks, window):
            results = [await noop.delay() for _ in range(min(window, tasks - first))]
            for r in results:
                await r.get(timeout=120)
        rate = tasks / (time.perf_counter() - start)
        polled: list[float] = []
        for _ in range(latency_tasks):
            r = await noop.delay()
            ended = await r.get(timeout=120)
            polled.append(time.time() - float(ended))
        line = f"{name:10} {rate:8.0f} tasks/s   latency get() {quantiles(polled)}"
        if isinstance(app.backend, ResultlogBackend):
            pushed: list[float] = []
            for _ in range(latency_tasks):
                r = await noop.delay()
                done = await app.backend.wait(r.task_id, timeout=120)
                pushed.append(time.time() - float(done.result))
            line += f"   push wait() {quantiles(pushed)}"
        print(line + f"   ({tasks} tasks, window {window}, {latency_tasks} one at a time)",
              flush=True)
    finally:
        await app.disconnect()


def one(name: str, settings: Settings, env: dict[str, str], args: Any) -> None:
    env = {**env, **settings.to_env()}
    processor = None
    if name == "resultlog":
        processor = subprocess.Popen([sys.executable, "-m", "resultlog", "process",
                                      "--loglevel", "warning"], env=env, cwd=ROOT)
    worker = subprocess.Popen([sys.executable, "-m", "bench.chicory_app", name], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL)
    saved = dict(os.environ)
    os.environ.update(env)  # the client reads the same locations
    try:
        asyncio.run(measure(name, args.tasks, args.window, args.latency))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for proc in (worker, processor):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)


async def drop_tables(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS chicory_task_results, chicory_worker_heartbeats")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--latency", type=int, default=300)
    parser.add_argument("--backends", default="redis,postgres,resultlog")
    args = parser.parse_args()
    base = Settings.from_env()
    redis_base = base.redis_url.rsplit("/", 1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
    env.update(CHICORY_BENCH_BROKER_URL=f"{redis_base}/{BROKER_DB}",
               CHICORY_BENCH_REDIS_URL=f"{redis_base}/{REDIS_BACKEND_DB}",
               CHICORY_BENCH_POSTGRES_URL=base.postgres_dsn.replace(
                   "postgresql://", "postgresql+asyncpg://", 1),
               PYTHONPATH=str(ROOT))
    for db in (BROKER_DB, REDIS_BACKEND_DB):
        client = redis.Redis.from_url(f"{redis_base}/{db}")
        keys = list(client.scan_iter(match="chicory:*"))
        if keys:
            client.delete(*keys)
        client.close()
    for name in args.backends.split(","):
        settings = isolated("chicory")
        try:
            one(name, settings, env, args)
        finally:
            if name == "resultlog":
                asyncio.run(cleanup(settings))
            if name == "postgres":
                asyncio.run(drop_tables(base.postgres_dsn))


if __name__ == "__main__":
    main()
