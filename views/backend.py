"""``ResultBackend``: the connections behind AsyncResult and GroupResult, owned explicitly.

:class:`AioState` is the one implementation of reading, waiting and forgetting, per event
loop; the sync flavour runs it on the process's loop thread through :meth:`ResultBackend.run`
(docs/ARCHITECTURE.md, "asyncio inside, sync outside"). Its only sync code of its own is a
Redis client for reads that need no waiting, so that a result already ready costs one round
trip in the caller's thread.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from resultlog import names
from resultlog.background import cancel_and_wait, stop_if_cancelled
from resultlog.bridge import Bridge
from resultlog.errors import ConfigurationError, ResultTimeout, StoreTimeout, StoreUnavailable
from resultlog.schemas.event import TaskEvent, listed_ids, validate_task_id
from resultlog.schemas.fold import TaskView, expired, fold, visible
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.timeouts import checked_timeout
from resultlog.redis_access import async_client, pubsub_client, sync_client, translated
from resultlog.views.exceptions import ExceptionRebuilder, module_names
from resultlog.views.history import HistoryStore
from resultlog.views.notify import CLOSED, Notifier
from resultlog.views.redis_view import (
    READ_SCRIPT,
    RedisView,
    checked_read_call,
    checked_read_reply,
    view_from_push,
)

# Module aliases: inside ResultBackend the bare names are its factory methods.
from resultlog.chords import results as chord_results
from resultlog.views import group as group_results
from resultlog.views import result as task_results

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

T = TypeVar("T")

_PROPAGATE = frozenset({State.FAILURE, State.REVOKED})


class AioState:
    """A backend's asyncio resources within one event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.client = async_client(settings)
        self.view = RedisView(settings, self.client)
        # Its own client: the pub/sub connection's reads have no timeout (redis_access).
        self._pubsub_client = pubsub_client(settings)
        self.notifier = Notifier(self._pubsub_client)
        self._history: HistoryStore | None = None
        self._history_lock = asyncio.Lock()
        # Operations in flight, so that aclose() closes the client only after they
        # have finished (a read racing with close would otherwise leak a connection).
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @asynccontextmanager
    async def op(self) -> AsyncIterator[None]:
        """One operation in flight: :meth:`aclose` waits for it before closing the client."""
        if self._closed:
            raise RuntimeError(CLOSED)
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def read(self, task_id: str) -> TaskView | None:
        return (await self.read_many([task_id]))[0]

    async def read_many(self, task_ids: Iterable[str]) -> list[TaskView | None]:
        ids = listed_ids(task_ids)  # each id is checked by the read
        async with self.op():
            return await self._read_views(ids)

    async def _read_views(self, task_ids: Sequence[str]) -> list[TaskView | None]:
        views, whole = await self.view.read_checked(task_ids)
        if whole:
            return views
        return await self.fill_from_history(task_ids, views)

    async def fill_from_history(self, task_ids: Sequence[str], views: list[TaskView | None]
                                ) -> list[TaskView | None]:
        """``views`` with each missing task folded from the history instead.

        For a Redis view that is not whole (lost, being rebuilt: views/coverage.py): a
        task it lacks may be one the log holds, and the history has every event the
        processor folded, so its fold is the view Redis would hold (expiry included).
        A history that cannot be read is an error, never a silent PENDING."""
        history = await self._history_source()
        ttl_ms = self.settings.result_ttl_s * 1000
        now_ms = int(time.time() * 1000)
        out = list(views)
        for i, (task_id, view) in enumerate(zip(task_ids, views)):
            if view is not None:
                continue
            try:
                events = await history.history(task_id)
            except ConfigurationError:
                return out  # no history tables yet: nothing was ever folded
            except StoreUnavailable as exc:
                raise StoreUnavailable(
                    f"the Redis view is being rebuilt and lacks task {task_id}, and the "
                    f"history cannot be read instead: {exc}") from exc
            folded = visible(fold(events).get(task_id))
            if folded is not None and not expired(folded, ttl_ms, now_ms):
                out[i] = folded
        return out

    async def forget(self, task_id: str) -> bool:
        async with self.op():
            return await self.view.forget(task_id)

    def deadline(self, timeout: float | None) -> float | None:
        """The loop time ``timeout`` seconds from now; None (and infinity): no deadline.
        A negative timeout has passed already (``deadline - time.time()`` may be), not a
        mistake; a timeout that is not a number is."""
        seconds = checked_timeout(timeout, negative=True)
        return None if seconds is None or seconds == math.inf else self.loop.time() + seconds

    async def wait_ready(self, task_id: str, timeout: float | None,
                         on_change: Callable[[TaskView], None] | None = None) -> TaskView:
        """The task's view once it is ready; :class:`ResultTimeout` after ``timeout`` s.
        ``on_change``: called with each not-ready state pushed while waiting."""
        async with self.op():
            deadline = self.deadline(timeout)
            view = (await self._read_by([task_id], deadline, f"task {task_id}'s state"))[0]
            if view is not None and view.ready:
                return view
            return await self._wait_pending(task_id, deadline, on_change=on_change)

    async def _read_by(self, task_ids: Sequence[str], deadline: float | None,
                       what: str) -> list[TaskView | None]:
        """The views of ``task_ids``, read before ``deadline``, else :class:`StoreTimeout`.

        A wait's first read is bounded by the wait's own timeout, as the wait is: a
        hung Redis (paused, swapping: it accepts connections and answers nothing)
        would hold it for ``RESULTLOG_REDIS_TIMEOUT_S``, whatever the timeout asked.
        A deadline passed already (``get(timeout=0)``) still gets its one read, which
        says whether the task is ready now."""
        if deadline is None or deadline <= self.loop.time():
            return await self._read_views(task_ids)
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                return await self._read_views(task_ids)
        except TimeoutError:
            if not scope.expired():
                raise
            raise StoreTimeout(
                f"{what} could not be read before the timeout: Redis (or, while the view"
                " is rebuilt, PostgreSQL) did not answer in time (down, paused or"
                " overloaded?)") from None

    async def wait_sent(self, task_id: str, on_subscribed: Callable[[], None],
                        on_change: Callable[[TaskView], None] | None = None) -> TaskView:
        """:meth:`wait_ready` for a task being sent: it cannot be ready yet, so the wait
        subscribes at once (no read ahead of it) and calls ``on_subscribed`` as soon as
        the subscription is live."""
        async with self.op():
            return await self._wait_pending(task_id, None, on_subscribed, on_change)

    async def _wait_pending(self, task_id: str, deadline: float | None,
                            on_subscribed: Callable[[], None] | None = None,
                            on_change: Callable[[TaskView], None] | None = None) -> TaskView:
        if deadline is not None and deadline <= self.loop.time():
            raise ResultTimeout(f"task {task_id} is not ready (timed out)")
        channel = names.task_done_channel(self.settings.redis_prefix, task_id)
        try:
            async with asyncio.timeout_at(deadline):
                async with self.notifier.watch(channel) as watch:
                    if on_subscribed is not None:
                        on_subscribed()
                    # Subscribed first, read second: see notify.py.
                    view = (await self._read_views([task_id]))[0]
                    while view is None or not view.ready:
                        # A wait that is dropped is cancelled (Celery's result consumer,
                        # a join's members): it must end even if redis-py lost that.
                        stop_if_cancelled()
                        await watch.wait()
                        # A push arriving after the take wakes the next wait: none is
                        # missed. Each push usually carries the view itself (every
                        # change of the winner is pushed, in fold order): no read.
                        # Without one (a reconnect's wake-up, a view too large to
                        # push, a forget), read.
                        for payload in watch.take():
                            view = view_from_push(task_id, payload)
                            if view is None:
                                view = (await self._read_views([task_id]))[0]
                            elif on_change is not None and not view.ready:
                                on_change(view)
                            if view is not None and view.ready:
                                break
                    return view
        except TimeoutError as exc:
            if isinstance(exc, ResultTimeout):
                raise
            raise ResultTimeout(f"task {task_id} did not become ready in time") from None

    async def wait_many(
        self, task_ids: Sequence[str], timeout: float | None, stop_at_failure: bool
    ) -> list[TaskView]:
        """Views of ``task_ids`` in order, once ready, under ONE deadline.

        With ``stop_at_failure`` it returns early, at the first member *in order* that
        failed or was revoked (what a sequential Celery ``join`` would raise first).
        Every pending member is watched concurrently, so the total wait is the slowest
        member's, not the sum.
        """
        async with self.op():
            deadline = self.deadline(timeout)
            views = await self._read_by(task_ids, deadline, f"the state of {len(task_ids)} tasks")
            pending: dict[int, asyncio.Task[TaskView]] = {}
            try:
                for i, (task_id, view) in enumerate(zip(task_ids, views)):
                    if view is None or not view.ready:
                        pending[i] = self.loop.create_task(self._wait_pending(task_id, deadline))
                done: list[TaskView] = []
                for i, view in enumerate(views):
                    if i in pending:
                        view = await pending[i]
                    assert view is not None
                    done.append(view)
                    if stop_at_failure and view.state in _PROPAGATE:
                        break
                return done
            except ResultTimeout:
                ready = sum(1 for t in pending.values()
                            if t.done() and not t.cancelled() and t.exception() is None)
                raise ResultTimeout(
                    f"{len(task_ids) - len(pending) + ready} of {len(task_ids)} tasks were ready"
                    " before the timeout"
                ) from None
            finally:
                await cancel_and_wait(*pending.values())

    async def history(self, task_id: str) -> list[TaskEvent]:
        validate_task_id(task_id)
        async with self.op():
            return await (await self._history_source()).history(task_id)

    async def _history_source(self) -> HistoryStore:
        async with self._history_lock:
            if self._history is None:
                history = HistoryStore(self.settings)
                await history.start()
                self._history = history
            return self._history

    async def aclose(self) -> None:
        """Release waiters (they raise RuntimeError), let reads finish, close connections."""
        if self._closed:
            return
        self._closed = True
        await self.notifier.aclose()
        await self._idle.wait()
        await self.view.close()
        await self.client.aclose()
        await self._pubsub_client.aclose()
        if self._history is not None:
            history, self._history = self._history, None
            await history.close()


class ResultBackend:
    """Where results are read from: the Redis view (and the Postgres history).

    ``import_modules``: modules that may be imported to rebuild a task's exception
    class (see :mod:`resultlog.views.exceptions`); by default only modules already
    imported are used. A lone string (``"myapp"``, not ``["myapp"]``), None or an entry
    that is not a module name is a :class:`ConfigurationError`, as a bad ``settings`` is.

    Close it with :meth:`close` (sync use) or ``await`` :meth:`aclose` (if the asyncio
    flavour was used), or use it as a context manager of either kind.
    """

    def __init__(self, settings: Settings | None = None, *, import_modules: Iterable[str] = ()) -> None:
        self.settings = Settings.given(settings, "ResultBackend")
        self.exceptions = ExceptionRebuilder(module_names(import_modules, "ResultBackend: import_modules"))
        self._lock = threading.Lock()
        self._sync: redis.Redis | None = None
        self._read_script: Script | None = None
        self._bridge = Bridge()
        self._bridged: AioState | None = None  # the state on the bridge's loop
        self._aio: AioState | None = None
        self._closed = False

    # --- result objects -------------------------------------------------------------

    def AsyncResult(self, task_id: str) -> task_results.AsyncResult:  # noqa: N802 (Celery's name)
        return task_results.AsyncResult(task_id, self)

    def AioAsyncResult(self, task_id: str) -> task_results.AioAsyncResult:  # noqa: N802
        return task_results.AioAsyncResult(task_id, self)

    def ResultSet(self, results: Iterable[str | task_results.AsyncResult]) -> group_results.ResultSet:  # noqa: N802
        return group_results.ResultSet([self._member(r) for r in listed_ids(results)])

    def GroupResult(self, group_id: str, results: Iterable[str | task_results.AsyncResult]) -> group_results.GroupResult:  # noqa: N802
        return group_results.GroupResult(group_id, [self._member(r) for r in listed_ids(results)])

    def AioResultSet(self, results: Iterable[str | task_results.AioAsyncResult]) -> group_results.AioResultSet:  # noqa: N802
        return group_results.AioResultSet([self._aio_member(r) for r in listed_ids(results)])

    def AioGroupResult(  # noqa: N802
        self, group_id: str, results: Iterable[str | task_results.AioAsyncResult]
    ) -> group_results.AioGroupResult:
        return group_results.AioGroupResult(group_id, [self._aio_member(r) for r in listed_ids(results)])

    def ChordResult(self, chord_id: str) -> chord_results.ChordResult:  # noqa: N802
        return chord_results.ChordResult(chord_id, self)

    def AioChordResult(self, chord_id: str) -> chord_results.AioChordResult:  # noqa: N802
        return chord_results.AioChordResult(chord_id, self)

    def _member(self, r: str | task_results.AsyncResult) -> task_results.AsyncResult:
        # Anything else is a task id, checked by AsyncResult (None, an int: InvalidTaskId).
        return r if isinstance(r, task_results.AsyncResult) else self.AsyncResult(r)

    def _aio_member(self, r: str | task_results.AioAsyncResult) -> task_results.AioAsyncResult:
        return r if isinstance(r, task_results.AioAsyncResult) else self.AioAsyncResult(r)

    # --- sync primitives ------------------------------------------------------------
    # Reads in the caller's thread; everything else is AioState's, run on the loop thread.

    def run(self, operation: Callable[[AioState], Coroutine[Any, Any, T]]) -> T:
        """Run an asyncio ``operation`` of this backend from sync code and wait for it:
        ``operation(state)`` runs on the process's loop thread, with that loop's
        :class:`AioState`. Ctrl-C cancels it."""
        self._check_open()
        return self._bridge.run(self._on_loop(operation))

    def submit(self, operation: Callable[[AioState], Coroutine[Any, Any, T]]) -> Future[T]:
        """:meth:`run` without waiting; cancelling the future cancels the operation."""
        self._check_open()
        return self._bridge.submit(self._on_loop(operation))

    async def _on_loop(self, operation: Callable[[AioState], Coroutine[Any, Any, T]]) -> T:
        return await operation(self.aio())

    def read(self, task_id: str) -> TaskView | None:
        return self.read_many([task_id])[0]

    def read_many(self, task_ids: Iterable[str]) -> list[TaskView | None]:
        task_ids, keys, args = checked_read_call(self.settings, task_ids)
        if not task_ids:
            return []
        self.sync_client()
        assert self._read_script is not None
        with translated("reading tasks"):
            replies = self._read_script(keys=keys, args=args)
        views, whole = checked_read_reply(task_ids, replies)
        if whole:
            return views
        return self.run(lambda state: state.fill_from_history(task_ids, views))

    def forget(self, task_id: str) -> bool:
        validate_task_id(task_id)
        return self.run(lambda state: state.forget(task_id))

    def wait_ready(self, task_id: str, timeout: float | None) -> TaskView:
        validate_task_id(task_id)
        seconds = checked_timeout(timeout, negative=True)
        # Finished tasks need no trip through the loop thread, unless the timeout is
        # shorter than this thread's client would wait for a hung Redis: on the loop,
        # the read is bounded by the timeout (AioState._read_by).
        if seconds is None or not 0 < seconds < self.settings.redis_timeout_s:
            view = self.read(task_id)
            if view is not None and view.ready:
                return view
        return self.run(lambda state: state.wait_ready(task_id, timeout))

    def watch_ready(self, task_id: str, *, sent: bool = False,
                    on_change: Callable[[TaskView], None] | None = None) -> Future[TaskView]:
        """The task's view once it is ready, as a future: :meth:`wait_ready` without
        blocking the caller (for push-based waiters such as the Celery backend's result
        consumer). Cancel the future to stop waiting.

        ``sent``: the task is being sent now. Returns once the wait's subscription is
        live (or the wait failed), so that whoever sent it knows it is watched — one
        round trip to Redis, as Celery's Redis backend subscribes when it sends.
        ``on_change``: called, in the backend's loop thread, with each not-ready state
        pushed while the wait lasts (Celery's ``get(on_message=...)``)."""
        validate_task_id(task_id)
        if not sent:
            return self.submit(lambda state: state.wait_ready(task_id, None, on_change))
        live = threading.Event()
        future = self.submit(lambda state: state.wait_sent(task_id, live.set, on_change))
        future.add_done_callback(lambda _: live.set())  # failed to subscribe: do not block
        live.wait()
        return future

    def wait_many(
        self, task_ids: Sequence[str], timeout: float | None, stop_at_failure: bool
    ) -> list[TaskView]:
        return self.run(lambda state: state.wait_many(task_ids, timeout, stop_at_failure))

    def history(self, task_id: str) -> list[TaskEvent]:
        return self.run(lambda state: state.history(task_id))

    def reachable(self) -> bool:
        """Whether Redis answers now: a PING, in the caller's thread, within about
        ``RESULTLOG_REDIS_TIMEOUT_S`` (and the client's reconnecting, about 3 s)."""
        try:
            with translated("pinging Redis"):
                self.sync_client().ping()
        except StoreUnavailable:
            return False
        return True

    def sync_client(self) -> redis.Redis:
        """The backend's sync Redis client (for reads that need no waiting)."""
        self._check_open()
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    client = sync_client(self.settings)
                    self._read_script = client.register_script(READ_SCRIPT)
                    self._sync = client
        return self._sync

    # --- asyncio primitives ----------------------------------------------------------

    def aio(self) -> AioState:
        """The asyncio resources for the running event loop (created on first use)."""
        self._check_open()
        loop = asyncio.get_running_loop()
        if loop is self._bridge.loop:
            # The sync flavour's own state (made again in a forked child's new loop).
            bridged = self._bridged
            if bridged is None or bridged.loop is not loop:
                bridged = self._bridged = AioState(self.settings)
            return bridged
        if self._aio is None:
            self._aio = AioState(self.settings)
        elif self._aio.loop is not loop:
            raise RuntimeError(
                "this ResultBackend's asyncio side belongs to another event loop; "
                "use one backend per event loop"
            )
        return self._aio

    # --- lifetime ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(CLOSED)

    def close(self) -> None:
        """Close the sync side. If the asyncio flavour was used, use :meth:`aclose`."""
        self._close_sync()
        if self._aio is not None:
            # Connections of an event loop cannot be closed from outside it.
            raise RuntimeError(
                "this backend has asyncio connections open: close it with `await backend.aclose()`"
            )

    def _close_sync(self) -> None:
        self._closed = True
        bridged, self._bridged = self._bridged, None
        try:
            if bridged is not None and bridged.loop is self._bridge.loop:
                self._bridge.run(bridged.aclose())
        finally:
            self._bridge.close()
            client, self._sync = self._sync, None
            if client is not None:
                client.close()

    async def aclose(self) -> None:
        """Close everything (call it from the event loop the asyncio flavour used)."""
        aio, self._aio = self._aio, None
        try:
            if aio is not None:
                await aio.aclose()
        finally:
            self._close_sync()

    def __enter__(self) -> ResultBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> ResultBackend:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<ResultBackend {self.settings.redis_url} prefix={self.settings.redis_prefix!r}>"
