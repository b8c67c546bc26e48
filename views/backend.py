"""``ResultBackend``: the connections behind AsyncResult and GroupResult, owned explicitly.

:class:`~resultlog.views.aiostate.AioState` is the one implementation of reading, waiting
and forgetting, per event loop; the sync flavour runs it on the process's loop thread through :meth:`ResultBackend.run`
(docs/ARCHITECTURE.md, "asyncio inside, sync outside"). Its only sync code of its own is a
Redis client for reads that need no waiting, so that a result already ready costs one round
trip in the caller's thread.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from collections.abc import Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from resultlog.bridge import Bridge
from resultlog.errors import StoreUnavailable
from resultlog.schemas.event import TaskEvent, listed_ids, validate_task_id
from resultlog.schemas.fold import TaskView
from resultlog.settings import Settings
from resultlog.timeouts import checked_timeout
from resultlog.redis_access import sync_client, translated
from resultlog.views.aiostate import AioState
from resultlog.views.exceptions import ExceptionRebuilder, module_names
from resultlog.views.notify import CLOSED
from resultlog.views.redis_view import READ_SCRIPT, checked_read_call, checked_read_reply

# Module aliases: inside ResultBackend the bare names are its factory methods.
from resultlog.chords import results as chord_results
from resultlog.views import group as group_results
from resultlog.views import result as task_results

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

T = TypeVar("T")


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
