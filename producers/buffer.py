"""The emitter's bounded buffer: encoded events between callers and the pump.

Callers (the event loop's own coroutines, or any thread through ``SyncEmitter``) put
encoded events in; the pump, on the event loop, takes them out in FIFO order and turns
them into Kafka record batches. The bound counts events *accepted and not yet
acknowledged* (queued here, batched, or in flight), so a broker that stops acknowledging
stops the callers too: back-pressure, never unbounded memory.

Every event gets a sequence number in acceptance order; ``flush()`` uses them to wait
for exactly the events accepted before it was called.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from typing import NamedTuple

from resultlog.errors import BufferFull, EmitterClosed
from resultlog.schemas.event import TaskEvent

#: Resolved when the event's batch is acknowledged (only requested with ``wait=True``).
Waiter = asyncio.Future[None] | ThreadFuture[None]


class Item(NamedTuple):
    seq: int
    key: bytes
    value: bytes
    timestamp_ms: int
    waiter: Waiter | None
    #: The event itself, kept only for read-your-writes (see :mod:`.viewfold`).
    event: TaskEvent | None = None


class Outbox:
    """A FIFO of :class:`Item` with a bound on unacknowledged events and bytes."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._items: deque[Item] = deque()
        self._async_waiters: list[asyncio.Future[None]] = []
        self._seq = 0
        self._closed: str | None = None
        self._wake: Callable[[], None] | None = None
        self.unacked_events = 0
        self.unacked_bytes = 0

    # Callers ---------------------------------------------------------------------------
    def _try_put(self, key: bytes, value: bytes, ts: int, waiter: Waiter | None,
                 event: TaskEvent | None) -> int | None:
        """Under the lock: the new item's seq, or None when there is no room."""
        if self._closed is not None:
            raise EmitterClosed(self._closed)
        size = len(value)
        n = self.unacked_events
        # An event larger than the byte budget is still let in when nothing else is
        # pending, so it delays the others at worst and never deadlocks.
        if n >= self.max_events or (n and self.unacked_bytes + size > self.max_bytes):
            return None
        self._seq += 1
        self._items.append(Item(self._seq, key, value, ts, waiter, event))
        self.unacked_events = n + 1
        self.unacked_bytes += size
        return self._seq

    def _take_wake(self) -> Callable[[], None] | None:
        wake, self._wake = self._wake, None
        return wake

    def offer(self, key: bytes, value: bytes, ts: int, event: TaskEvent | None = None) -> bool:
        """Queue without waiting; False when there is no room. The common, fast path."""
        with self._lock:
            if self._try_put(key, value, ts, None, event) is None:
                return False
            wake, self._wake = self._wake, None
        if wake is not None:
            wake()
        return True

    def put_blocking(
        self, key: bytes, value: bytes, ts: int, waiter: Waiter | None, timeout_s: float,
        event: TaskEvent | None = None,
    ) -> int:
        """From any thread but the event loop's: wait up to ``timeout_s`` for room."""
        deadline: float | None = None
        with self._lock:
            while (seq := self._try_put(key, value, ts, waiter, event)) is None:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout_s
                if now >= deadline or not self._space.wait(deadline - now):
                    if self._closed is not None:
                        raise EmitterClosed(self._closed)
                    raise self._full(timeout_s)
            wake = self._take_wake()
        if wake is not None:
            wake()
        return seq

    async def put(
        self, key: bytes, value: bytes, ts: int, waiter: Waiter | None, timeout_s: float,
        event: TaskEvent | None = None,
    ) -> int:
        """From the event loop's thread: wait up to ``timeout_s`` for room without blocking it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            with self._lock:
                seq = self._try_put(key, value, ts, waiter, event)
                if seq is not None:
                    wake = self._take_wake()
                else:
                    room: asyncio.Future[None] = loop.create_future()
                    self._async_waiters.append(room)
            if seq is not None:
                if wake is not None:
                    wake()
                return seq
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await room
            except TimeoutError:
                with self._lock:
                    if room in self._async_waiters:
                        self._async_waiters.remove(room)
                    if self._closed is not None:
                        raise EmitterClosed(self._closed) from None
                raise self._full(timeout_s) from None

    def _full(self, timeout_s: float) -> BufferFull:
        return BufferFull(
            f"the emitter's buffer stayed full for {timeout_s:g} s (buffer_timeout_s): "
            f"{self.unacked_events} events / {self.unacked_bytes} bytes accepted and not yet "
            f"acknowledged by Kafka (limits max_buffered_events={self.max_events}, "
            f"max_buffered_bytes={self.max_bytes}); Kafka is unreachable or slower than "
            "the tasks emitting events"
        )

    # The pump (event loop thread) ---------------------------------------------------------
    def take(self) -> deque[Item]:
        """Everything queued, oldest first; the queue is left empty."""
        with self._lock:
            items, self._items = self._items, deque()
        return items

    def head_seq(self) -> int | None:
        with self._lock:
            return self._items[0].seq if self._items else None

    @property
    def last_seq(self) -> int:
        return self._seq

    def arm(self, wake: Callable[[], None]) -> bool:
        """Ask for ``wake()`` on the next put; False (not armed) if items are already queued."""
        with self._lock:
            if self._items:
                return False
            self._wake = wake
            return True

    def disarm(self) -> None:
        with self._lock:
            self._wake = None

    def release(self, events: int, nbytes: int) -> None:
        """``events`` left the buffer (acknowledged or failed): make room."""
        with self._lock:
            self.unacked_events -= events
            self.unacked_bytes -= nbytes
            self._notify()

    def close(self, reason: str) -> None:
        """Refuse new items; blocked callers get :class:`EmitterClosed`."""
        with self._lock:
            self._closed = reason
            self._notify()

    def _notify(self) -> None:
        self._space.notify_all()
        waiters, self._async_waiters = self._async_waiters, []
        for room in waiters:
            if not room.done():
                room.get_loop().call_soon_threadsafe(resolve, room)


def resolve(waiter: Waiter, error: BaseException | None = None) -> None:
    """Set ``waiter``'s outcome, unless its caller gave up waiting (cancelled it; the
    pipeline still counts a failure)."""
    if waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)
