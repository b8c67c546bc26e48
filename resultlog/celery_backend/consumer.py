"""Push-based waiting for Celery: a ``ResultConsumer`` over the view's done channels.

Celery's async machinery (``celery.backends.asynchronous``) asks the consumer to
``consume_from(task_id)`` when a result is waited on, and calls ``drain_events`` in the
waiting thread until the result is ready. Here each consumed task is one wait of
:meth:`resultlog.views.ResultBackend.watch_ready` on the process's resultlog loop thread: it
subscribes to the task's done channel, then reads the task (so a result written
before the subscription took effect is still found), then sleeps until the fold
script publishes. A finished wait puts the view on a queue; ``drain_events`` takes it
off in the waiting thread and hands Celery the meta. The states a task passes through
while waited on (STARTED, progress reports) are pushed too and take the same queue, so
``get(on_message=...)`` hears them, as with Celery's Redis backend. Nothing polls:
``drain_events`` blocks on the queue, and its timeout only lets Celery check its own
deadline.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import TYPE_CHECKING, Any

from celery.backends.asynchronous import BaseResultConsumer  # type: ignore[import-untyped]

from resultlog.errors import StoreUnavailable
from resultlog.schemas.fold import TaskView

if TYPE_CHECKING:
    from resultlog.celery_backend.backend import ResultlogBackend

_Wait = concurrent.futures.Future[TaskView]
# What the queue carries: a finished wait, or a state the task passed through.
_Item = tuple[str, "_Wait | TaskView"]


class ViewResultConsumer(BaseResultConsumer):  # type: ignore[misc]
    """Waits on the Redis view's done channels for the tasks Celery waits on."""

    backend: ResultlogBackend

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reset()

    def _reset(self) -> None:
        # Reentrant, and never held across a call that can block: cancel_for() runs
        # from AsyncResult.__del__, which the garbage collector may call in this very
        # thread in the middle of consume_from() (a plain Lock deadlocked there).
        self._lock = threading.RLock()
        # task id -> its wait; None while the wait is being set up.
        self._waits: dict[str, _Wait | None] = {}
        # SimpleQueue: its put() is safe from __del__ and from any thread.
        self._done: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        # task id -> its waits that failed in a row, Redis answering (see _deliver).
        self._failed: dict[str, int] = {}

    def on_after_fork(self) -> None:
        # The waits ran on the parent's loop thread, which does not exist here.
        self._reset()

    def start(self, initial_task_id: str, **kwargs: Any) -> None:
        self.consume_from(initial_task_id)

    def stop(self) -> None:
        with self._lock:
            waits, self._waits = self._waits, {}
        for wait in waits.values():
            if wait is not None:
                wait.cancel()

    def consume_from(self, task_id: str, *, sent: bool = False) -> None:
        """Wait for ``task_id``; ``sent``: it is being sent now, return once the wait is
        subscribed (see ``ResultBackend.watch_ready``)."""
        with self._lock:
            if task_id in self._waits:
                return
            self._waits[task_id] = None
        # Outside the lock: submitting allocates, so the collector may run __del__s here.
        wait = self.backend.reader().watch_ready(
            task_id, sent=sent, on_change=lambda view: self._changed(task_id, view))
        with self._lock:
            keep = task_id in self._waits and self._waits[task_id] is None
            if keep:
                self._waits[task_id] = wait
        if not keep:
            wait.cancel()  # cancelled while it was being set up
            return
        wait.add_done_callback(lambda w: self._finished(task_id, w))

    def _finished(self, task_id: str, wait: _Wait) -> None:
        # Only for a task still waited on: a producer that sends tasks and drops their
        # AsyncResults (each drop cancels its wait) must not fill the queue.
        with self._lock:
            wanted = self._waits.get(task_id) is wait
        if wanted and not wait.cancelled():
            self._done.put((task_id, wait))

    def _changed(self, task_id: str, view: TaskView) -> None:
        # A state the task passed through (STARTED, a progress report): Celery hands it
        # to get()'s on_message, as its Redis backend hands every message it hears.
        # Only for a task still waited on, as in _finished.
        with self._lock:
            wanted = task_id in self._waits
        if wanted:
            self._done.put((task_id, view))

    def cancel_for(self, task_id: str) -> None:
        with self._lock:
            wait = self._waits.pop(task_id, None)
            self._failed.pop(task_id, None)
        if wait is not None:
            wait.cancel()

    def drain_events(self, timeout: float | None = None) -> None:
        """Hand Celery every wait that finished; block up to ``timeout`` for the first."""
        try:
            item = self._done.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._deliver(*item)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return

    def _deliver(self, task_id: str, wait: _Wait | TaskView) -> None:
        if isinstance(wait, TaskView):  # not ready: on_message's, if anyone's
            self.on_state_change(self.backend.meta_for(task_id, wait), None)
            return
        with self._lock:
            current = self._waits.get(task_id) is wait
            if current:
                del self._waits[task_id]
        try:
            view = wait.result()
        except StoreUnavailable:
            if not current:
                return  # no longer waited on, or waited on again already
            # The pub/sub connection was lost past the client's retries (or Redis did
            # not answer a read), and every wait failed with it: most of them for other
            # tasks than the one this thread's get() waits on, and their results may be
            # in the view by now. Each is waited on again (subscribed, then read: a
            # result there now is delivered); Celery would never ask again, and the
            # task's later get()s and its group's join would wait for ever (a fault
            # audit, 4 of 4).
            self.consume_from(task_id)
            # The error reaches the get() draining it (whichever task that waits on) only
            # if Redis does not answer now: a failure queued during an outage and drained
            # after it is stale (a get() after a hung Redis came back raised the error of
            # another task's wait, seen on 1 Dec 2026). Redis answering and this task's
            # wait failing twice in a row is not an outage (the history unreadable while
            # the view is rebuilt): raised too, rather than waited on again for ever.
            if not self.backend.reader().reachable():
                raise
            with self._lock:
                again = self._failed.get(task_id, 0) + 1
                self._failed[task_id] = again
            if again >= 2:
                raise
            return
        with self._lock:
            self._failed.pop(task_id, None)
        self.on_state_change(self.backend.meta_for(task_id, view), None)
