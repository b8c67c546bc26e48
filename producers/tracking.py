"""Tracking a block of code as a task: STARTED, then SUCCESS or FAILURE.

``emitter.track(task_id, ...)`` returns one of these: a context manager and a
decorator (docs/emitter.md, "track"). A result that cannot be recorded is a FAILURE
carrying that error, raised: the work succeeded but nobody could ever read its result.

How a tracked block ends is written once, as a coroutine (:meth:`_Tracker._close`). The
asyncio tracker awaits it; the sync tracker runs it to the end at once in the caller's
thread (:func:`_run_now`): a SyncEmitter's calls return when done, so nothing in it ever
suspends, and no trip through the event loop thread is made.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from resultlog.errors import EventTooLarge, ResultNotSerializable
from resultlog.schemas.event import TaskFields

if TYPE_CHECKING:
    from resultlog.producers.emitter import Emitter
    from resultlog.producers.sync import SyncEmitter

P = ParamSpec("P")
R = TypeVar("R")

_UNRECORDABLE = (ResultNotSerializable, EventTooLarge)


class _Done:
    """An awaitable that is complete already: what a SyncEmitter call is, awaited."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that returns at once


_DONE = _Done()


def _run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends to its end, in this thread."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("a tracker's sync close suspended")  # a SyncEmitter call never does


class _Tracker:
    def __init__(self, emitter: Emitter | SyncEmitter, task_id: str, attempt: int,
                 fields: TaskFields) -> None:
        self._emitter = emitter
        self.task_id = task_id
        self.attempt = attempt
        self.fields = fields
        #: The value recorded with SUCCESS; set it inside the ``with`` block.
        self.result: Any = None
        self._t0: float | None = None

    def _started(self) -> Awaitable[None]:
        return self._emitter.started(self.task_id, attempt=self.attempt, **self.fields) or _DONE

    async def _close(self, exc: BaseException | None) -> None:
        """SUCCESS with ``result``, or FAILURE with the block's exception."""
        runtime = 0.0 if self._t0 is None else time.perf_counter() - self._t0
        emitter, task_id, attempt, fields = self._emitter, self.task_id, self.attempt, self.fields
        if exc is None:
            try:
                await (emitter.success(task_id, self.result, runtime=runtime, attempt=attempt, **fields) or _DONE)
            except _UNRECORDABLE as unrecordable:
                await (emitter.failure(task_id, unrecordable, runtime=runtime, attempt=attempt, **fields) or _DONE)
                raise
        elif not isinstance(exc, GeneratorExit):
            await (emitter.failure(task_id, exc, runtime=runtime, attempt=attempt, **fields) or _DONE)
        # Returning None re-raises the block's exception.


class AsyncTracker(_Tracker):
    """Returned by :meth:`Emitter.track`."""

    _emitter: Emitter

    async def __aenter__(self) -> AsyncTracker:
        await self._started()
        self._t0 = time.perf_counter()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._close(exc)

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
            # A fresh tracker per call: each carries its own start time and result.
            tracker = AsyncTracker(self._emitter, self.task_id, self.attempt, self.fields)
            async with tracker:
                tracker.result = await fn(*args, **kwargs)
            return tracker.result  # type: ignore[no-any-return]

        return tracked


class SyncTracker(_Tracker):
    """Returned by :meth:`SyncEmitter.track`."""

    _emitter: SyncEmitter

    def __enter__(self) -> SyncTracker:
        self._started()  # a SyncEmitter call: done when it returns
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _run_now(self._close(exc))

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
            tracker = SyncTracker(self._emitter, self.task_id, self.attempt, self.fields)
            with tracker:
                tracker.result = fn(*args, **kwargs)
            return tracker.result  # type: ignore[no-any-return]

        return tracked
