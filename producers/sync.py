"""The emitter for threaded and forked (prefork) workers: the asyncio
:class:`~resultlog.producers.emitter.Emitter` run through :mod:`resultlog.bridge`
(docs/emitter.md, "Threads and forked workers").

Fork safety: a forked child inherits the parent's ``Emitter`` and sockets but not the
loop thread. Its first call sees the fork (a count kept by ``os.register_at_fork``),
abandons the inherited emitter without touching it (its sockets, and the events it had
buffered, are the parent's) and starts a fresh one.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Unpack

from resultlog.bridge import Bridge
from resultlog.errors import EmitterClosed, NotYetAcknowledged, ResultlogError
from resultlog.producers.calls import EmittingCalls
from resultlog.producers.emitter import Emitter, default_worker_name
from resultlog.producers.late import store_late
from resultlog.producers.options import EmitterOptions, checked_worker, resolve
from resultlog.producers.tracking import SyncTracker
from resultlog.schemas.event import TaskEvent, TaskFields
from resultlog.settings import Settings
from resultlog.timeouts import checked_timeout

log = logging.getLogger("resultlog.producers")

# Emitters inherited across a fork: kept referenced forever so that garbage collection
# never runs their finalizers (which would close sockets the parent still uses).
_ABANDONED: list[Emitter] = []
# Forks this process descends from: an emitter started under another count is the
# parent's. Compared on every call instead of os.getpid(), which is a system call.
_forks = 0


class SyncEmitter(EmittingCalls[None]):
    """Thread-safe, fork-safe, blocking face of :class:`Emitter`; same methods, no ``await``.

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
        self.settings = Settings.given(settings, "SyncEmitter")
        # Bad options fail here, not on first use.
        self._worker = None if worker is None else checked_worker(worker)
        resolve(self.settings, options)
        self._options = options
        self._lock = threading.Lock()
        self._bridge = Bridge()
        self._emitter: Emitter | None = None
        self._forks = -1  # the fork count its emitter was started under
        self._closed = False
        _OPEN.add(self)

    @property
    def worker(self) -> str:
        """The worker name events carry; by default ``host:pid`` of the current process."""
        return self._current().worker

    def _current(self) -> Emitter:
        emitter = self._emitter
        if emitter is not None and self._forks == _forks:
            return emitter
        with self._lock:
            if self._closed:
                raise EmitterClosed("this emitter is closed")
            emitter = self._emitter
            if emitter is not None and self._forks != _forks:
                _ABANDONED.append(emitter)  # inherited from the parent: never touch it
                emitter = self._emitter = None
            if emitter is None:
                # Named per process: a forked child is a different worker.
                worker = self._worker if self._worker is not None else default_worker_name()
                emitter = Emitter(self.settings, worker=worker, **self._options)
                try:
                    self._bridge.run(emitter.start())
                except BaseException:
                    self._bridge.close()
                    raise
                self._emitter, self._forks = emitter, _forks
                _RUNNING.add(self)
            return emitter

    def _mine(self) -> Emitter | None:
        """The running emitter if this process started it (never one inherited)."""
        emitter = self._emitter
        return emitter if emitter is not None and self._forks == _forks else None

    # Lifetime ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect now (instead of on first use); :class:`BrokerUnavailable` if Kafka can't be reached."""
        self._current()

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every event accepted so far in this process is acknowledged."""
        timeout_s = checked_timeout(timeout_s, "timeout_s")  # refused alike with no emitter yet
        emitter = self._mine()
        if emitter is not None:
            self._bridge.run(emitter.flush(timeout_s))

    def close(self, timeout_s: float | None = None) -> None:
        """Flush (up to ``timeout_s``, default ``close_timeout_s``) and stop. Idempotent."""
        # Checked before this emitter lets go of its running one: refused later, in
        # stop(), it would leave that one running unreferenced, its events undelivered.
        timeout_s = checked_timeout(timeout_s, "timeout_s")
        with self._lock:
            self._closed = True
            emitter = self._mine()
            if self._emitter is not None and emitter is None:
                _ABANDONED.append(self._emitter)  # inherited from the parent: never touch it
            self._emitter = None
        _OPEN.discard(self)
        _RUNNING.discard(self)
        if emitter is not None:
            try:
                self._bridge.run(emitter.stop(timeout_s))
            finally:
                self._bridge.close()

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
        emitter = self._mine()
        return emitter.pending if emitter is not None else 0

    # Emitting: in the caller's thread, straight into the pipeline's thread-safe buffer.
    def _worker_name(self) -> str:
        return self._current().worker

    def _default_result_ttl_ms(self) -> int | None:
        return self._current().pipeline.default_result_ttl_ms

    def _send(self, event: TaskEvent, wait: bool) -> None:
        self._current().pipeline.accept_blocking(event, wait=wait)

    def emit(self, event: TaskEvent, *, wait: bool = False) -> TaskEvent:
        """:meth:`Emitter.emit <resultlog.producers.emitter.Emitter.emit>`, blocking."""
        return self._current().pipeline.accept_blocking(event, wait=wait)

    def store_late(self, event: TaskEvent, late: NotYetAcknowledged) -> None:
        """:func:`resultlog.producers.late.store_late`, blocking: for an event this emitter
        emitted with ``wait=True`` that Kafka did not acknowledge in time (``late``)."""
        self._bridge.run(store_late(self._current(), event, late))

    def emit_record(self, name: str, key: str, record: Mapping[str, Any], timestamp: int,
                    *, wait: bool = False) -> None:
        """:meth:`Emitter.emit_record <resultlog.producers.emitter.Emitter.emit_record>`, blocking."""
        self._current().pipeline.accept_record_blocking(name, key, record, timestamp, wait=wait)

    def track(self, task_id: str, *, attempt: int = 0, **fields: Unpack[TaskFields]) -> SyncTracker:
        """STARTED now, then SUCCESS or FAILURE: ``with`` or a decorator of functions."""
        return SyncTracker(self, task_id, attempt, fields)


# Emitters to close at exit, held strongly: an emitter dropped without close() still
# delivers what it accepted. And emitters whose locks must be fresh in a forked child.
_RUNNING: set[SyncEmitter] = set()
_OPEN: weakref.WeakSet[SyncEmitter] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for emitter in list(_OPEN):
        emitter._closed = True  # no new emitter from here on
    for emitter in list(_RUNNING):
        try:
            emitter.close(None)  # one inherited across a fork is the parent's: close skips it
        except ResultlogError as exc:
            log.error("resultlog: closing the emitter at exit: %s", exc)


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1
    # A lock held by another thread at fork time would stay held forever in the child.
    for emitter in list(_OPEN):
        emitter._lock = threading.Lock()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
