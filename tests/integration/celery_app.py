"""The Celery app of the backend's tests: the worker process imports it (``celery -A
tests.integration.celery_app worker``), the test builds the same app as a client.

The worker takes its resultlog settings from ``RESULTLOG_*`` (``resultlog://``), its
broker from ``CELERY_BROKER_URL``, its queue from ``CELERY_TEST_QUEUE`` and, when a test
needs backend options, its backend URL from ``CELERY_TEST_RESULT_BACKEND`` (not a
``RESULTLOG_*`` name: those are settings, and an unknown one is an error).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery  # type: ignore[import-untyped]

from resultlog.settings import Settings


class TaskBroke(ValueError):
    """A task's own exception class: it must come back to the client as itself."""


def side_channel(settings: Settings, name: str) -> str:
    """A Redis list the test and a task use to hand each other a go-ahead."""
    return f"{settings.redis_prefix}test:{name}"


def side_channel_client(settings: Settings) -> redis.Redis:
    """A client for BLPOPs on side channels: redis-py 8 gives every client a 5 s socket
    timeout by default, which would cut a longer BLPOP short with a TimeoutError."""
    return redis.Redis.from_url(settings.redis_url, socket_timeout=None)


def arithmetic(app: Any, prefix: str) -> Any:
    """The tasks every test app has, ``<prefix>.add`` and ``<prefix>.total``; returns add."""

    @app.task(name=f"{prefix}.add", shared=False)
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name=f"{prefix}.total", shared=False)
    def total(values: list[int]) -> int:
        return sum(values)

    return add


def make_app(backend_url: str, broker_url: str, queue: str, serializer: str = "json") -> Any:
    app = Celery("resultlog-celery-tests", broker=broker_url, backend=backend_url,
                 set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_serializer=serializer,
        result_serializer=serializer,
        accept_content=sorted({serializer, "json"}),
        task_track_started=True,
        result_extended=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )

    def settings() -> Settings:
        return Settings.from_env()

    add = arithmetic(app, "t")

    @app.task(name="t.spawn", shared=False)
    def spawn(n: int) -> list[str]:
        return [add.delay(i, i).id for i in range(n)]

    @app.task(name="t.echo", shared=False)
    def echo(value: Any) -> Any:
        return value

    @app.task(name="t.fail", shared=False)
    def fail(message: str, *more: Any) -> None:
        raise TaskBroke(message, *more)

    @app.task(name="t.flaky", bind=True, max_retries=3, shared=False)
    def flaky(self: Any) -> int:
        if self.request.retries < 2:
            raise self.retry(exc=ConnectionError(f"attempt {self.request.retries}"), countdown=0)
        return self.request.retries

    @app.task(name="t.progress", bind=True, shared=False)
    def progress(self: Any, gate: str) -> str:
        self.update_state(state="PROGRESS", meta={"done": 1, "of": 2})
        client = side_channel_client(settings())
        try:
            client.blpop([gate], timeout=60)  # the test releases it once it saw PROGRESS
        finally:
            client.close()
        return "finished"

    @app.task(name="t.block", bind=True, shared=False)
    def block(self: Any, started: str, gate: str) -> str:
        client = side_channel_client(settings())
        try:
            client.rpush(started, self.request.id)
            client.blpop([gate], timeout=120)
        finally:
            client.close()
        return "not revoked"

    @app.task(name="t.collect", shared=False)
    def collect(values: Any, counter: str) -> Any:
        """A chord body that counts its runs in Redis (``counter``) and returns its input."""
        client = redis.Redis.from_url(settings().redis_url)
        try:
            client.incr(counter)
        finally:
            client.close()
        return values

    @app.task(name="t.incr", shared=False)
    def incr(counter: str) -> int:
        """An errback (old style: a task) that counts its runs."""
        client = redis.Redis.from_url(settings().redis_url)
        try:
            return int(client.incr(counter))
        finally:
            client.close()

    @app.task(name="t.gated", shared=False)
    def gated(value: int, gate: str) -> int:
        """Returns ``value`` once the test pushes an item onto ``gate``."""
        client = redis.Redis.from_url(settings().redis_url)
        try:
            client.blpop([gate], timeout=120)
        finally:
            client.close()
        return value

    @app.task(name="t.big", shared=False)
    def big(size: int) -> str:
        return "x" * size

    return app


app = make_app(
    os.environ.get("CELERY_TEST_RESULT_BACKEND", "resultlog://"),
    os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:16379/7"),
    os.environ.get("CELERY_TEST_QUEUE", "resultlog-tests"),
    os.environ.get("CELERY_TEST_SERIALIZER", "json"),
)
