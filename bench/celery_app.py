"""The Celery app of bench/celery_backend.py and bench/celery_chord.py: a no-op task, and a
chord body that records when it started. The worker reads its broker and result backend
from CELERY_BROKER_URL / CELERY_RESULT_BACKEND (Celery's own variables) and its queue from
CELERY_BENCH_QUEUE."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from celery import Celery  # type: ignore[import-untyped]


def make_app(broker: str, backend: str, queue: str) -> Any:
    app = Celery("resultlog-bench", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_default_queue=queue, worker_prefetch_multiplier=4,
                    broker_connection_retry_on_startup=True)

    @app.task(name="bench.noop", shared=False)
    def noop() -> None:
        return None

    @app.task(name="bench.chord_body", shared=False)
    def chord_body(values: list[Any], key: str) -> int:
        # First thing: when the body started (wall clock, the same machine's as the
        # members' date_done), into the broker's Redis.
        started = time.time()
        client = redis.Redis.from_url(broker)
        try:
            client.set(key, repr(started), ex=3600)
        finally:
            client.close()
        return len(values)

    return app


app = make_app(os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:16379/13"),
               os.environ.get("CELERY_RESULT_BACKEND", "resultlog://"),
               os.environ.get("CELERY_BENCH_QUEUE", "resultlog-bench"))
