"""The Celery hook with a real Celery app: eager tasks, and a real in-process worker."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from resultlog.producers import SyncEmitter
from resultlog.producers.celery import Installation, install
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from tests.integration.celery_app import arithmetic
from tests.integration.test_emitter import consume

celery = pytest.importorskip("celery")

pytestmark = pytest.mark.integration


@pytest.fixture
def emitter(settings: Settings) -> Iterator[SyncEmitter]:
    emitter = SyncEmitter(settings, worker="fallback")
    yield emitter
    emitter.close()


@pytest.fixture
def app() -> Any:
    app = celery.Celery("resultlog-tests", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])

    arithmetic(app, "tests")

    @app.task(name="tests.fail", shared=False)
    def fail() -> None:
        raise KeyError("missing")

    @app.task(name="tests.flaky", bind=True, max_retries=2, shared=False)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=ConnectionError("try again"), countdown=0)
        return "ok"

    return app


@pytest.fixture
def installed(app: Any, emitter: SyncEmitter) -> Iterator[Installation]:
    installation = install(app, emitter)
    yield installation
    installation.uninstall()


def by_task(events: list[TaskEvent]) -> dict[str, list[tuple[State, int]]]:
    out: dict[str, list[tuple[State, int]]] = {}
    for e in events:
        out.setdefault(e.task_id, []).append((e.state, e.attempt))
    return out


async def test_eager_tasks_emit_started_success_failure_retry(
    app: Any, emitter: SyncEmitter, installed: Installation, settings: Settings
) -> None:
    app.conf.task_always_eager = True
    ok = app.tasks["tests.add"].apply_async((2, 3), task_id="ok-1")
    failed = app.tasks["tests.fail"].apply_async(task_id="fail-1")
    retried = app.tasks["tests.flaky"].apply_async(task_id="flaky-1")
    assert ok.get() == 5 and retried.get() == "ok" and failed.failed()
    emitter.flush()
    consumed = await consume(settings, 8, settle_s=0.5)
    events = [c.event for c in consumed]
    flow = by_task(events)
    assert flow["ok-1"] == [(State.STARTED, 0), (State.SUCCESS, 0)]
    assert flow["fail-1"] == [(State.STARTED, 0), (State.FAILURE, 0)]
    assert flow["flaky-1"] == [(State.STARTED, 0), (State.RETRY, 0), (State.STARTED, 1), (State.SUCCESS, 1)]

    success = next(e for e in events if e.task_id == "ok-1" and e.state is State.SUCCESS)
    assert success.result_value() == 5 and success.task_name == "tests.add" and success.args == "[2,3]"
    assert success.runtime is not None and success.runtime >= 0
    failure = next(e for e in events if e.state is State.FAILURE)
    assert failure.exception is not None
    assert (failure.exception.type, failure.exception.message) == ("KeyError", "'missing'")
    assert failure.traceback is not None and "KeyError" in failure.traceback
    retry = next(e for e in events if e.state is State.RETRY)
    assert retry.exception is not None and retry.exception.type == "ConnectionError"
    assert retry.task_name == "tests.flaky"


async def test_worker_emits_received_and_revoked(
    app: Any, emitter: SyncEmitter, installed: Installation, settings: Settings
) -> None:
    from celery.contrib.testing.worker import start_worker

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        result = app.tasks["tests.add"].apply_async((1, 1), task_id="via-worker")
        assert result.get(timeout=10) == 2
        # Expired before the worker picks it up: Celery revokes it (task_revoked, expired).
        past = datetime.now(timezone.utc) - timedelta(seconds=5)
        app.tasks["tests.add"].apply_async((1, 2), task_id="expired", expires=past)
        consumed = await consume(settings, 4, timeout_s=30)
    events = [c.event for c in consumed]
    flow = by_task(events)
    assert flow["via-worker"] == [(State.RECEIVED, 0), (State.STARTED, 0), (State.SUCCESS, 0)]
    received = events[0]
    assert received.task_name == "tests.add" and received.worker is not None and "@" in received.worker
    revoked = [e for e in events if e.task_id == "expired"]
    assert [e.state for e in revoked][-1] is State.REVOKED
    assert dict(revoked[-1].meta) == {"revoked": "expired"}


async def test_celery_chord_members_are_reported_as_members_of_their_group(
    app: Any, emitter: SyncEmitter, installed: Installation, settings: Settings
) -> None:
    """What docs/emitter.md says of Celery chords: the members' requests do not carry
    the chord's size, so they are reported as group members. If Celery starts putting
    the size there, this fails: the hook then tags them, and the docs must change."""
    from celery import chord
    from celery.contrib.testing.worker import start_worker

    add, total = app.tasks["tests.add"], app.tasks["tests.total"]
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        result = chord([add.s(i, i) for i in range(3)], app=app)(total.s())
        assert result.get(timeout=10) == 6
        group_id = result.parent.id
        consumed = await consume(settings, 12, timeout_s=30)
    events = [c.event for c in consumed]
    members = [e for e in events if e.task_name == "tests.add"]
    assert len(members) == 9 and {e.group_id for e in members} == {group_id}
    assert all(e.chord_id is None and e.chord_size is None for e in members)


async def test_events_carry_the_apps_result_expiry_read_when_emitted(
    app: Any, emitter: SyncEmitter, installed: Installation, settings: Settings
) -> None:
    """As the result backend does (test_celery_expiry.py): result_expires on every
    event, result_failure_expires on a FAILURE, read at each event (set here after
    install, as an app configured after its module calls install() would be)."""
    app.conf.task_always_eager = True
    app.tasks["tests.add"].apply_async((1, 1), task_id="default-ttl")
    app.conf.update(result_expires=timedelta(minutes=1), result_failure_expires=600)
    app.tasks["tests.add"].apply_async((2, 3), task_id="ttl-ok")
    app.tasks["tests.fail"].apply_async(task_id="ttl-fail")
    app.tasks["tests.flaky"].apply_async(task_id="ttl-flaky")
    app.conf.update(result_expires=None, result_failure_expires=None)
    app.tasks["tests.add"].apply_async((3, 3), task_id="ttl-never")
    emitter.flush()
    events = [c.event for c in await consume(settings, 12, settle_s=0.5)]
    ttls = {(e.task_id, e.state, e.attempt): e.result_ttl_ms for e in events}
    day = 86_400_000  # Celery's default result_expires
    assert ttls == {
        ("default-ttl", State.STARTED, 0): day, ("default-ttl", State.SUCCESS, 0): day,
        ("ttl-ok", State.STARTED, 0): 60_000, ("ttl-ok", State.SUCCESS, 0): 60_000,
        ("ttl-fail", State.STARTED, 0): 60_000, ("ttl-fail", State.FAILURE, 0): 600_000,
        ("ttl-flaky", State.STARTED, 0): 60_000, ("ttl-flaky", State.RETRY, 0): 60_000,
        ("ttl-flaky", State.STARTED, 1): 60_000, ("ttl-flaky", State.SUCCESS, 1): 60_000,
        ("ttl-never", State.STARTED, 0): 0, ("ttl-never", State.SUCCESS, 0): 0,
    }


async def test_a_bad_result_expiry_is_logged_once_and_loses_no_event(
    app: Any, emitter: SyncEmitter, installed: Installation, settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error in a signal handler would drop the event: it keeps the processor's TTL."""
    app.conf.update(task_always_eager=True, result_expires=-5)
    # Celery's worker (an earlier test's) sets the root logger to ERROR.
    with caplog.at_level(logging.WARNING, logger="resultlog.producers.celery"):
        for i in range(2):
            app.tasks["tests.add"].apply_async((i, i), task_id=f"bad-ttl-{i}")
    emitter.flush()
    events = [c.event for c in await consume(settings, 4, settle_s=0.5)]
    assert sorted((e.task_id, e.state) for e in events) == [
        ("bad-ttl-0", State.STARTED), ("bad-ttl-0", State.SUCCESS),
        ("bad-ttl-1", State.STARTED), ("bad-ttl-1", State.SUCCESS)]
    assert all(e.result_ttl_ms is None for e in events)
    warned = [r.getMessage() for r in caplog.records if "result_expires must be" in r.getMessage()]
    assert len(warned) == 1 and "RESULTLOG_RESULT_TTL_S" in warned[0], warned


def test_install_without_celery_names_the_extra(monkeypatch: pytest.MonkeyPatch, emitter: SyncEmitter) -> None:
    import builtins

    real_import = builtins.__import__

    def no_celery(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "celery" or name.startswith("celery."):
            raise ImportError("No module named 'celery'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_celery)
    with pytest.raises(ImportError, match=r"pip install resultlog\[celery\]"):
        install(None, emitter)
