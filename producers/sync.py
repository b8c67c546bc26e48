"""The emitter for threaded and forked (prefork) workers.

``SyncEmitter`` runs the same pipeline as :class:`~resultlog.producers.emitter.Emitter`
on a private event loop in a daemon thread. Emitting calls do their work (validation,
encoding, buffering) in the calling thread and only hand bytes to the loop, so they are
cheap and safe from any number of threads; ``flush``, ``start`` and ``close`` run on the
loop and block the caller.

Fork safety: a process forked from one that used the emitter inherits the parent's
loop, thread object and sockets, but not the thread. The first call in the child sees
that ``os.getpid()`` changed, abandons the inherited runtime without touching it (its
sockets belong to the parent) and starts a fresh one. Events the parent had buffered
but not yet delivered are the parent's to deliver, never the child's.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import weakref
from collections.abc import Coroutine, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, Unpack

from resultlog.errors import EmitterClosed, ResultlogError
from resultlog.producers.emitter import default_worker_name
from resultlog.producers.events import TaskFields, build, build_state
from resultlog.producers.options import EmitterOptions, PipelineOptions, resolve
from resultlog.producers.pipeline import Pipeline
from resultlog.producers.tracking import SyncTracker
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings

log = logging.getLogger("resultlog.producers")
T = TypeVar("T")

# Runtimes inherited across a fork: kept referenced forever so that garbage collection
# never runs their finalizers (which would close sockets the parent still uses).
_ABANDONED: list[_Runtime] = []


class _Runtime:
    """A pipeline on its own event loop thread, owned by one process."""

    def __init__(self, settings: Settings, options: PipelineOptions, worker: str) -> None:
        self.pid = os.getpid()
        self.worker = worker
        self.pipeline = Pipeline(settings, options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="resultlog-emitter", daemon=True)
        self.thread.start()
        try:
            self.call(self.pipeline.start())
        except BaseException:
            self._end_loop()
            raise
        _RUNNING.add(self)

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # As asyncio.run() does: nothing may be left pending on a closed loop.
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it in this thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self, timeout_s: float | None) -> None:
        _RUNNING.discard(self)
        try:
            self.call(self.pipeline.stop(timeout_s))
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


class SyncEmitter:
    """Thread-safe, fork-safe, blocking twin of :class:`Emitter`; same methods, no ``await``.

    Starts on first use (or ``start()`` / ``with``). ``close()`` flushes and stops; an
    ``atexit`` hook closes emitters still open at interpreter exit.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        worker: str | None = None,
        **options: Unpack[EmitterOptions],
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self._worker = worker
        self._options = resolve(self.settings, options)
        self._lock = threading.Lock()
        self._runtime: _Runtime | None = None
        self._closed = False
        _OPEN.add(self)

    @property
    def worker(self) -> str:
        """The worker name events carry; by default ``host:pid`` of the current process."""
        return self._current().worker

    def _current(self) -> _Runtime:
        rt = self._runtime
        if rt is not None and rt.pid == os.getpid():
            return rt
        with self._lock:
            if self._closed:
                raise EmitterClosed("this emitter is closed")
            rt = self._runtime
            if rt is not None and rt.pid != os.getpid():
                _ABANDONED.append(rt)  # inherited from the parent: never touch it
                rt = self._runtime = None
            if rt is None:
                # Named per process: a forked child is a different worker.
                worker = self._worker if self._worker is not None else default_worker_name()
                rt = self._runtime = _Runtime(self.settings, self._options, worker)
            return rt

    # Lifetime ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect now (instead of on first use); :class:`BrokerUnavailable` if Kafka can't be reached."""
        self._current()

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every event accepted so far in this process is acknowledged."""
        rt = self._runtime
        if rt is not None and rt.pid == os.getpid():
            rt.call(rt.pipeline.flush(timeout_s))

    def close(self, timeout_s: float | None = None) -> None:
        """Flush (up to ``timeout_s``, default ``close_timeout_s``) and stop. Idempotent."""
        with self._lock:
            self._closed = True
            rt, self._runtime = self._runtime, None
        _OPEN.discard(self)
        if rt is not None and rt.pid == os.getpid():
            rt.close(timeout_s)

    def __enter__(self) -> SyncEmitter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pending(self) -> int:
        rt = self._runtime
        return rt.pipeline.unacked_events if rt is not None and rt.pid == os.getpid() else 0

    # Emitting ----------------------------------------------------------------------
    def emit(self, event: TaskEvent, *, wait: bool = False) -> TaskEvent:
        """Emit a ready-made event; returns it as recorded (an outcome over the size limit
        is recorded with its large fields cut: :mod:`.fitting`)."""
        return self._current().pipeline.accept_blocking(event, wait=wait)

    def emit_record(self, name: str, key: str, record: Mapping[str, Any], timestamp: int,
                    *, wait: bool = False) -> None:
        """:meth:`Emitter.emit_record <resultlog.producers.emitter.Emitter.emit_record>`, blocking."""
        self._current().pipeline.accept_record_blocking(name, key, record, timestamp, wait=wait)

    def emit_state(
        self,
        task_id: str,
        state: State | str,
        *,
        attempt: int = 0,
        result: Any = None,
        exc: BaseException | None = None,
        traceback: str | None = None,
        runtime: float | None = None,
        eta: datetime | int | None = None,
        wait: bool = False,
        **fields: Unpack[TaskFields],
    ) -> None:
        rt = self._current()
        event = build_state(
            task_id, state, rt.worker, fields,
            attempt=attempt, result=result, exc=exc, traceback=traceback, runtime=runtime, eta=eta,
        )
        rt.pipeline.accept_blocking(event, wait=wait)

    def received(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> None:
        rt = self._current()
        rt.pipeline.accept_blocking(build(State.RECEIVED, task_id, rt.worker, fields, attempt=attempt), wait=wait)

    def started(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> None:
        rt = self._current()
        rt.pipeline.accept_blocking(build(State.STARTED, task_id, rt.worker, fields, attempt=attempt), wait=wait)

    def retry(
        self,
        task_id: str,
        exc: BaseException,
        *,
        attempt: int,
        eta: datetime | int | None = None,
        traceback: str | None = None,
        wait: bool = False,
        **fields: Unpack[TaskFields],
    ) -> None:
        rt = self._current()
        event = build(State.RETRY, task_id, rt.worker, fields, attempt=attempt, exc=exc, traceback=traceback, eta=eta)
        rt.pipeline.accept_blocking(event, wait=wait)

    def success(
        self,
        task_id: str,
        result: Any,
        *,
        runtime: float | None = None,
        attempt: int = 0,
        wait: bool = False,
        **fields: Unpack[TaskFields],
    ) -> None:
        rt = self._current()
        event = build(State.SUCCESS, task_id, rt.worker, fields, attempt=attempt, result=result, runtime=runtime)
        rt.pipeline.accept_blocking(event, wait=wait)

    def failure(
        self,
        task_id: str,
        exc: BaseException,
        *,
        traceback: str | None = None,
        runtime: float | None = None,
        attempt: int = 0,
        wait: bool = False,
        **fields: Unpack[TaskFields],
    ) -> None:
        rt = self._current()
        event = build(
            State.FAILURE, task_id, rt.worker, fields, attempt=attempt, exc=exc, traceback=traceback, runtime=runtime
        )
        rt.pipeline.accept_blocking(event, wait=wait)

    def revoked(self, task_id: str, *, attempt: int = 0, wait: bool = False, **fields: Unpack[TaskFields]) -> None:
        rt = self._current()
        rt.pipeline.accept_blocking(build(State.REVOKED, task_id, rt.worker, fields, attempt=attempt), wait=wait)

    def track(self, task_id: str, *, attempt: int = 0, **fields: Unpack[TaskFields]) -> SyncTracker:
        """STARTED now, then SUCCESS or FAILURE: ``with`` or a decorator of functions."""
        return SyncTracker(self, task_id, attempt, fields)


# Runtimes to close at exit, held strongly: an emitter dropped without close() still
# delivers what it accepted. And emitters whose locks must be fresh in a forked child.
_RUNNING: set[_Runtime] = set()
_OPEN: weakref.WeakSet[SyncEmitter] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for emitter in list(_OPEN):
        emitter._closed = True  # no new runtime from here on
    for rt in list(_RUNNING):
        if rt.pid != os.getpid():
            continue  # inherited across a fork: the parent's to close
        try:
            rt.close(None)
        except ResultlogError as exc:
            log.error("resultlog: closing the emitter at exit: %s", exc)


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    for emitter in list(_OPEN):
        emitter._lock = threading.Lock()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
