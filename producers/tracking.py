"""Tracking a block of code as a task: STARTED, then SUCCESS or FAILURE.

``emitter.track(task_id, ...)`` returns one of these; it works as a context manager
(``async with`` / ``with``) and as a decorator. A result that cannot be recorded (not
JSON-encodable, or too large) turns the task into a FAILURE carrying that error, and
the error is raised: the work succeeded but nobody could ever read its result.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from resultlog.errors import EventTooLarge, ResultNotSerializable
from resultlog.producers.events import TaskFields

if TYPE_CHECKING:
    from resultlog.producers.emitter import Emitter
    from resultlog.producers.sync import SyncEmitter

P = ParamSpec("P")
R = TypeVar("R")

_UNRECORDABLE = (ResultNotSerializable, EventTooLarge)


class _Tracker:
    def __init__(self, task_id: str, attempt: int, fields: TaskFields) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.fields = fields
        #: The value recorded with SUCCESS; set it inside the ``with`` block.
        self.result: Any = None
        self._t0: float | None = None

    def _runtime(self) -> float:
        return 0.0 if self._t0 is None else time.perf_counter() - self._t0


class AsyncTracker(_Tracker):
    """Returned by :meth:`Emitter.track`."""

    def __init__(self, emitter: Emitter, task_id: str, attempt: int, fields: TaskFields) -> None:
        super().__init__(task_id, attempt, fields)
        self._emitter = emitter

    async def __aenter__(self) -> AsyncTracker:
        await self._emitter.started(self.task_id, attempt=self.attempt, **self.fields)
        self._t0 = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runtime = self._runtime()
        emitter, task_id, attempt, fields = self._emitter, self.task_id, self.attempt, self.fields
        if exc is None:
            try:
                await emitter.success(task_id, self.result, runtime=runtime, attempt=attempt, **fields)
            except _UNRECORDABLE as unrecordable:
                await emitter.failure(task_id, unrecordable, runtime=runtime, attempt=attempt, **fields)
                raise
        elif not isinstance(exc, GeneratorExit):
            await emitter.failure(task_id, exc, runtime=runtime, attempt=attempt, **fields)
        # Returning None re-raises the block's exception.

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

    def __init__(self, emitter: SyncEmitter, task_id: str, attempt: int, fields: TaskFields) -> None:
        super().__init__(task_id, attempt, fields)
        self._emitter = emitter

    def __enter__(self) -> SyncTracker:
        self._emitter.started(self.task_id, attempt=self.attempt, **self.fields)
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runtime = self._runtime()
        emitter, task_id, attempt, fields = self._emitter, self.task_id, self.attempt, self.fields
        if exc is None:
            try:
                emitter.success(task_id, self.result, runtime=runtime, attempt=attempt, **fields)
            except _UNRECORDABLE as unrecordable:
                emitter.failure(task_id, unrecordable, runtime=runtime, attempt=attempt, **fields)
                raise
        elif not isinstance(exc, GeneratorExit):
            emitter.failure(task_id, exc, runtime=runtime, attempt=attempt, **fields)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
            tracker = SyncTracker(self._emitter, self.task_id, self.attempt, self.fields)
            with tracker:
                tracker.result = fn(*args, **kwargs)
            return tracker.result  # type: ignore[no-any-return]

        return tracked
