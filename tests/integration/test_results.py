"""AsyncResult / GroupResult (sync and asyncio) against a real Redis, woken by push."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio

from resultlog import names
from resultlog.errors import ConfigurationError, InvalidTaskId, ResultTimeout, StoreUnavailable, TaskRevoked, ValidationError
from resultlog.bridge import THREAD_NAME
from resultlog.schemas.event import ExceptionInfo, TaskEvent, now_ms
from resultlog.schemas.fold import TaskView
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import (
    AioAsyncResult,
    AioChordResult,
    AioGroupResult,
    AioResultSet,
    AsyncResult,
    ChordResult,
    GroupResult,
    RedisView,
    RemoteTaskError,
    ResultBackend,
    ResultSet,
)
from resultlog.views.redis_view import SCRIPT, script_call
from tests.integration.test_pipeline import eventually

pytestmark = pytest.mark.integration


class TaskFailed(Exception):
    """A task exception class the caller has imported: rebuilt as itself."""


@pytest.fixture
async def backend(settings: Settings) -> AsyncIterator[ResultBackend]:
    async with ResultBackend(settings) as b:
        yield b


@pytest.fixture
async def view(settings: Settings) -> AsyncIterator[RedisView]:
    async with RedisView(settings) as v:
        yield v


def ev(task_id: str, state: State | str, **fields: Any) -> TaskEvent:
    fields.setdefault("timestamp", now_ms())
    return TaskEvent.create(task_id, state, **fields)


def failure(task_id: str, exc_type: str = "TaskFailed", module: str = __name__, **fields: Any) -> TaskEvent:
    return ev(task_id, State.FAILURE, exc=ExceptionInfo(exc_type, module, "it broke"),
              traceback="Traceback (most recent call last):\n  File \"task.py\"\nTaskFailed: it broke\n",
              **fields)


def apply_sync(settings: Settings, events: Sequence[TaskEvent]) -> None:
    """The fold script through a sync client: what a processor elsewhere would do."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys, args = script_call(settings, events)
        client.register_script(SCRIPT)(keys=keys, args=args)
    finally:
        client.close()


def channels_of(settings: Settings, task_ids: Sequence[str]) -> list[str]:
    return [names.task_done_channel(settings.redis_prefix, t) for t in task_ids]


async def subscribed(settings: Settings, *task_ids: str) -> None:
    """Until the Redis server has a subscriber on each task's done channel: a waiter is
    then listening (a condition of the real server, not a guess at how long it takes)."""
    channels = channels_of(settings, task_ids)
    async with redis.asyncio.Redis.from_url(settings.redis_url) as client:
        async def listening() -> bool:
            counts = dict(await client.pubsub_numsub(*channels))
            return all(counts.get(c.encode(), 0) > 0 for c in channels)

        await eventually(listening, f"waiters subscribed to {', '.join(task_ids)}")


def subscribed_sync(settings: Settings, *task_ids: str, timeout_s: float = 90.0) -> None:
    """:func:`subscribed` for a test without an event loop."""
    channels = channels_of(settings, task_ids)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            counts = dict(client.pubsub_numsub(*channels))
            if all(counts.get(c.encode(), 0) > 0 for c in channels):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for waiters of {', '.join(task_ids)}")
            time.sleep(0.01)
    finally:
        client.close()


async def later(delay: float, coro: Any) -> Any:
    await asyncio.sleep(delay)
    return await coro


# -- AsyncResult, asyncio flavour -------------------------------------------------------


async def test_an_unknown_task_reads_pending(backend: ResultBackend) -> None:
    r = backend.AioAsyncResult("nobody-knows")
    assert not await r.ready()
    assert not await r.exists()
    assert (r.state, r.status, r.result, r.date_done, r.name, r.retries) == (
        "PENDING", "PENDING", None, None, None, None)
    assert not await r.successful() and not await r.failed()


async def test_attributes_before_loading_raise(backend: ResultBackend) -> None:
    with pytest.raises(RuntimeError, match="await refresh"):
        _ = backend.AioAsyncResult("t").state


@pytest.mark.parametrize("bad", ["", "   ", "x" * 256, None, 42])
async def test_malformed_ids_are_rejected(backend: ResultBackend, bad: Any) -> None:
    with pytest.raises(InvalidTaskId):
        AsyncResult(bad, backend)
    with pytest.raises(InvalidTaskId):
        backend.AioAsyncResult(bad)


@pytest.mark.parametrize("bad", ["abc", None, b"abc", {"a": 1}, 42])
async def test_a_list_of_ids_that_is_no_list_is_rejected(backend: ResultBackend, view: RedisView,
                                                         bad: Any) -> None:
    """A lone string would otherwise be read as one task per character, None as none."""
    await view.apply([ev("a", State.SUCCESS, result=1)])
    calls: list[Callable[[], Any]] = [
        lambda: backend.read_many(bad), lambda: backend.GroupResult("g", bad),
        lambda: backend.ResultSet(bad), lambda: backend.AioResultSet(bad),
        lambda: backend.AioGroupResult("g", bad),
        # Made directly, as the backend's factories make them.
        lambda: ResultSet(bad), lambda: GroupResult("g", bad),
        lambda: AioResultSet(bad), lambda: AioGroupResult("g", bad)]
    for call in calls:
        with pytest.raises(InvalidTaskId, match="expected a list of task ids"):
            call()
    for aio_call in (backend.aio().read_many, view.get_many, view.read_checked):
        with pytest.raises(InvalidTaskId, match="expected a list of task ids"):
            await aio_call(bad)
    # Any other iterable of ids is read once, in order, as a list would be.
    assert [v and v.state for v in backend.read_many(iter(["a", "b"]))] == [State.SUCCESS, None]
    assert [v and v.state for v in await backend.aio().read_many(t for t in ("b", "a"))] == [None, State.SUCCESS]
    assert backend.read_many([]) == [] and await view.get_many(()) == []


@pytest.mark.parametrize("bad", [None, 42, AioAsyncResult])
async def test_a_group_member_that_is_no_task_id_is_rejected(backend: ResultBackend, bad: Any) -> None:
    member = backend.AioAsyncResult("b") if bad is AioAsyncResult else bad
    with pytest.raises(InvalidTaskId, match="task id must be a str"):
        backend.GroupResult("g", ["a", member])
    with pytest.raises(InvalidTaskId, match="task id must be a str"):
        backend.AioResultSet(["a", backend.AsyncResult("b") if bad is AioAsyncResult else bad])


@pytest.mark.parametrize("bad", [None, "redis://127.0.0.1:16379/0", Settings(), object()])
async def test_a_result_made_directly_refuses_what_is_no_backend(bad: Any) -> None:
    """It was taken, and the first read failed with an AttributeError."""
    for make in (AsyncResult, AioAsyncResult, ChordResult, AioChordResult):
        with pytest.raises(ValidationError,
                           match=f"^{make.__name__}: backend must be a resultlog ResultBackend"):
            make("x", bad)


async def test_a_result_set_made_directly_takes_only_results_of_its_flavour(
        backend: ResultBackend) -> None:
    """A task id, None or a result of the other flavour was taken as a member, and the
    first query failed with an AttributeError ('str' object has no attribute 'cached')."""
    sync, aio = backend.AsyncResult, backend.AioAsyncResult
    flavours: list[tuple[Callable[[list[Any]], Any], str, Callable[[str], Any], Callable[[str], Any]]] = [
        (ResultSet, "ResultSet", sync, aio),
        (lambda members: GroupResult("g", members), "GroupResult", sync, aio),
        (AioResultSet, "AioResultSet", aio, sync),
        (lambda members: AioGroupResult("g", members), "AioGroupResult", aio, sync),
    ]
    for make, name, right, wrong in flavours:
        for bad in ("a", wrong("a"), None, 1):
            with pytest.raises(ValidationError, match=f"^{name} members must be "):
                make([right("b"), bad])
            members = make([right("b")])
            with pytest.raises(ValidationError, match=f"^{name} members must be "):
                members.add(bad)
            assert [r.id for r in members] == ["b"]
        members.add(right("c"))
        assert [r.id for r in members] == ["b", "c"]


@pytest.mark.parametrize("bad", [123, None, "", "x" * 256])
async def test_a_group_id_that_is_no_id_is_rejected(backend: ResultBackend, bad: Any) -> None:
    """123 was taken (and str() of the group raised TypeError), as were None and ''."""
    makes: list[Callable[[], Any]] = [
        lambda: backend.GroupResult(bad, ["a"]), lambda: backend.AioGroupResult(bad, ["a"]),
        lambda: GroupResult(bad, [backend.AsyncResult("a")]),
        lambda: AioGroupResult(bad, [backend.AioAsyncResult("a")])]
    for make in makes:
        with pytest.raises(ValidationError, match="group_id must be a non-empty str"):
            make()


@pytest.mark.parametrize("bad", ["10", float("nan"), True, [1]])
async def test_a_timeout_that_is_no_number_is_rejected(backend: ResultBackend, view: RedisView,
                                                       bad: Any) -> None:
    await view.apply([ev("done", State.SUCCESS, result=1)])
    with pytest.raises(ValidationError, match="timeout must be None or a number of seconds"):
        await backend.AioAsyncResult("done").get(timeout=bad)
    with pytest.raises(ValidationError, match="timeout must be None or a number of seconds"):
        await backend.aio().wait_many(["done"], bad, stop_at_failure=True)
    # Members on two backends are waited for one after another, under the same check.
    async with ResultBackend(backend.settings) as other:
        mixed = [backend.AioAsyncResult("done"), other.AioAsyncResult("done")]
        with pytest.raises(ValidationError, match="timeout must be None or a number of seconds"):
            await AioResultSet(mixed).join(timeout=bad)
        assert await AioResultSet(mixed).join(timeout=float("inf")) == [1, 1]
        with pytest.raises(ValidationError, match="timeout must be None or a number of seconds"):
            await asyncio.to_thread(
                ResultSet([backend.AsyncResult("done"), other.AsyncResult("done")]).join, timeout=bad)
    # A negative timeout (a deadline already past) and infinity are numbers of seconds.
    assert await backend.AioAsyncResult("done").get(timeout=-1) == 1
    assert await backend.AioAsyncResult("done").get(timeout=float("inf")) == 1


async def test_a_redis_database_the_server_lacks_is_a_configuration_error(settings: Settings) -> None:
    # The URL's /db is checked to be a number; whether the server has it, only Redis
    # knows (its SELECT at connect): that refusal names the setting to fix.
    base = settings.redis_url.rsplit("/", 1)[0]
    missing = settings.replace(redis_url=f"{base}/99999")
    async with ResultBackend(missing) as backend:
        with pytest.raises(ConfigurationError, match="RESULTLOG_REDIS_URL must be below the server's 'databases'"):
            await backend.aio().read("t")
        with pytest.raises(ConfigurationError, match="RESULTLOG_REDIS_URL"):
            await backend.AioAsyncResult("t").get(timeout=1)
        with pytest.raises(ConfigurationError, match="RESULTLOG_REDIS_URL"):
            await asyncio.to_thread(lambda: backend.AsyncResult("t").state)


async def test_success_and_its_attributes(backend: ResultBackend, view: RedisView) -> None:
    t = now_ms()
    await view.apply([
        ev("t", State.RECEIVED, timestamp=t - 5, task_name="add", args=[1, 2], kwargs={"z": 3}),
        ev("t", State.STARTED, timestamp=t - 3, worker="w@host"),
    ])
    r = AioAsyncResult("t", backend)
    assert not await r.ready() and await r.exists()
    assert (r.state, r.date_done, r.worker) == ("STARTED", None, "w@host")
    await view.apply([ev("t", State.SUCCESS, timestamp=t, result={"sum": 3}, worker="w@host", attempt=1)])
    assert await r.get(timeout=5) == {"sum": 3}
    assert (r.state, r.result, r.info, r.name, r.args, r.kwargs, r.worker, r.retries, r.traceback) == (
        "SUCCESS", {"sum": 3}, {"sum": 3}, "add", [1, 2], {"z": 3}, "w@host", 1, None)
    assert r.date_done == datetime.fromtimestamp(t / 1000, UTC)
    assert r.date_done is not None and r.date_done.tzinfo is UTC
    assert await r.successful() and not await r.failed()
    assert r.task_id == r.id == str(r) == "t" and r == "t" and r == backend.AioAsyncResult("t")


async def test_get_waits_by_push_and_never_polls(
    backend: ResultBackend, view: RedisView, settings: Settings,
    redis_client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = backend.aio()
    reads = 0
    real_read = state.view.read_checked

    async def counting_read(task_ids: Sequence[str]) -> tuple[list[TaskView | None], bool]:
        nonlocal reads
        reads += 1
        return await real_read(task_ids)

    monkeypatch.setattr(state.view, "read_checked", counting_read)
    waiter = asyncio.create_task(backend.AioAsyncResult("t").get(timeout=60))
    channel = names.task_done_channel(settings.redis_prefix, "t")

    async def subscribed() -> bool:
        return dict(await redis_client.pubsub_numsub(channel)).get(channel.encode(), 0) > 0

    await eventually(subscribed, "the waiter subscribed")
    # A window longer than get()'s polling interval (0.5 s, ignored): a poller would
    # read again in it. It observes an absence, it does not synchronise anything.
    await asyncio.sleep(0.6)
    assert not waiter.done()
    assert reads == 2  # once before subscribing, once after: nothing in between
    await view.apply([ev("t", State.SUCCESS, result=7)])
    assert await waiter == 7
    assert reads == 2  # woken by the push, which carried the result


async def test_a_push_too_large_to_carry_the_result_is_followed_by_a_read(
    backend: ResultBackend, view: RedisView
) -> None:
    waiter = asyncio.create_task(backend.AioAsyncResult("big").get(timeout=60))
    await subscribed(backend.settings, "big")
    await view.apply([ev("big", State.SUCCESS, result="x" * 100_000)])
    assert await waiter == "x" * 100_000


async def test_a_result_written_just_before_subscribing_is_seen(
    backend: ResultBackend, view: RedisView, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first read misses it, and its publish goes out before the waiter listens:
    # only the read after subscribing can find it.
    state = backend.aio()
    real_read = state.view.read_checked
    first = True

    async def racing_read(task_ids: Sequence[str]) -> tuple[list[TaskView | None], bool]:
        nonlocal first
        if first:
            first = False
            await view.apply([ev(task_ids[0], State.SUCCESS, result="raced")])
            return [None], True
        return await real_read(task_ids)

    monkeypatch.setattr(state.view, "read_checked", racing_read)
    assert await backend.AioAsyncResult("t").get(timeout=1) == "raced"


async def test_timeout(backend: ResultBackend, view: RedisView) -> None:
    r = backend.AioAsyncResult("slow")
    await view.apply([ev("slow", State.STARTED)])
    started = time.perf_counter()
    with pytest.raises(ResultTimeout) as caught:
        await r.get(timeout=0.3)
    assert isinstance(caught.value, TimeoutError)
    # Not before its time (a lower bound only: a slow machine only makes it later).
    assert time.perf_counter() - started >= 0.29
    with pytest.raises(ResultTimeout):
        await r.get(timeout=0)
    # The wait left nothing subscribed behind.
    assert backend.aio().notifier._channels == {}


@pytest.mark.parametrize("kind", ["task", "chord"])
async def test_closing_while_a_wait_subscribes_does_not_hang(settings: Settings, kind: str) -> None:
    # A backend closed while a waiter's subscription is being set up cancels it; on
    # Python 3.11 that cancellation could be lost inside redis-py (views/notify.py,
    # _check_open), and the subscription then waited for ever for the answer to a
    # PING on a connection whose reader was gone, and the close with it. Where the
    # close lands depends on how far the setup got: a sweep over the loop's steps from
    # the moment the waiter asks for its subscription.
    for steps in range(12):
        backend = ResultBackend(settings)
        result = backend.AioAsyncResult("never") if kind == "task" else backend.AioChordResult("never")
        waiter = asyncio.create_task(result.get(timeout=60))
        while not backend.aio().notifier._channels:
            await asyncio.sleep(0)
        for _ in range(steps):
            await asyncio.sleep(0)
        # A bound only so that a hang fails the test instead of stalling the run.
        await asyncio.wait_for(backend.aclose(), timeout=30)
        with pytest.raises(RuntimeError, match="closed"):
            await waiter


async def test_failure_raises_the_rebuilt_exception(backend: ResultBackend, view: RedisView) -> None:
    await view.apply([failure("f")])
    r = backend.AioAsyncResult("f")
    with pytest.raises(TaskFailed, match="it broke") as caught:
        await r.get()
    assert caught.value.__notes__[0].startswith("Remote traceback:\nTraceback")
    exc = await r.get(propagate=False)
    assert type(exc) is TaskFailed and r.result is exc and r.info is exc
    assert r.state == "FAILURE" and await r.failed() and not await r.successful()
    assert r.traceback is not None and "TaskFailed: it broke" in r.traceback


async def test_an_unknown_exception_class_becomes_a_stand_in(backend: ResultBackend, view: RedisView) -> None:
    await view.apply([failure("f", "Boom", "somebody.elses.module")])
    with pytest.raises(RemoteTaskError) as caught:
        await backend.AioAsyncResult("f").get()
    assert type(caught.value).__name__ == "Boom"
    assert (caught.value.exc_type, caught.value.exc_module) == ("Boom", "somebody.elses.module")


async def test_revoked(backend: ResultBackend, view: RedisView) -> None:
    await view.apply([ev("r", State.REVOKED)])
    r = backend.AioAsyncResult("r")
    with pytest.raises(TaskRevoked, match="task r was revoked"):
        await r.get()
    assert isinstance(await r.get(propagate=False), TaskRevoked)
    assert await r.ready() and not await r.failed() and r.state == "REVOKED"


async def test_retry_is_not_ready_and_get_waits_for_the_next_attempt(backend: ResultBackend, view: RedisView) -> None:
    t = now_ms()
    await view.apply([ev("t", State.RETRY, timestamp=t, exc=ExceptionInfo("ValueError", "builtins", "flaky"))])
    r = backend.AioAsyncResult("t")
    assert not await r.ready()
    assert r.state == "RETRY" and isinstance(r.result, ValueError) and r.retries == 0
    waiter = asyncio.create_task(r.get(timeout=60))
    await subscribed(backend.settings, "t")
    await view.apply([ev("t", State.STARTED, timestamp=t + 1, attempt=1)])
    await asyncio.sleep(0.1)  # a window for a wrong wake-up, observing an absence
    assert not waiter.done()  # a wake-up for a non-ready state is not published anyway
    await view.apply([ev("t", State.SUCCESS, timestamp=t + 2, attempt=1, result="ok")])
    assert await waiter == "ok" and r.retries == 1


async def test_forget_and_exists(backend: ResultBackend, view: RedisView) -> None:
    await view.apply([ev("t", State.SUCCESS, result=1)])
    r = backend.AioAsyncResult("t")
    assert await r.exists() and await r.get() == 1
    await r.forget()
    assert not await r.exists() and r.state == "PENDING"


async def test_many_waiters_share_one_pubsub_connection(
    backend: ResultBackend, view: RedisView, settings: Settings, redis_client: redis.asyncio.Redis
) -> None:
    ids = [f"t{i}" for i in range(25)]
    waiters = [asyncio.create_task(backend.AioAsyncResult(i).get(timeout=10)) for i in ids * 2]
    notifier = backend.aio().notifier
    while len(notifier._channels) < len(ids) or not all(c.subscribed.done() for c in notifier._channels.values()):
        await asyncio.sleep(0.01)
    channels = [names.task_done_channel(settings.redis_prefix, i) for i in ids]
    numsub = dict(await redis_client.pubsub_numsub(*channels))
    assert all(numsub[c.encode()] == 1 for c in channels)  # one subscription per task, not per waiter
    ours = [c for c in await redis_client.client_list(_type="pubsub")
            if int(c["sub"]) > 0 and c["addr"] == _local_addr(backend)]
    assert len(ours) == 1 and int(ours[0]["sub"]) == len(ids)
    await view.apply([ev(i, State.SUCCESS, result=i) for i in ids])
    assert await asyncio.gather(*waiters) == ids * 2


def _local_addr(backend: ResultBackend) -> str:
    conn = backend.aio().notifier._connection
    assert conn is not None and conn._writer is not None
    host, port = conn._writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


async def test_a_waiter_survives_its_pubsub_connection_being_killed(
    backend: ResultBackend, view: RedisView, redis_client: redis.asyncio.Redis
) -> None:
    waiter = asyncio.create_task(backend.AioAsyncResult("t").get(timeout=10))
    other = asyncio.create_task(backend.AioAsyncResult("u").get(timeout=10))
    notifier = backend.aio().notifier
    while len(notifier._channels) < 2 or not all(c.subscribed.done() for c in notifier._channels.values()):
        await asyncio.sleep(0.01)
    assert await redis_client.client_kill_filter(_type="pubsub", laddr=None, addr=_local_addr(backend)) == 1
    # Written while the connection is down or re-subscribing: the resync re-read finds it.
    await view.apply([ev("t", State.SUCCESS, result="t")])
    assert await waiter == "t"
    # And the re-established subscription delivers later pushes too.
    await subscribed(backend.settings, "u")
    await view.apply([ev("u", State.SUCCESS, result="u")])
    assert await other == "u"


async def test_a_lost_barrier_answer_is_asked_for_again(
    backend: ResultBackend, view: RedisView, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resultlog.views import notify

    monkeypatch.setattr(notify, "BARRIER_PATIENCE_S", 0.1)
    notifier = backend.aio().notifier
    real_pong = notifier._pong
    dropped: list[str] = []

    def lossy_pong(token: str) -> None:
        if not dropped:
            dropped.append(token)  # as if the PING had gone out on a dying connection
            return
        real_pong(token)

    monkeypatch.setattr(notifier, "_pong", lossy_pong)
    waiter = asyncio.create_task(backend.AioAsyncResult("t").get(timeout=60))

    async def resynced() -> bool:
        return bool(dropped) and all(c.subscribed.done() for c in notifier._channels.values())

    await eventually(resynced, "a barrier answer lost and asked for again")
    await view.apply([ev("t", State.SUCCESS, result=1)])
    assert await waiter == 1


async def test_a_cancelled_waiter_does_not_disturb_the_others(backend: ResultBackend, view: RedisView) -> None:
    first = asyncio.create_task(backend.AioAsyncResult("t").get())
    second = asyncio.create_task(backend.AioAsyncResult("t").get(timeout=5))
    await asyncio.sleep(0)  # both are joining the same, not yet confirmed, subscription
    first.cancel()
    await subscribed(backend.settings, "t")
    await view.apply([ev("t", State.SUCCESS, result=1)])
    assert await second == 1
    assert first.cancelled()


async def test_unavailable_redis_is_store_unavailable(settings: Settings) -> None:
    dead = settings.replace(redis_url="redis://127.0.0.1:1/0")
    async with ResultBackend(dead) as b:
        with pytest.raises(StoreUnavailable):
            await b.AioAsyncResult("t").get(timeout=1)


# -- AsyncResult, sync flavour ----------------------------------------------------------


def test_sync_flavour(settings: Settings) -> None:
    with ResultBackend(settings) as backend:
        r = backend.AsyncResult("t")
        assert (r.state, r.ready(), r.exists(), r.result) == ("PENDING", False, False, None)
        writer = threading.Timer(0.2, apply_sync, (settings, [ev("t", State.SUCCESS, result=[1, "x"], task_name="n")]))
        writer.start()
        assert r.get(timeout=60) == [1, "x"]  # written 0.2 s later: get() waited for it
        writer.join()
        assert (r.state, r.ready(), r.successful(), r.failed(), r.name) == ("SUCCESS", True, True, False, "n")
        apply_sync(settings, [failure("f"), ev("r", State.REVOKED)])
        with pytest.raises(TaskFailed):
            backend.AsyncResult("f").get()
        assert type(backend.AsyncResult("f").get(propagate=False)) is TaskFailed
        with pytest.raises(TaskRevoked):
            backend.AsyncResult("r").get()
        with pytest.raises(ResultTimeout):
            backend.AsyncResult("never").get(timeout=0.2)
        r.forget()
        assert r.state == "PENDING" and not r.exists()


def _loop_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == THREAD_NAME)


def test_sync_waiters_in_many_threads_share_the_waiter_thread(settings: Settings) -> None:
    # One loop thread per process (resultlog.bridge): other users in this process (e.g.
    # a Celery app's backend, cached for the process's life) may hold it already; it
    # stops when the last user closes.
    others = _loop_threads()
    with ResultBackend(settings) as backend:
        ids = [f"t{i}" for i in range(20)]
        got: dict[str, Any] = {}

        def wait(task_id: str) -> None:
            got[task_id] = backend.AsyncResult(task_id).get(timeout=10)

        threads = [threading.Thread(target=wait, args=(i,)) for i in ids]
        for th in threads:
            th.start()
        subscribed_sync(settings, *ids)
        before = threading.active_count()
        apply_sync(settings, [ev(i, State.SUCCESS, result=i) for i in ids])
        for th in threads:
            th.join(10)
        assert got == {i: i for i in ids}
        assert threading.active_count() <= before
        assert _loop_threads() == 1
    assert _loop_threads() == others


def test_sync_get_is_interrupted_cleanly_by_a_timeout_without_leaking(settings: Settings) -> None:
    with ResultBackend(settings) as backend:
        for _ in range(5):
            with pytest.raises(ResultTimeout):
                backend.AsyncResult("never").get(timeout=0.05)


# -- groups -------------------------------------------------------------------------------


async def test_group_queries(backend: ResultBackend, view: RedisView) -> None:
    await view.apply([ev("a", State.SUCCESS, result=1), failure("b"), ev("c", State.STARTED)])
    g = backend.AioGroupResult("g", ["a", "b", "c"])
    assert (await g.ready(), await g.waiting(), await g.successful(), await g.failed(),
            await g.completed_count()) == (False, True, False, True, 1)
    assert len(g) == 3 and [r.id for r in g] == ["a", "b", "c"] and g[0].id == "a"
    assert g == "g" and str(g) == "g"
    await view.apply([ev("b", State.SUCCESS, result=2, attempt=1), ev("c", State.SUCCESS, result=3)])
    # A member once read as ready keeps that answer (as in Celery): b's FAILURE stays.
    assert (await g.ready(), await g.successful(), await g.failed(), await g.completed_count()) == (
        True, False, True, 2)
    await g[1].refresh()
    assert (await g.ready(), await g.waiting(), await g.successful(), await g.failed(),
            await g.completed_count()) == (True, False, True, False, 3)

    def sync_queries() -> tuple[bool, bool, bool, bool, int]:
        s = ResultSet([AsyncResult(i, backend) for i in "abc"])
        return s.ready(), s.waiting(), s.successful(), s.failed(), s.completed_count()

    assert await asyncio.to_thread(sync_queries) == (True, False, True, False, 3)


async def test_join_returns_results_in_order_under_one_deadline(backend: ResultBackend, view: RedisView) -> None:
    g = backend.AioGroupResult("g", ["a", "b", "c"])
    writers = asyncio.gather(
        later(0.3, view.apply([ev("a", State.SUCCESS, result="A")])),
        later(0.1, view.apply([ev("b", State.SUCCESS, result="B")])),
        later(0.2, view.apply([ev("c", State.SUCCESS, result="C")])),
    )
    assert await g.join(timeout=60) == ["A", "B", "C"]
    await writers
    assert await g.get() == ["A", "B", "C"]  # get is join


async def test_join_timeout_is_shared_not_per_member(
    backend: ResultBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = backend.aio()
    real_wait = state._wait_pending
    deadlines: list[float | None] = []

    async def recording_wait(task_id: str, deadline: float | None) -> TaskView:
        deadlines.append(deadline)
        return await real_wait(task_id, deadline)

    monkeypatch.setattr(state, "_wait_pending", recording_wait)
    g = backend.AioResultSet([f"never{i}" for i in range(5)])
    with pytest.raises(ResultTimeout):
        await g.join(timeout=0.3)
    # Every member waited concurrently against the same deadline, not 0.3 s each.
    assert len(deadlines) == 5 and len(set(deadlines)) == 1 and deadlines[0] is not None


async def test_join_raises_the_first_failure_in_order_without_waiting_for_later_members(
    backend: ResultBackend, view: RedisView
) -> None:
    await view.apply([ev("a", State.SUCCESS, result=1), failure("b"), failure("d", "KeyError", "builtins")])
    g = backend.AioGroupResult("g", ["a", "b", "c", "d"])  # c never finishes
    with pytest.raises(TaskFailed):
        await g.join(timeout=5)
    # Without propagate everything is awaited; a pending member then times the join out.
    with pytest.raises(ResultTimeout):
        await g.join(timeout=0.2, propagate=False)
    await view.apply([ev("c", State.SUCCESS, result=3)])
    values = await g.join(propagate=False)
    assert values[0] == 1 and type(values[1]) is TaskFailed and values[2] == 3 and type(values[3]) is KeyError


def test_sync_group_join(settings: Settings) -> None:
    with ResultBackend(settings) as backend:
        g = backend.GroupResult("g", ["a", "b"])
        assert isinstance(g, GroupResult) and not g.ready()
        threading.Timer(0.1, apply_sync, (settings, [ev("a", State.SUCCESS, result="A")])).start()
        threading.Timer(0.2, apply_sync, (settings, [ev("b", State.SUCCESS, result="B")])).start()
        assert g.join(timeout=5) == ["A", "B"]
        assert g.ready() and g.completed_count() == 2
        apply_sync(settings, [failure("x")])
        with pytest.raises(TaskFailed):
            backend.GroupResult("h", ["a", "x", "never"]).get(timeout=5)
        with pytest.raises(ResultTimeout):
            backend.ResultSet(["a", "never"]).join(timeout=0.2)


async def test_empty_groups(backend: ResultBackend) -> None:
    g = backend.AioGroupResult("g", [])
    assert await g.join() == [] and await g.ready() and not await g.waiting()


# -- lifetime ----------------------------------------------------------------------------


async def test_closing(settings: Settings) -> None:
    b = ResultBackend(settings)
    await b.AioAsyncResult("t").refresh()
    with pytest.raises(RuntimeError, match="aclose"):
        b.close()
    await b.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await b.AioAsyncResult("t").refresh()
    await b.aclose()  # idempotent


async def test_closing_the_backend_releases_its_waiters(settings: Settings) -> None:
    b = ResultBackend(settings)
    waiters = [asyncio.create_task(b.AioAsyncResult(t).get()) for t in ("a", "a", "b")]
    await subscribed(settings, "a", "b")
    joining = asyncio.create_task(b.AioAsyncResult("c").get())  # still subscribing
    await asyncio.sleep(0)
    await b.aclose()
    for w in [*waiters, joining]:
        with pytest.raises(RuntimeError, match="closed"):
            await w


# -- history (the Postgres store) ---------------------------------------------------------


async def test_history_lists_every_transition(backend: ResultBackend, settings: Settings) -> None:
    from resultlog.views.history import HistoryStore, stored

    t = now_ms()
    events = [ev("t", State.RECEIVED, timestamp=t), ev("t", State.STARTED, timestamp=t + 1),
              ev("t", State.SUCCESS, timestamp=t + 2, result=1), ev("other", State.RECEIVED, timestamp=t)]
    async with HistoryStore(settings) as store:
        await store.migrate()
        await store.write_batch(stored(events, "topic", 0, 0), {("topic", 0): len(events)},
                                consumer_group="g")
    assert await backend.AioAsyncResult("t").history() == events[:3]
    assert await asyncio.to_thread(backend.AsyncResult("t").history) == events[:3]


def test_a_waiter_behind_by_several_pushes_hands_each_state_on(settings: Settings) -> None:
    """Every change is pushed, and a waiter whose loop was busy while several arrived
    hands each one on in order (Celery's get(on_message=...) hears every state), not
    only the last."""
    t = now_ms()
    with ResultBackend(settings) as backend:
        seen: list[tuple[State, str | None]] = []
        heard_one = threading.Event()

        def on_change(view: TaskView) -> None:
            seen.append((view.state, view.result))
            heard_one.set()

        waiting = backend.watch_ready("late", sent=True, on_change=on_change)
        apply_sync(settings, [ev("late", State.RECEIVED, timestamp=t)])
        assert heard_one.wait(10)  # the waiter is past its first read, waiting for pushes
        assert seen == [(State.RECEIVED, None)]
        gate = threading.Event()

        async def busy(_: Any) -> None:
            gate.wait()  # blocks the backend's loop thread while three pushes arrive

        blocked = backend.submit(busy)
        apply_sync(settings, [ev("late", State.STARTED, timestamp=t + 1)])
        apply_sync(settings, [ev("late", State.STARTED, timestamp=t + 2, result={"done": 1})])
        apply_sync(settings, [ev("late", State.SUCCESS, timestamp=t + 3, result=1)])
        gate.set()
        blocked.result(timeout=10)
        view = waiting.result(timeout=10)
    assert view.state is State.SUCCESS
    assert seen == [(State.RECEIVED, None), (State.STARTED, None), (State.STARTED, '{"done":1}')]
