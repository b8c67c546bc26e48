"""``AioState``: reading, waiting and forgetting results within one event loop.

The one implementation of each: :class:`~resultlog.views.backend.ResultBackend`'s sync
flavour runs it on the process's loop thread, its asyncio flavour on the caller's loop,
and Chicory's backend (resultlog/chicory_backend) on Chicory's own. A wait subscribes to
the task's done channel before it reads (views/notify.py), so no push is missed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

from resultlog import names
from resultlog.background import cancel_and_wait, stop_if_cancelled
from resultlog.errors import ConfigurationError, ResultTimeout, StoreTimeout, StoreUnavailable
from resultlog.redis_access import async_client, pubsub_client
from resultlog.schemas.event import TaskEvent, listed_ids, validate_task_id
from resultlog.schemas.fold import TaskView, expired, fold, visible
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.timeouts import checked_timeout
from resultlog.views.history import HistoryStore
from resultlog.views.notify import CLOSED, Notifier
from resultlog.views.redis_view import RedisView, view_from_push

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
