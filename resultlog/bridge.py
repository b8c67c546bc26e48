"""The one bridge from sync code to resultlog's asyncio implementation: ONE event loop
thread per process, ``resultlog-loop`` (docs/ARCHITECTURE.md, "one bridge").

A forked child takes a loop thread of its own; the inherited loop (its sockets are the
parent's) is left untouched and kept referenced, so garbage collection never runs
finalizers that would close them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

T = TypeVar("T")

THREAD_NAME: Final = "resultlog-loop"


class LoopThread:
    """An event loop running forever in a daemon thread, owned by the process that made it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=THREAD_NAME, daemon=True)
        self.thread.start()

    def _main(self) -> None:
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

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it in this thread; Ctrl-C cancels it."""
        if threading.get_ident() == self.thread.ident:
            coro.close()
            raise RuntimeError(
                "a blocking resultlog call was made from resultlog's own event loop thread "
                "(e.g. in a future's callback), where it would wait forever: use the "
                "asyncio API there, or hand the call to another thread")
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop without waiting; cancelling the future cancels it."""
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except BaseException:
            coro.close()  # never scheduled: no "never awaited" warning
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


# The process's loop thread and how many bridges hold it; guarded by _lock.
_lock = threading.Lock()
_current: LoopThread | None = None
_holders = 0
# Loop threads inherited across a fork: referenced forever, never touched.
_ABANDONED: list[LoopThread] = []


def _hold() -> LoopThread:
    global _current, _holders
    if _current is None:
        _current = LoopThread()
    _holders += 1
    return _current


def _let_go(held: LoopThread) -> bool:
    """True if ``held`` was the last hold on the running loop thread (caller stops it)."""
    global _current, _holders
    if held is not _current or held.pid != os.getpid():
        return False
    _holders -= 1
    if _holders:
        return False
    _current = None
    return True


class Bridge:
    """One user's hold on the process's loop thread: taken on first use (and again in a
    forked child), let go by :meth:`close`. Thread-safe."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: LoopThread | None = None

    def thread(self) -> LoopThread:
        """The loop thread of this process (started if no bridge holds it yet)."""
        held = self._held
        if held is not None and held.pid == os.getpid():
            return held
        with _lock:
            held = self._held
            if held is None or held.pid != os.getpid():
                held = self._held = _hold()
            return held

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """:meth:`LoopThread.run` on this process's loop thread."""
        return self.thread().run(coro)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """:meth:`LoopThread.submit` on this process's loop thread."""
        return self.thread().submit(coro)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop this bridge holds in this process, if it holds one."""
        held = self._held
        return held.loop if held is not None and held.pid == os.getpid() else None

    def close(self) -> None:
        """Let go of the loop thread; the last bridge to let go stops it. Idempotent."""
        with _lock:
            held, self._held = self._held, None
            last = held is not None and _let_go(held)
        if last:
            assert held is not None
            held.stop()


def _after_fork_in_child() -> None:
    global _lock, _current, _holders
    # A lock held by another thread at fork time would stay held forever in the child.
    _lock = threading.Lock()
    if _current is not None:
        _ABANDONED.append(_current)
    _current, _holders = None, 0


os.register_at_fork(after_in_child=_after_fork_in_child)
