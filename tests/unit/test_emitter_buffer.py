"""The emitter's bounded buffer: limits, back-pressure, wake-ups, closing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from resultlog.errors import BufferFull, EmitterClosed
from resultlog.producers.buffer import Outbox


def test_fifo_sequence_numbers_and_accounting() -> None:
    box = Outbox(max_events=10, max_bytes=1000)
    seqs = [box.put_blocking(b"k", b"v" * i, i, None, 0) for i in range(1, 4)]
    assert seqs == [1, 2, 3] and box.last_seq == 3 and box.head_seq() == 1
    assert (box.unacked_events, box.unacked_bytes) == (3, 6)
    items = box.take()
    assert [i.seq for i in items] == [1, 2, 3] and box.head_seq() is None
    # Taken is not acknowledged: the room comes back only on release.
    assert box.unacked_events == 3
    box.release(3, 6)
    assert (box.unacked_events, box.unacked_bytes) == (0, 0)


def test_full_by_count_raises_naming_the_timeout() -> None:
    box = Outbox(max_events=2, max_bytes=1000)
    box.put_blocking(b"k", b"v", 0, None, 0)
    box.put_blocking(b"k", b"v", 0, None, 0)
    started = time.monotonic()
    with pytest.raises(BufferFull, match=r"0\.2 s \(buffer_timeout_s\)"):
        box.put_blocking(b"k", b"v", 0, None, 0.2)
    assert time.monotonic() - started >= 0.19  # it waited buffer_timeout_s first


def test_full_by_bytes_but_one_oversized_event_always_fits_alone() -> None:
    box = Outbox(max_events=100, max_bytes=10)
    box.put_blocking(b"k", b"x" * 50, 0, None, 0)  # alone: accepted
    with pytest.raises(BufferFull):
        box.put_blocking(b"k", b"x", 0, None, 0)


def test_blocked_thread_resumes_on_release() -> None:
    box = Outbox(max_events=1, max_bytes=1000)
    box.put_blocking(b"k", b"v", 0, None, 0)
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(box.put_blocking(b"k", b"v", 0, None, 5)))
    thread.start()
    time.sleep(0.05)
    assert not done
    box.release(1, 1)
    thread.join(5)
    assert done == [2]


def test_wake_is_called_once_after_arming() -> None:
    box = Outbox(max_events=10, max_bytes=1000)
    calls: list[int] = []
    assert box.arm(lambda: calls.append(1))
    box.put_blocking(b"k", b"v", 0, None, 0)
    box.put_blocking(b"k", b"v", 0, None, 0)
    assert calls == [1]
    assert not box.arm(lambda: calls.append(2))  # items queued: do not sleep


def test_close_wakes_blocked_callers() -> None:
    box = Outbox(max_events=1, max_bytes=1000)
    box.put_blocking(b"k", b"v", 0, None, 0)
    errors: list[BaseException] = []

    def put() -> None:
        try:
            box.put_blocking(b"k", b"v", 0, None, 5)
        except EmitterClosed as exc:
            errors.append(exc)

    thread = threading.Thread(target=put)
    thread.start()
    time.sleep(0.05)
    box.close("stopping")
    thread.join(5)
    assert len(errors) == 1
    with pytest.raises(EmitterClosed, match="stopping"):
        box.put_blocking(b"k", b"v", 0, None, 0)


async def test_async_put_waits_without_blocking_the_loop() -> None:
    box = Outbox(max_events=1, max_bytes=1000)
    await box.put(b"k", b"v", 0, None, 1)
    waiting = asyncio.create_task(box.put(b"k", b"v", 0, None, 5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    box.release(1, 1)
    assert await asyncio.wait_for(waiting, 5) == 2
    with pytest.raises(BufferFull):
        await box.put(b"k", b"v", 0, None, 0.05)
