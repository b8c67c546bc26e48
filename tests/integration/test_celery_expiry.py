"""Celery's result_expires and result_failure_expires on ``resultlog://``: each event
carries its result's TTL, so the writer's fold, the processor's and a replay's give a
task's view key the same expiry (its winner's timestamp plus the TTL), as Celery's Redis
backend gives its key. No worker is needed: the backend's ``store_result`` is what a
worker calls."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from resultlog import names
from resultlog.errors import ConfigurationError
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore
from tests.integration.celery_app import make_app
from tests.integration.processes import live_processor
from tests.integration.test_celery_backend import BROKER_DB, WAIT_S, backend_url

celery = pytest.importorskip("celery")

pytestmark = [pytest.mark.integration]


def client_app(settings: Settings, options: str = "", **conf: Any) -> Any:
    broker = settings.redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"
    app = make_app(backend_url(settings) + options, broker, f"rl-test-{uuid.uuid4().hex[:10]}")
    app.conf.update(**conf)
    return app


@pytest.fixture
def view(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def expiry(view: redis.Redis, settings: Settings, task_id: str) -> int | None:
    """The task key's expiry less its winner's timestamp (ms); None: it never expires."""
    key = names.task_key(settings.redis_prefix, task_id)
    at = view.pexpiretime(key)
    assert at != -2, f"task {task_id} is not in the view"
    return None if at == -1 else at - int(view.hget(key, "timestamp") or 0)


def test_each_result_expires_as_the_apps_settings_say(settings: Settings, view: redis.Redis) -> None:
    with warnings.catch_warnings():
        # Celery warns when a backend ignores result_failure_expires.
        warnings.simplefilter("error")
        backend = client_app(settings, result_expires=60, result_failure_expires=600).backend
    ok, bad, started = (uuid.uuid4().hex for _ in range(3))
    backend.store_result(ok, 42, "SUCCESS")
    backend.store_result(bad, KeyError("x"), "FAILURE")
    backend.store_result(started, None, "STARTED")
    assert expiry(view, settings, ok) == 60_000
    assert expiry(view, settings, bad) == 600_000
    assert expiry(view, settings, started) == 60_000
    # A later state's expiry replaces the earlier one's, as with Celery's SETEX.
    backend.store_result(started, KeyError("y"), "FAILURE")
    assert expiry(view, settings, started) == 600_000


def test_no_expiry_in_the_app_keeps_results_whatever_the_processors_ttl(
    settings: Settings, view: redis.Redis
) -> None:
    assert settings.result_ttl_s > 0  # the processor's default would expire them
    for conf in ({"result_expires": None}, {"result_expires": 0}):
        task_id = uuid.uuid4().hex
        client_app(settings, **conf).backend.store_result(task_id, 1, "SUCCESS")
        assert expiry(view, settings, task_id) is None, conf


def test_the_processors_fold_and_the_history_keep_the_events_expiry(
    settings: Settings, view: redis.Redis
) -> None:
    """Without read-your-writes only the processor folds the event: the TTL it applies is
    the event's, and the history keeps it for a fold of the history."""
    app = client_app(settings, "&read_your_writes=false", result_expires=90,
                     result_failure_expires=900)
    ok, bad = uuid.uuid4().hex, uuid.uuid4().hex
    with live_processor(settings):
        app.backend.store_result(ok, 42, "SUCCESS")
        app.backend.store_result(bad, KeyError("x"), "FAILURE")
        assert app.AsyncResult(ok).get(timeout=WAIT_S) == 42
        with pytest.raises(KeyError):
            app.AsyncResult(bad).get(timeout=WAIT_S)
    assert expiry(view, settings, ok) == 90_000
    assert expiry(view, settings, bad) == 900_000

    async def stored_ttls() -> list[int | None]:
        async with HistoryStore(settings) as history:
            return [e.result_ttl_ms for task_id in (ok, bad) for e in await history.history(task_id)]

    assert asyncio.run(stored_ttls()) == [90_000, 900_000]


@pytest.mark.parametrize("conf", [{"result_expires": -5}, {"result_failure_expires": -1}])
def test_a_negative_expiry_is_refused_naming_the_setting(settings: Settings, conf: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(conf))):
        client_app(settings, **conf).backend  # noqa: B018
