"""Celery chords end to end: a chord of ``--members`` no-op tasks on a real prefork worker
(concurrency 2), repeated ``--chords`` times, with Celery's Redis backend and with
resultlog (a processor started with ``--celery-app``, which fires the bodies), in one run.

    python -m bench.celery_chord [--members 1000] [--chords 10] [--backends redis,resultlog]

Measured per chord: from the last member's SUCCESS (the latest ``date_done`` of the
header's results: when its result was stored) to the body's start (the body task's first
statement writes ``time.time()`` to Redis); printed: p50, p99 and max over the chords, and
the whole chord's wall time p50. With Celery's Redis backend the worker storing the last
member sends the body; with resultlog the processor does, from the log. resultlog runs
with isolated settings (its own topic, prefix, schema; deleted at the end); the broker is
Redis db 8, Celery's Redis backend db 9 (kombu's keys of the bench's own queue are
deleted at the end). Needs ``resultlog dev up``.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import redis
from celery import chord  # type: ignore[import-untyped]

from bench._common import (backends_parser, for_each_backend, percentiles, start_celery_run,
                           stop_celery_run)
from bench.celery_app import make_app
from resultlog.settings import Settings

BROKER_DB, REDIS_BACKEND_DB = 8, 9


def _epoch(value: Any) -> float:
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def one(name: str, backend: str, settings: Settings, members: int, chords: int) -> None:
    base = settings.redis_url.rsplit("/", 1)[0]
    broker = f"{base}/{BROKER_DB}"
    queue = f"bench-chord-{uuid.uuid4().hex[:8]}"
    procs = start_celery_run(settings, broker, backend, queue,
                             ["--celery-app", "bench.celery_app:app"])
    side = redis.Redis.from_url(broker)
    try:
        app = make_app(broker, backend, queue)
        noop, body = app.tasks["bench.noop"], app.tasks["bench.chord_body"]
        noop.delay().get(timeout=120)  # the worker (and processor) are up
        key = f"bench-chord-start:{uuid.uuid4().hex}"
        assert chord([noop.s()], app=app)(body.s(key)).get(timeout=120) == 1  # bodies fire
        lags: list[float] = []
        walls: list[float] = []
        for _ in range(chords):
            key = f"bench-chord-start:{uuid.uuid4().hex}"
            t0 = time.perf_counter()
            result = chord([noop.s() for _ in range(members)], app=app)(body.s(key))
            assert result.get(timeout=600) == members
            walls.append(time.perf_counter() - t0)
            started = float(side.get(key) or 0)
            ids = [r.id for r in result.parent.results]
            done = [_epoch(meta["date_done"]) for _, meta in
                    app.backend.get_many(ids, timeout=60, max_iterations=1)]
            assert len(done) == members, f"{len(done)} of {members} members' results read"
            lags.append(started - max(done))
            if os.environ.get("BENCH_VERBOSE"):
                print(f"last member done {datetime.fromtimestamp(max(done))}, body started "
                      f"{datetime.fromtimestamp(started)}", flush=True)
        p50, p99 = percentiles(lags, 50, 99)
        print(f"{name:10} last member SUCCESS -> body start: p50 {p50 * 1000:7.1f} ms"
              f"   p99 {p99 * 1000:7.1f} ms   max {max(lags) * 1000:7.1f} ms"
              f"   (chord wall time p50 {statistics.median(walls):.1f} s; {chords} chords"
              f" of {members})", flush=True)
    finally:
        side.close()
        stop_celery_run(procs, broker, queue)


def main() -> None:
    parser = backends_parser(__doc__)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--chords", type=int, default=10)
    args = parser.parse_args()
    if args.members < 1 or args.chords < 1:
        parser.error("--members and --chords must be at least 1")
    for_each_backend(args.backends, "chord", REDIS_BACKEND_DB,
                     lambda name, url, settings: one(name, url, settings, args.members, args.chords))


if __name__ == "__main__":
    main()
