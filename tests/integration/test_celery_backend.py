"""The Celery result backend (``resultlog://``) with a real prefork worker and a real
processor: Celery's client API end to end, every result going through the log."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis

from resultlog.errors import ConfigurationError, InvalidTaskId, ValidationError
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import ResultBackend
from tests.integration.celery_app import TaskBroke, make_app, side_channel, side_channel_client
from tests.integration.processes import ProcessorProcess, live_processor

celery = pytest.importorskip("celery")
from celery.exceptions import TaskRevokedError  # type: ignore[import-untyped]  # noqa: E402
from kombu.exceptions import EncodeError  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The Celery broker: a Redis database of its own on the local stack (the view is in
# db 0), one queue per test.
BROKER_DB = 7
ROOT = Path(__file__).resolve().parents[2]
# Small, so that the over-the-limit test stays cheap.
MAX_EVENT_BYTES = 65_536
WAIT_S = 60


def backend_url(settings: Settings) -> str:
    """``resultlog://`` with the test's isolated settings in the query."""
    names = ("events_topic", "consumer_group", "redis_prefix", "postgres_schema",
             "redis_url", "kafka_bootstrap_servers", "postgres_dsn", "max_event_bytes")
    return "resultlog://?" + urlencode({n: str(getattr(settings, n)) for n in names})


class Worker:
    """``celery worker -P prefork -c 2`` in a child process, settings by environment."""

    def __init__(self, settings: Settings, broker: str, queue: str,
                 backend: str = "resultlog://", serializer: str = "json") -> None:
        self.log = Path(tempfile.mkstemp(prefix="resultlog-celery-worker-", suffix=".log")[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
        env.update(settings.to_env(), CELERY_BROKER_URL=broker, CELERY_TEST_QUEUE=queue,
                   CELERY_TEST_RESULT_BACKEND=backend, CELERY_TEST_SERIALIZER=serializer,
                   PYTHONUNBUFFERED="1")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tests.integration.celery_app", "worker",
                 "-P", "prefork", "-c", "2", "-l", "info", "-n", f"{queue}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    return settings.replace(max_event_bytes=MAX_EVENT_BYTES)


@pytest.fixture
def processor(worker_settings: Settings) -> Iterator[ProcessorProcess]:
    with live_processor(worker_settings) as processor:
        yield processor


@pytest.fixture
def stack(
    worker_settings: Settings, processor: ProcessorProcess, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """A client app and a worker; ``@pytest.mark.parametrize("stack", [options],
    indirect=True)`` adds backend options (a URL query) to both."""
    options = getattr(request, "param", "")
    serializer = "json"
    if options.startswith("serializer="):  # a Celery setting, not a backend option
        serializer, options = options.removeprefix("serializer="), ""
    queue = f"rl-test-{uuid.uuid4().hex[:10]}"
    broker = worker_settings.redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"
    worker = Worker(worker_settings, broker, queue,
                    "resultlog://" + (f"?{options}" if options else ""), serializer)
    client = make_app(backend_url(worker_settings) + (f"&{options}" if options else ""),
                      broker, queue, serializer)
    try:
        yield client
    finally:
        worker.stop()
        # Captured by pytest: shown only if the test failed.
        print(f"--- worker output ---\n{worker.output()[-20_000:]}")
        worker.log.unlink(missing_ok=True)
        broker_client = redis.Redis.from_url(broker)
        try:
            broker_client.delete(queue, f"_kombu.binding.{queue}")
        finally:
            broker_client.close()


@pytest.fixture
def app(stack: Any) -> Any:
    return stack


def test_delay_get_round_trips_values_through_the_log(app: Any) -> None:
    assert app.tasks["t.add"].delay(2, 3).get(timeout=WAIT_S) == 5
    value = {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "amount": Decimal("1.50"),
             "id": uuid.UUID(int=7), "raw": b"bytes", "list": [1, "two", None]}
    result = app.tasks["t.echo"].delay(value)
    assert result.get(timeout=WAIT_S) == value
    assert result.state == "SUCCESS" and result.successful()
    assert result.name == "t.echo" and result.args == [value]
    assert isinstance(result.date_done, datetime)
    assert result.worker is not None and "@" in result.worker


def test_the_tasks_a_task_sent_and_its_queue_are_kept(app: Any) -> None:
    result = app.tasks["t.spawn"].delay(2)
    sent = result.get(timeout=WAIT_S)
    fresh = app.AsyncResult(result.id)  # read back from the view, not a local cache
    assert [child.id for child in fresh.children] == sent
    assert [child.get(timeout=WAIT_S) for child in fresh.children] == [0, 2]
    assert fresh.queue == app.conf.task_default_queue


@pytest.mark.parametrize("stack", ["serializer=msgpack"], indirect=True)
def test_an_app_on_msgpack_gets_its_values_back(app: Any) -> None:
    """result_serializer = "msgpack": the log still holds JSON (kombu's), and every value
    msgpack carries comes back as it was."""
    value = {"raw": b"\x00bytes", "list": [1, "two", None], "float": 1.5, "big": 2**40}
    result = app.tasks["t.echo"].delay(value)
    assert result.get(timeout=WAIT_S) == value
    assert result.args == [value]


def test_failure_comes_back_as_the_original_type(app: Any) -> None:
    result = app.tasks["t.fail"].delay("no luck")
    with pytest.raises(TaskBroke, match="no luck"):
        result.get(timeout=WAIT_S)
    assert result.state == "FAILURE" and result.failed()
    assert "TaskBroke" in (result.traceback or "")
    assert isinstance(result.get(propagate=False), TaskBroke)


def test_retry_then_success(app: Any) -> None:
    result = app.tasks["t.flaky"].delay()
    assert result.get(timeout=WAIT_S) == 2
    assert result.retries == 2


def test_update_state_progress_is_readable_while_running(
    app: Any, worker_settings: Settings
) -> None:
    gate = side_channel(worker_settings, uuid.uuid4().hex)
    result = app.tasks["t.progress"].delay(gate)
    # Waits on a condition (the view showing PROGRESS), each read one round trip.
    meta = None
    for meta in _until(lambda: result.backend.get_task_meta(result.id, cache=False),
                       lambda m: m["status"] == "PROGRESS"):
        pass
    assert meta is not None and meta["result"] == {"done": 1, "of": 2}
    assert result.state == "PROGRESS" and result.info == {"done": 1, "of": 2}
    client = side_channel_client(worker_settings)
    try:
        client.rpush(gate, "go")
        assert result.get(timeout=WAIT_S) == "finished"
    finally:
        client.delete(gate)
        client.close()


def test_get_on_message_hears_each_state_the_task_passes_through(
    app: Any, worker_settings: Settings
) -> None:
    """As with Celery's Redis backend, which publishes every state it stores: here the
    view pushes every change of a waited task's state. The callback itself lets the
    task finish once it heard the progress report."""
    gate = side_channel(worker_settings, uuid.uuid4().hex)
    client = side_channel_client(worker_settings)
    heard: list[tuple[str, Any]] = []

    def on_message(meta: dict[str, Any]) -> None:
        heard.append((meta["status"], meta["result"]))
        if meta["status"] == "PROGRESS":
            client.rpush(gate, "go")

    try:
        result = app.tasks["t.progress"].delay(gate)
        assert result.get(timeout=WAIT_S, on_message=on_message) == "finished"
    finally:
        client.delete(gate)
        client.close()
    # What Celery's Redis backend hands it (checked by hand, 30 Nov 2026, Celery 5.7.0).
    assert [status for status, _ in heard] == ["STARTED", "PROGRESS", "SUCCESS"]
    assert set(heard[0][1]) == {"pid", "hostname"}  # Celery's mark_as_started meta
    assert heard[1:] == [("PROGRESS", {"done": 1, "of": 2}), ("SUCCESS", "finished")]


def test_revoke_with_terminate_is_recorded_and_raised(app: Any, worker_settings: Settings) -> None:
    tag = uuid.uuid4().hex
    started, gate = side_channel(worker_settings, f"started-{tag}"), side_channel(worker_settings, tag)
    client = side_channel_client(worker_settings)
    try:
        result = app.tasks["t.block"].delay(started, gate)
        assert client.blpop([started], timeout=WAIT_S) is not None  # it is running
        result.revoke(terminate=True)
        with pytest.raises(TaskRevokedError):
            result.get(timeout=WAIT_S)
        assert result.state == "REVOKED"
    finally:
        client.delete(started, gate)
        client.close()


def test_group_joins_natively(app: Any) -> None:
    add = app.tasks["t.add"]
    group_result = celery.group([add.s(i, i) for i in range(6)], app=app).apply_async()
    assert group_result.supports_native_join
    assert group_result.get(timeout=WAIT_S) == [0, 2, 4, 6, 8, 10]
    assert group_result.completed_count() == 6 and group_result.successful()


def test_forget_drops_the_result_for_good(app: Any, worker_settings: Settings) -> None:
    result = app.tasks["t.add"].delay(1, 1)
    assert result.get(timeout=WAIT_S) == 2
    result.forget()
    fresh = app.AsyncResult(result.id)
    assert fresh.state == "PENDING"
    # The forget is an event in the log, folded into the history by the processor like
    # any other: a replay or a view rebuild forgets the result again
    # (test_view_heals.py rebuilds a view holding a forget).
    with ResultBackend(worker_settings) as backend:
        def states_in_history() -> list[State]:
            try:
                return [e.state for e in backend.AsyncResult(result.id).history()]
            except ConfigurationError:  # the processor has not created the tables yet
                return []

        for states in _until(states_in_history, lambda states: State.FORGOTTEN in states):
            pass
    assert states[-1] is State.FORGOTTEN and State.SUCCESS in states


def test_a_result_over_the_size_limit_is_a_failure_with_the_reason(app: Any) -> None:
    result = app.tasks["t.big"].delay(MAX_EVENT_BYTES * 2)
    with pytest.raises(EncodeError, match="cannot be stored") as caught:
        result.get(timeout=WAIT_S)
    assert str(MAX_EVENT_BYTES) in str(caught.value)
    assert result.state == "FAILURE"


def _until(read: Any, done: Any, limit: int = 100_000) -> Iterator[Any]:
    """Yield ``read()`` until ``done`` holds for it (a condition, never a sleep)."""
    for _ in range(limit):
        value = read()
        yield value
        if done(value):
            return
    raise AssertionError(f"condition never held; last read {value!r}")


def test_saved_group_is_restored_right_after_save_and_gone_after_delete(app: Any) -> None:
    add = app.tasks["t.add"]
    saved = celery.group([add.s(1, 1), add.s(2, 2)], app=app).apply_async()
    saved.save()
    # Another backend object (another thread's, in Celery) must see it at once.
    restored = app.GroupResult.restore(saved.id, backend=_fresh_backend(app))
    assert restored is not None
    assert [r.id for r in restored.results] == [r.id for r in saved.results]
    assert restored.get(timeout=WAIT_S) == [2, 4]
    saved.delete()
    assert app.GroupResult.restore(saved.id, backend=_fresh_backend(app)) is None


def _fresh_backend(app: Any) -> Any:
    from resultlog.celery_backend import ResultlogBackend

    return ResultlogBackend(app, url=app.conf.result_backend)


def test_a_finalizer_cancelling_inside_consume_from_does_not_deadlock(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AsyncResult.__del__ calls cancel_for(); the garbage collector may run it in the
    middle of consume_from(), in the same thread (Celery's suite hung on this)."""
    client = make_app(backend_url(settings), "memory://", "unused")
    consumer = client.backend.result_consumer
    reader = client.backend.reader()
    real = reader.watch_ready

    def collected_meanwhile(task_id: str, *, sent: bool = False, **options: Any) -> Any:
        consumer.cancel_for("another-task")
        consumer.cancel_for(task_id)  # its own result object finalized meanwhile
        return real(task_id, sent=sent, **options)

    monkeypatch.setattr(reader, "watch_ready", collected_meanwhile)
    done = threading.Event()

    def consume() -> None:
        consumer.consume_from("task-being-set-up")
        done.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert done.wait(WAIT_S), "consume_from deadlocked"
    consumer.stop()


@pytest.mark.parametrize("stack", ["read_your_writes=false"], indirect=True)
def test_a_processor_killed_while_tasks_run_loses_no_result(
    stack: Any, processor: ProcessorProcess
) -> None:
    """Without read-your-writes only the processor writes the view: results sent before,
    during and after it is SIGKILLed and restarted all come back."""
    add = stack.tasks["t.add"]
    assert add.delay(0, 0).get(timeout=WAIT_S) == 0  # everything is up
    before = [add.delay(i, i) for i in range(40)]
    processor.kill()
    during = [add.delay(i, 1) for i in range(40)]
    processor.start()
    after = [add.delay(i, 2) for i in range(40)]
    assert [r.get(timeout=WAIT_S) for r in before] == [2 * i for i in range(40)]
    assert [r.get(timeout=WAIT_S) for r in during] == [i + 1 for i in range(40)]
    assert [r.get(timeout=WAIT_S) for r in after] == [i + 2 for i in range(40)]


def test_a_hard_time_limit_is_recorded_by_the_workers_main_process(
    app: Any, worker_settings: Settings
) -> None:
    """The pool process is killed; the worker's main process stores the FAILURE."""
    from celery.exceptions import TimeLimitExceeded

    tag = uuid.uuid4().hex
    started, gate = side_channel(worker_settings, f"started-{tag}"), side_channel(worker_settings, tag)
    try:
        # The task blocks on `gate`, which nobody opens: only the time limit ends it.
        result = app.tasks["t.block"].apply_async((started, gate), time_limit=1)
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=WAIT_S)
        assert result.state == "FAILURE"
    finally:
        client = side_channel_client(worker_settings)
        client.delete(started, gate)
        client.close()


def test_get_many_takes_a_collection_of_ids_and_refuses_a_lone_str(settings: Settings) -> None:
    """A str was read as one id per character: [] with max_iterations=1, else a wait
    for ever for tasks 't', '-', ...; None or a list of lists was a bare TypeError."""
    backend = make_app(backend_url(settings), "memory://", "unused").backend
    done = [f"gm-{n}-{uuid.uuid4().hex[:8]}" for n in range(2)]
    for n, task_id in enumerate(done):
        backend.store_result(task_id, n, "SUCCESS")
    # What Celery's backends take: a set (ResultSet passes one), a list, any iterable.
    for ids in (set(done), list(done), tuple(done), iter(done)):
        got = {task_id: meta["result"] for task_id, meta in backend.get_many(ids, max_iterations=1)}
        assert got == {done[0]: 0, done[1]: 1}
    for bad, named in ((done[0], "expected a list of task ids, got str"),
                       (None, "expected a list of task ids, got NoneType"),
                       ([["a"]], "task id must be a str, got list"),
                       ([done[0], None], "task id must be a str, got NoneType")):
        with pytest.raises(InvalidTaskId, match=f"^{named}"):
            backend.get_many(bad, max_iterations=1)  # at the call, not at the first next()
        with pytest.raises(InvalidTaskId, match=f"^{named}"):
            list(backend.get_many(bad))
    with pytest.raises(ValidationError, match="^timeout must be None or a number of seconds"):
        backend.get_many(done, timeout="soon")


@pytest.mark.parametrize("timeout", [float("nan"), "10", True])
def test_a_wait_whose_timeout_is_no_number_is_refused(settings: Settings, timeout: Any) -> None:
    """Celery's wait loop compares the time spent with the timeout: NaN never ran out
    (get() hung for ever), a str failed as a bare TypeError, True was one second."""
    client = make_app(backend_url(settings), "memory://", "unused")
    never = client.AsyncResult(f"never-{uuid.uuid4().hex}")
    members = client.GroupResult(f"g-{uuid.uuid4().hex}", [client.AsyncResult(f"m-{uuid.uuid4().hex}")])
    for wait in (lambda: never.get(timeout=timeout), lambda: members.join_native(timeout=timeout)):
        raised: list[BaseException] = []

        def waiting() -> None:
            try:
                wait()
            except BaseException as exc:  # noqa: BLE001 -- handed to the test's thread
                raised.append(exc)

        thread = threading.Thread(target=waiting, daemon=True)
        thread.start()
        thread.join(WAIT_S)
        assert not thread.is_alive(), f"a wait with timeout={timeout!r} did not end"
        assert len(raised) == 1 and isinstance(raised[0], ValidationError), raised
        assert str(raised[0]).startswith("timeout must be None or a number of seconds")
    # A deadline already passed is no mistake: Celery's own timeout, at once.
    with pytest.raises(celery.exceptions.TimeoutError):
        never.get(timeout=-1)
