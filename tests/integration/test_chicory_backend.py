"""resultlog as Chicory's result backend, with a real Chicory worker on the local Redis
broker and a real processor: every result and heartbeat goes through the log."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio

pytest.importorskip("chicory")

from chicory import Chicory, Worker  # noqa: E402
from chicory.result import AsyncResult  # noqa: E402
from chicory.types import TaskResult, TaskState, WorkerStats  # noqa: E402

from resultlog import names  # noqa: E402
from resultlog.chicory_backend import ResultlogBackend  # noqa: E402
from resultlog.dashboard.status import PipelineStatus  # noqa: E402
from resultlog.errors import (  # noqa: E402
    ConfigurationError,
    ResultNotSerializable,
    ResultTimeout,
    ValidationError,
)
from resultlog.producers import Emitter  # noqa: E402
from resultlog.schemas.event import TaskEvent  # noqa: E402
from resultlog.schemas.states import State  # noqa: E402
from resultlog.settings import Settings  # noqa: E402
from resultlog.views.backend import ResultBackend  # noqa: E402
from resultlog.views.history import HistoryStore  # noqa: E402
from tests.integration.chicory_app import broker_url, make_app  # noqa: E402
from tests.integration.processes import ProcessorProcess, live_processor  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
T = TypeVar("T")


async def until(read: Callable[[], Awaitable[T]], done: Callable[[T], bool],
                timeout: float = WAIT_S) -> T:
    """``read()`` again until ``done`` holds of its value (a condition, not a sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if done(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


@pytest.fixture
def processor(settings: Settings) -> Iterator[ProcessorProcess]:
    with live_processor(settings) as processor:
        yield processor


@pytest.fixture
async def app(settings: Settings, processor: ProcessorProcess) -> AsyncIterator[Chicory]:
    app = make_app(settings, broker_url(settings))
    await app.connect()
    await app.broker.purge_queue()
    await app.broker.purge_dlq()
    yield app
    await app.disconnect()


@pytest.fixture
async def worker(app: Chicory, settings: Settings) -> AsyncIterator[Worker]:
    # An app of its own, as a worker process has: Worker.start() connects its app again,
    # and Chicory's Redis broker would drop (not close) the client app's connections.
    worker = Worker(make_app(settings, broker_url(settings)))
    await worker.start()
    yield worker
    await worker.stop(timeout=5)  # disconnects its app


def backend(app: Chicory) -> ResultlogBackend:
    assert isinstance(app.backend, ResultlogBackend)
    return app.backend


async def test_a_result_comes_back_through_the_log_with_its_history(
        app: Chicory, worker: Worker, settings: Settings) -> None:
    result = await app.get_task("tests.add").delay(2, 3)
    assert await result.get(timeout=WAIT_S) == 5
    assert await result.state() is TaskState.SUCCESS
    # Postgres is written only by the processor: the events went through the log.
    async with ResultBackend(settings) as reader:
        async def history() -> list[Any]:
            try:
                return await reader.aio().history(result.task_id)
            except ConfigurationError:  # the processor has not migrated the schema yet
                return []

        history_ = await until(history, lambda h: len(h) >= 2)
    assert [e.state.value for e in history_] == ["STARTED", "SUCCESS"]


async def test_a_failure_reads_back_with_its_error_and_traceback(app: Chicory, worker: Worker) -> None:
    result = await app.get_task("tests.boom").delay("no luck")
    with pytest.raises(Exception, match="no luck"):
        await result.get(timeout=WAIT_S)
    stored = await backend(app).get_result(result.task_id)
    assert stored is not None and stored.state is TaskState.FAILURE
    assert stored.error == "no luck"
    assert stored.traceback is not None and "ValueError: no luck" in stored.traceback


async def test_a_retried_task_succeeds_on_its_second_run(app: Chicory, worker: Worker) -> None:
    result = await app.get_task("tests.flaky").delay()
    assert await result.get(timeout=WAIT_S) == 1


async def test_a_task_out_of_retries_fails_and_goes_to_the_dead_letter_queue(
        app: Chicory, worker: Worker) -> None:
    result = await app.get_task("tests.doomed").delay()
    with pytest.raises(Exception, match="permanent failure"):
        await result.get(timeout=WAIT_S)
    dead = await until(lambda: app.broker.get_dlq_messages(count=100),
                       lambda msgs: any(m.original_message.id == result.task_id for m in msgs))
    assert any(m.original_message.id == result.task_id for m in dead)


async def test_a_dead_lettered_result_round_trips_and_is_a_failure_to_resultlog(
        app: Chicory, settings: Settings) -> None:
    task_id = uuid.uuid4().hex
    stored = TaskResult[Any](task_id=task_id, state=TaskState.DEAD_LETTERED, result={"k": [1]},
                             error="gave up", traceback="Traceback ...")
    await backend(app).store_result(task_id, stored)
    assert await backend(app).get_result(task_id) == stored
    async with ResultBackend(settings) as reader:
        view = await reader.aio().read(task_id)
    assert view is not None and view.state.value == "FAILURE" and view.ready


async def test_the_push_wait_wakes_on_the_result(app: Chicory, worker: Worker) -> None:
    result = await app.get_task("tests.add").delay(20, 22)
    done = await backend(app).wait(result.task_id, timeout=WAIT_S)
    assert (done.state, done.result) == (TaskState.SUCCESS, 42)
    with pytest.raises(ResultTimeout):
        await backend(app).wait(uuid.uuid4().hex, timeout=0.2)
    # Refused in the words every wait uses: True was a 1-s wait, -1 other words.
    for bad in (float("nan"), -1, True, "5"):
        with pytest.raises(ValidationError, match="timeout must be None or a number of seconds"):
            await backend(app).wait(result.task_id, timeout=bad)  # type: ignore[arg-type]


async def test_another_producers_wrapper_naming_a_ready_state_reads_as_the_events_state(
        app: Chicory, settings: Settings) -> None:
    """A STARTED event whose result wraps SUCCESS (written by another producer:
    task_event never wraps a state of another event state) read as SUCCESS, 42 while
    wait() waited on, the view going by the event's own state."""
    task_id = uuid.uuid4().hex
    wrapper = {names.CHICORY_STATE_KEY: "SUCCESS", names.CHICORY_RESULT_KEY: 42}
    async with Emitter(settings, read_your_writes=True) as emitter:
        await emitter.emit(TaskEvent.create(task_id, State.STARTED, result=wrapper), wait=True)
    got = await backend(app).get_result(task_id)
    assert got == TaskResult[Any](task_id=task_id, state=TaskState.STARTED, result=wrapper)
    with pytest.raises(ResultTimeout):
        await backend(app).wait(task_id, timeout=0.2)


async def test_set_state_is_readable_and_a_ready_one_is_acknowledged(app: Chicory) -> None:
    task_id = uuid.uuid4().hex
    await backend(app).set_state(task_id, TaskState.SUCCESS)
    got = await backend(app).get_result(task_id)
    assert got == TaskResult[Any](task_id=task_id, state=TaskState.SUCCESS)
    assert await AsyncResult(task_id, app.backend).get(timeout=1) is None


async def test_result_ttl_is_each_results_expiry_as_with_chicorys_redis_backend(
        settings: Settings) -> None:
    """Carried by each event, so the writer's fold and the processor's (and a replay's)
    give the key the same expiry: the event's timestamp plus result_ttl."""
    client = redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        for ttl, expected in ((120, 120_000), (0, None), (None, settings.result_ttl_s * 1000)):
            chicory_backend = ResultlogBackend(settings, result_ttl=ttl)
            await chicory_backend.connect()
            try:
                task_id = uuid.uuid4().hex
                await chicory_backend.store_result(
                    task_id, TaskResult[Any](task_id=task_id, state=TaskState.SUCCESS, result=1))
            finally:
                await chicory_backend.disconnect()
            key = names.task_key(settings.redis_prefix, task_id)
            at = await client.pexpiretime(key)
            got = None if at == -1 else at - int(await client.hget(key, "timestamp") or 0)
            assert got == expected, ttl
    finally:
        await client.aclose()


async def test_a_deleted_result_stays_deleted_after_the_processor_and_a_replay(
        app: Chicory, settings: Settings) -> None:
    task_id = uuid.uuid4().hex
    await backend(app).store_result(task_id, TaskResult[Any](task_id=task_id, state=TaskState.SUCCESS,
                                                             result="x"))
    await backend(app).delete_result(task_id)
    assert await backend(app).get_result(task_id) is None
    # The processor folds the SUCCESS and the forget (its history shows both) ...
    async with ResultBackend(settings) as reader:
        async def history() -> list[Any]:
            try:
                return await reader.aio().history(task_id)
            except ConfigurationError:
                return []

        assert [e.state.value for e in await until(history, lambda h: len(h) >= 2)] == [
            "SUCCESS", "FORGOTTEN"]
    assert await backend(app).get_result(task_id) is None
    # ... and a rebuild of the Redis view from the log forgets it again.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
    env.update(settings.to_env())
    done = subprocess.run([sys.executable, "-m", "resultlog", "replay", "--redis-only", "--fresh",
                           "--force"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert await backend(app).get_result(task_id) is None


def stats(worker_id: str, **changes: Any) -> WorkerStats:
    values: dict[str, Any] = dict(worker_id=worker_id, hostname="h", pid=1, queue="default",
                                  concurrency=1, started_at=datetime.now(UTC),
                                  last_heartbeat=datetime.now(UTC))
    values.update(changes)
    return WorkerStats(**values)


async def test_heartbeats_reach_both_views_through_the_processor(
        settings: Settings, processor: ProcessorProcess, pg_pool: asyncpg.Pool) -> None:
    # Without read-your-writes only the processor writes the views.
    app = make_app(settings, broker_url(settings), read_your_writes=False)
    worker = Worker(app)
    await worker.start()  # connects the app; stop() disconnects it
    try:
        active = await until(backend(app).get_active_workers,
                             lambda ws: any(w.worker_id == worker.worker_id for w in ws))
        assert [w.queue for w in active if w.worker_id == worker.worker_id] == ["default"]
        hb = await backend(app).get_heartbeat(worker.worker_id)
        assert hb is not None and hb.hostname == worker.hostname and hb.pid == os.getpid()
    finally:
        await worker.stop(timeout=5)
    await app.connect()
    schema = settings.postgres_schema
    table = f'"{schema}".{names.WORKER_HEARTBEATS_TABLE}'

    async def last_row() -> Any:
        return await pg_pool.fetchrow(
            f"SELECT * FROM {table} WHERE worker_id = $1 ORDER BY beat_at DESC LIMIT 1",
            worker.worker_id)

    # The worker's last heartbeat says it stopped.
    row = await until(last_row, lambda r: r is not None and not r["is_running"])
    assert row is not None and not row["is_running"] and row["source"] == "chicory"
    session = await pg_pool.fetchrow(
        f'SELECT * FROM "{schema}".{names.WORKER_SESSIONS_VIEW} WHERE worker_id = $1',
        worker.worker_id)
    assert session["stopped"] and session["beats"] >= 2 and session["uptime_s"] >= 0
    await app.disconnect()


async def test_a_killed_worker_drops_out_after_its_ttl(
        settings: Settings, app: Chicory) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
    env.update(settings.to_env(), CHICORY_TEST_BROKER_URL=broker_url(settings), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.chicory_app"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = (await asyncio.to_thread(proc.stdout.readline)).decode()
        assert line.startswith("worker "), line
        worker_id = line.split()[1]
        live = await until(backend(app).get_active_workers,
                           lambda ws: any(w.worker_id == worker_id for w in ws))
        assert any(w.worker_id == worker_id and w.pid == proc.pid for w in live)
        proc.kill()
        proc.wait(timeout=30)
        live = await until(backend(app).get_active_workers,
                           lambda ws: all(w.worker_id != worker_id for w in ws))
        assert all(w.worker_id != worker_id for w in live)
        assert await backend(app).get_heartbeat(worker_id) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


async def view_behind_log(status: PipelineStatus) -> int:
    """How many records of this test's events topic the processor has not yet folded
    into the Redis view (the dashboard's lag table, summed; a partition the view has no
    position for counts whole)."""
    lags = await status.lag()
    assert lags, f"the events topic {status.settings.events_topic} has no partitions"
    return sum(p.end_offset if p.view_lag is None else max(0, p.view_lag) for p in lags)


async def test_a_stored_heartbeat_is_read_back_and_cleaned_once_stale(
        app: Chicory, settings: Settings, processor: ProcessorProcess) -> None:
    # The processor folds the same heartbeat from the log, and every fold of the workers
    # view drops the index entries expired by then (views/workers.py). Started with the
    # test, it could fold it only after the 3 s ttl (it did, once, in CI), pruning the
    # entry before the cleanup below: so the heartbeat is stored once the processor
    # folds, and the cleanup called once it has folded this test's whole log.
    async def output() -> str:
        return processor.output()
    assert "resuming at" in await until(output, lambda out: "resuming at" in out)
    worker_id = f"w-{uuid.uuid4().hex}"
    await backend(app).store_heartbeat(worker_id, stats(worker_id), ttl=3)
    got = await backend(app).get_heartbeat(worker_id)
    assert got is not None and got.worker_id == worker_id
    index = names.workers_index_key(settings.redis_prefix)
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        async with HistoryStore(settings) as history:
            status = PipelineStatus(settings, client, history)
            await status.start()
            try:
                assert await until(lambda: view_behind_log(status), lambda behind: behind == 0) == 0
            finally:
                await status.close()
        await until(lambda: backend(app).get_heartbeat(worker_id), lambda hb: hb is None)
        assert await client.zscore(index, worker_id) is not None, \
            "the processor folded the heartbeat only after its 3 s ttl"
        assert await backend(app).cleanup_stale_clients(stale_seconds=0) == 1
        assert await client.zscore(index, worker_id) is None
    finally:
        await client.aclose()
    assert await backend(app).cleanup_stale_clients(stale_seconds=0) == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 10**400, -1, True,
                                 "60", None])
async def test_cleanup_refuses_what_is_no_number_of_seconds(settings: Settings, bad: Any) -> None:
    """NaN passed the check and failed in computing the cutoff (ValueError: cannot convert
    float NaN to integer), infinity and a huge int with an OverflowError."""
    connected = ResultlogBackend(settings)
    await connected.connect()
    try:
        with pytest.raises(ValidationError, match="stale_seconds must be a number of seconds"):
            await connected.cleanup_stale_clients(bad)
        assert await connected.cleanup_stale_clients(0) == 0
    finally:
        await connected.disconnect()



async def test_what_can_never_be_stored_is_refused_at_the_call_and_not_again_later(
        settings: Settings) -> None:
    """A result pydantic's JSON mode cannot encode raised pydantic's own error (or a
    UnicodeDecodeError); a last_heartbeat over an hour ahead, which Kafka refuses, was a
    retriable BrokerUnavailable, and disconnect() raised it again."""
    connected = ResultlogBackend(settings)
    await connected.connect()
    try:
        for value in (object(), b"\xff\x00"):
            with pytest.raises(ResultNotSerializable, match="^the task's result cannot be encoded"):
                await connected.store_result("t-1", TaskResult[Any](
                    task_id="t-1", state=TaskState.SUCCESS, result=value))
        ahead = stats("w-ahead", last_heartbeat=datetime.now(UTC) + timedelta(hours=2))
        with pytest.raises(ValidationError, match="^last_heartbeat .* s ahead of this host's clock"):
            await connected.store_heartbeat("w-ahead", ahead, ttl=30)
        assert await connected.get_heartbeat("w-ahead") is None
        assert await connected.get_result("t-1") is None
    finally:
        await connected.disconnect()  # nothing failed to deliver: nothing raised
