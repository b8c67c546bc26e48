"""Celery end to end: a real prefork worker (concurrency 2) runs no-op tasks sent with
``delay()`` and collected with ``get()``, with Celery's Redis backend and with resultlog.

    python bench/celery_backend.py [--tasks 20000] [--window 200] [--backends redis,resultlog]

The client keeps ``--window`` tasks in flight: it sends a window, then collects it with
``get()`` in order (each ``get()`` timed), and so on. Printed per backend: tasks/s over
the whole run, and get() p50/p99. resultlog runs with a processor and isolated settings
(its own topic, prefix, schema; deleted at the end); the broker is Redis db 13 and
Celery's Redis backend db 14 on the local stack (kombu's keys in db 13 are cleared
first). Needs ``resultlog dev up``.
"""

from __future__ import annotations

import time
import uuid


from bench._common import (backends_parser, for_each_backend, percentiles, start_celery_run,
                           stop_celery_run)
from bench.celery_app import make_app
from resultlog.settings import Settings

BROKER_DB, REDIS_BACKEND_DB = 13, 14


def one(name: str, backend: str, settings: Settings, tasks: int, window: int) -> None:
    base = settings.redis_url.rsplit("/", 1)[0]
    broker = f"{base}/{BROKER_DB}"
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    procs = start_celery_run(settings, broker, backend, queue)
    try:
        app = make_app(broker, backend, queue)
        noop = app.tasks["bench.noop"]
        noop.delay().get(timeout=120)  # the worker (and processor) are up
        latencies: list[float] = []
        start = time.perf_counter()
        for first in range(0, tasks, window):
            results = [noop.delay() for _ in range(min(window, tasks - first))]
            for r in results:
                t0 = time.perf_counter()
                r.get(timeout=120)
                latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        p50, p99 = percentiles(latencies, 50, 99)
        print(f"{name:10} {tasks / elapsed:8.0f} tasks/s   get() p50 {p50 * 1000:7.2f} ms"
              f"   p99 {p99 * 1000:7.2f} ms   ({tasks} tasks, window {window})", flush=True)
    finally:
        stop_celery_run(procs, broker, queue)


def main() -> None:
    parser = backends_parser(__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--url-options", default="",
                        help="extra resultlog:// query, e.g. read_your_writes=false")
    args = parser.parse_args()
    for_each_backend(args.backends, "celery", REDIS_BACKEND_DB,
                     lambda name, url, settings: one(name, url, settings, args.tasks, args.window),
                     args.url_options)


if __name__ == "__main__":
    main()
