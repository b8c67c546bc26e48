"""The task queues' backends and read-your-writes emitters while Kafka or Redis is away,
on a private stack (the shared one is never broken): Celery and Chicory hear of no
failure for a result that will be stored, a Celery client's waits come back once Redis
does, and a hung Redis does not fail an emit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from typing import Any

import pytest

from resultlog.devstack import private_stack
from resultlog.errors import StoreTimeout, StoreUnavailable
from resultlog.producers import Emitter, SyncEmitter
from resultlog.settings import Settings
from resultlog.views import ResultBackend
from tests.integration.celery_app import make_app
from tests.integration.test_celery_backend import backend_url
from tests.integration.test_emitter import consume
from tests.integration.test_pipeline import eventually

# Killed brokers make aiokafka log at ERROR.
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.usefixtures("quiet_aiokafka")]


def _app(settings: Settings, query: str = "") -> Any:
    broker = settings.redis_url.rsplit("/", 1)[0] + "/5"  # no worker consumes it here
    return make_app(backend_url(settings) + query, broker, f"rl-faults-{uuid.uuid4().hex[:8]}")


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


async def test_a_result_stored_while_kafka_restarts_is_stored_not_failed(
        base_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Kafka not acknowledging within RESULTLOG_KAFKA_TIMEOUT_S (a broker restarting
    takes longer): store_result raised BrokerUnavailable, so Celery recorded the task
    FAILURE, and a chord failed blaming a member whose SUCCESS, still buffered, was
    stored after it; a STARTED store that raised skipped the task's body. An outcome
    now waits until Kafka has it, and a STARTED state is left to the buffer."""
    if base_settings.test_services not in ("auto", "local"):
        pytest.skip(f"private stacks are built like the local stack ({base_settings.test_services})")
    caplog.set_level(logging.WARNING, logger="resultlog.producers")
    async with private_stack(base=base_settings, out=lambda line: None) as stack:
        app = _app(stack.settings, "&kafka_timeout_s=2")
        backend = app.backend
        await asyncio.to_thread(backend.store_result, "warm", 1, "SUCCESS")
        await stack.kill("kafka")
        # Returns once Kafka did not answer in time, instead of raising.
        await asyncio.to_thread(backend.store_result, "late", {"step": 1}, "STARTED")
        stored = asyncio.create_task(asyncio.to_thread(backend.store_result, "late", 7, "SUCCESS"))
        await eventually(lambda: _logged(caplog, "has not acknowledged task late's SUCCESS"),
                         "the SUCCESS store waiting for Kafka", timeout_s=60)
        assert not stored.done()
        await stack.start("kafka")
        assert await stored == 7
        result = app.AsyncResult("late")
        assert await asyncio.to_thread(result.get, timeout=60) == 7
        assert result.state == "SUCCESS"


async def test_waits_broken_by_a_redis_outage_come_back_with_redis(
        base_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Redis unreachable past the client's reconnecting failed every wait; the next
    get(), whichever task it waited on, raised one of those StoreUnavailable errors, and
    the tasks were never waited on again: get() of a task whose SUCCESS is in the view
    raised or timed out for good, and so did a group's join (a fault audit, 4 of 4)."""
    if base_settings.test_services not in ("auto", "local"):
        pytest.skip(f"private stacks are built like the local stack ({base_settings.test_services})")
    caplog.set_level(logging.WARNING, logger="resultlog")
    async with private_stack(base=base_settings, out=lambda line: None) as stack:
        settings = stack.settings
        app = _app(settings)
        first, second = app.AsyncResult("outage-1"), app.AsyncResult("outage-2")
        for result in (first, second):  # waited on, not there yet: the waits stay armed
            with pytest.raises(Exception, match="operation timed out"):
                await asyncio.to_thread(result.get, timeout=0.5)
        await stack.kill("redis")
        await eventually(lambda: _logged(caplog, "pub/sub connection lost"),
                         "the waits failing with the pub/sub connection", timeout_s=60)
        await stack.start("redis")

        emitter = SyncEmitter(settings, read_your_writes=True)
        try:
            await asyncio.to_thread(emitter.success, "outage-1", 1, wait=True)
            await asyncio.to_thread(emitter.success, "outage-2", 2, wait=True)
        finally:
            await asyncio.to_thread(emitter.close)
        assert await asyncio.to_thread(second.get, timeout=30) == 2
        assert await asyncio.to_thread(first.get, timeout=30) == 1


async def test_a_chicory_result_stored_while_kafka_restarts_is_stored_not_failed(
        base_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """As for Celery: Chicory took the ack timeout for the task's own exception, stored a
    FAILURE for a task that succeeded, and moved it to its dead letters or ran it again
    (a fault audit, 3 of 3 broker restarts)."""
    if base_settings.test_services not in ("auto", "local"):
        pytest.skip(f"private stacks are built like the local stack ({base_settings.test_services})")
    chicory_types = pytest.importorskip("chicory.types")
    from resultlog.chicory_backend import ResultlogBackend
    caplog.set_level(logging.WARNING, logger="resultlog.producers")
    async with private_stack(base=base_settings, out=lambda line: None) as stack:
        backend = ResultlogBackend(stack.settings.replace(kafka_timeout_s=2))
        await backend.connect()
        try:
            done = chicory_types.TaskResult(task_id="late", state=chicory_types.TaskState.SUCCESS,
                                            result=7)
            await stack.kill("kafka")
            stored = asyncio.create_task(backend.store_result("late", done))
            await eventually(lambda: _logged(caplog, "has not acknowledged task late's SUCCESS"),
                             "the SUCCESS store waiting for Kafka", timeout_s=60)
            assert not stored.done()
            await stack.start("kafka")
            await stored
            got = await backend.get_result("late")
            assert got is not None and got.state is chicory_types.TaskState.SUCCESS and got.result == 7
        finally:
            await backend.disconnect()


async def test_a_hung_redis_does_not_fail_a_read_your_writes_emit(
        base_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Redis paused (SIGSTOP: it accepts connections and answers nothing): the emitter's
    fold of an acknowledged event waited for it with no bound, and a waiting emit raised,
    after RESULTLOG_KAFKA_TIMEOUT_S, that Kafka had not acknowledged the event, which it
    had (a fault audit: through Chicory, tasks that succeeded were stored FAILURE and
    sent to its dead letters). The fold now gives up, and the event stays in the log."""
    if base_settings.test_services not in ("auto", "local"):
        pytest.skip(f"private stacks are built like the local stack ({base_settings.test_services})")
    caplog.set_level(logging.WARNING, logger="resultlog.producers")
    async with private_stack(base=base_settings, out=lambda line: None) as stack:
        settings = stack.settings
        pid = stack.dev.services_of("redis")[0].pid()
        assert pid is not None
        async with Emitter(settings, read_your_writes=True) as emitter:
            await emitter.success("before", 1, wait=True)
            os.kill(pid, signal.SIGSTOP)
            try:
                await emitter.success("hung", 2, wait=True)  # raised NotYetAcknowledged
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await _logged(caplog, "Redis did not answer within")
            await emitter.success("after", 3, wait=True)
        logged = {c.event.task_id for c in await consume(settings, 3)}
        assert logged == {"before", "hung", "after"}



async def test_readers_give_up_on_a_hung_redis_within_their_timeouts(
        base_settings: Settings) -> None:
    """Redis paused: every reader waited for it, however short its own timeout, and
    raised only after redis-py's 5 s socket timeout, tried 7 times (~37 s; a fault audit,
    3 of 3: resultlog's, Celery's and Chicory's get(timeout=3), a join, Chicory's
    healthcheck). Each now gives up while Redis is still paused, at its own timeout
    or after RESULTLOG_REDIS_TIMEOUT_S, whichever comes first (until 1 Dec 2026 the
    read a get() starts with waited for Redis's timeout, however short the get's);
    a Celery wait that failed during the outage is waited on
    again, and not raised, stale, by a get() after it."""
    if base_settings.test_services not in ("auto", "local"):
        pytest.skip(f"private stacks are built like the local stack ({base_settings.test_services})")
    async with private_stack(base=base_settings.replace(redis_timeout_s=1.0),
                             out=lambda line: None) as stack:
        settings = stack.settings
        pid = stack.dev.services_of("redis")[0].pid()
        assert pid is not None
        emitter = SyncEmitter(settings, read_your_writes=True)
        try:
            await asyncio.to_thread(emitter.success, "done", 1, wait=True)
        finally:
            await asyncio.to_thread(emitter.close)
        app = _app(settings)
        backend = ResultBackend(settings)
        aio_backend = ResultBackend(settings)
        try:
            # Connections made before the pause, as a running client's are.
            assert await asyncio.to_thread(backend.AsyncResult("done").get, timeout=30) == 1
            assert await aio_backend.AioAsyncResult("done").get(timeout=30) == 1
            assert await asyncio.to_thread(app.AsyncResult("done").get, timeout=30) == 1

            os.kill(pid, signal.SIGSTOP)
            try:
                # Celery (results kept, so still waited on): a wait whose read fails
                # (after 1 s) is drained by a later get() and waited on again; the wait
                # fails again, queued, while Redis is paused.
                a, b = app.AsyncResult("celery-a"), app.AsyncResult("celery-b")
                with pytest.raises(Exception, match="operation timed out"):
                    await asyncio.to_thread(a.get, timeout=0.5)
                with pytest.raises(Exception):  # noqa: B017 (what it is does not matter)
                    await asyncio.to_thread(b.get, timeout=1.0)
                readers = asyncio.gather(
                    # Timeouts shorter than Redis's (1 s): the read a get() or a join
                    # starts with ends at the get's deadline (it took Redis's timeout).
                    asyncio.to_thread(backend.AsyncResult("done").get, timeout=0.5),
                    aio_backend.AioAsyncResult("pending").get(timeout=0.5),
                    aio_backend.AioGroupResult("g", ["done", "pending"]).get(timeout=0.5),
                    asyncio.to_thread(backend.GroupResult("g", ["done"]).get, timeout=0.5),
                    # Longer: the read fails first, naming Redis.
                    asyncio.to_thread(backend.AsyncResult("done").get, timeout=20),
                    aio_backend.AioAsyncResult("pending").get(timeout=20),
                    asyncio.to_thread(backend.reachable),
                    return_exceptions=True)
                # Redis stays paused until they return, or 25 s (far past 1 s; redis-py's
                # own timeouts took ~37 s): then the test fails, and Redis resumes.
                try:
                    outcomes = await asyncio.wait_for(readers, timeout=25)
                except TimeoutError:
                    pytest.fail("the readers returned only once Redis did")
                *bounded, read, waited, reachable = outcomes
                for outcome in bounded:
                    assert isinstance(outcome, StoreTimeout), outcome  # both kinds
                    assert "could not be read before the timeout" in str(outcome)
                for outcome in (read, waited):
                    assert isinstance(outcome, StoreUnavailable), outcome
                    assert "Timeout reading" in str(outcome)
                assert reachable is False
            finally:
                os.kill(pid, signal.SIGCONT)
            # Drained after Redis came back: the failures are not this get()'s to raise.
            assert await asyncio.to_thread(app.AsyncResult("done").get, timeout=30) == 1
            assert await aio_backend.AioAsyncResult("done").get(timeout=30) == 1
        finally:
            await asyncio.to_thread(backend.close)
            await aio_backend.aclose()
