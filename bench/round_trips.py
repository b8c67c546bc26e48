"""What one round trip costs on this machine, from a bare socket up to a Celery app's
``store_result`` on resultlog: the floor under every per-event figure of the emitter.

    .venv/bin/python -m bench.round_trips [--calls 1500]

Each line is ``--calls`` calls made one after another on an otherwise idle process
(nothing in flight between them, as a lone event is), against the local stack
(``resultlog dev up``): the wall time per call (p50) and the CPU time of the calling
process per call (``time.process_time``: every thread, so a SyncEmitter's loop thread
counts), from a bare ``PING`` to Redis up through the layers a stored result passes:

- Redis ``PING``: a blocking socket; an asyncio protocol; redis-py's asyncio client
  (what resultlog uses);
- ``RedisView.apply`` of one event (the fold call of read-your-writes);
- aiokafka's ``send_and_wait`` of one event's record (the producer the emitter uses);
- ``Emitter.success(..., wait=True)``, without and with ``read_your_writes``;
- ``SyncEmitter.success(..., wait=True)`` with ``read_your_writes`` (a worker thread);
- a Celery app's ``backend.store_result(id, result, "SUCCESS")``: on Celery's Redis
  backend (a ``SET`` and a ``PUBLISH``, the peer), then on ``resultlog://`` with the
  backend's defaults (both skipped without the ``celery`` package).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from bench._common import cleanup, isolated, percentiles, resultlog_url
from resultlog.producers import Emitter, SyncEmitter
from resultlog.producers.kafka import ProducerConfig, close_producer, make_producer
from resultlog.producers.options import DEFAULT_COMPRESSION, DEFAULT_MAX_BATCH_BYTES
from resultlog.producers.topics import ensure_topics
from resultlog.redis_access import async_client
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.schemas.taskcodec import EventEncoder
from resultlog.settings import Settings
from resultlog.views.redis_view import RedisView

PING = b"*1\r\n$4\r\nPING\r\n"
RESULT = {"task": 1, "ok": True}


def report(what: str, walls: list[float], cpu_s: float) -> None:
    (p50,) = percentiles(walls, 50)
    print(f"  {what}: p50 {p50 * 1e3:.3f} ms, CPU {cpu_s / len(walls) * 1e6:,.0f} us per call",
          flush=True)


def laps(what: str, calls: int) -> Iterator[int]:
    """0 to ``calls`` - 1, the loop's body timed for each; reports ``what`` once done."""
    walls = []
    cpu = time.process_time()
    for i in range(calls):
        start = time.perf_counter()
        yield i
        walls.append(time.perf_counter() - start)
    report(what, walls, time.process_time() - cpu)


def timed_sync(what: str, calls: int, call: Callable[[int], object]) -> None:
    call(-1)  # the first call sets up whatever it lazily needs
    for i in laps(what, calls):
        call(i)


async def timed(what: str, calls: int, call: Callable[[int], Awaitable[object]]) -> None:
    await call(-1)
    for i in laps(what, calls):
        await call(i)


class _Pong(asyncio.Protocol):
    """Resolves ``reply`` with whatever Redis sends back (a PONG fits one read)."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(data)


async def asynchronous(settings: Settings, calls: int, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, pong = await loop.create_connection(_Pong, host, port)

    async def protocol_ping(_: int) -> None:
        pong.reply = loop.create_future()
        transport.write(PING)
        await pong.reply

    await timed("Redis PING, an asyncio protocol", calls, protocol_ping)
    transport.close()
    client = async_client(settings)
    await timed("Redis PING, redis-py asyncio", calls, lambda _: client.ping())
    await client.aclose()

    async with RedisView(settings) as view:
        await timed("RedisView.apply of one event", calls, lambda i: view.apply(
            [TaskEvent.create(f"rt-view-{i}", State.SUCCESS, result=RESULT)]))

    encoder = EventEncoder(Codec(max_bytes=settings.max_event_bytes))  # as the emitter's
    producer = make_producer(settings, ProducerConfig(
        DEFAULT_COMPRESSION, DEFAULT_MAX_BATCH_BYTES, "resultlog-round-trips"))
    await producer.start()
    try:
        async def send(i: int) -> None:
            event = TaskEvent.create(f"rt-kafka-{i}", State.SUCCESS, result=RESULT)
            await producer.send_and_wait(settings.events_topic, encoder.encode(event),
                                         key=event.task_id.encode())
        await timed("aiokafka send_and_wait of one record", calls, send)
    finally:
        await close_producer(producer, settings.kafka_timeout_s)

    for folds in (False, True):
        async with Emitter(settings, read_your_writes=folds) as emitter:
            tag = "-ryw" if folds else ""
            await timed(f"Emitter.success(wait=True){', read_your_writes' if folds else ''}",
                        calls, lambda i: emitter.success(f"rt-emit{tag}-{i}", RESULT, wait=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1500)
    args = parser.parse_args()
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    settings = isolated("rt")
    redis_at = urlsplit(settings.redis_url)
    host, port = redis_at.hostname or "127.0.0.1", redis_at.port or 6379
    asyncio.run(ensure_topics(settings, settings.events_topic, settings.dead_letter_topic))
    print(f"{args.calls:,} calls each, one after another", flush=True)
    try:
        with socket.create_connection((host, port)) as sock:
            def blocking_ping(_: int) -> None:
                sock.sendall(PING)
                sock.recv(64)
            timed_sync("Redis PING, a blocking socket", args.calls, blocking_ping)
        asyncio.run(asynchronous(settings, args.calls, host, port))

        emitter = SyncEmitter(settings, read_your_writes=True)
        try:
            timed_sync("SyncEmitter.success(wait=True), read_your_writes", args.calls,
                       lambda i: emitter.success(f"rt-sync-{i}", RESULT, wait=True))
        finally:
            emitter.close()

        if importlib.util.find_spec("celery") is None:
            print("  a Celery app's store_result: skipped, Celery is not installed "
                  "(.venv/bin/pip install -e '.[bench]')")
        else:
            from celery import Celery  # type: ignore[import-untyped]
            peer: Any = Celery("round-trips-redis", broker="memory://", backend=settings.redis_url,
                               set_as_current=False)
            # Its keys under the run's prefix, which the cleanup removes.
            peer.conf.result_backend_transport_options = {
                "global_keyprefix": settings.redis_prefix}
            timed_sync("Celery store_result on Celery's Redis backend", args.calls,
                       lambda i: peer.backend.store_result(f"rt-peer-{i}", RESULT, "SUCCESS"))
            app: Any = Celery("round-trips", broker="memory://", backend=resultlog_url(settings),
                              set_as_current=False)
            timed_sync("Celery store_result on resultlog://, its defaults", args.calls,
                       lambda i: app.backend.store_result(f"rt-celery-{i}", RESULT, "SUCCESS"))
    finally:
        asyncio.run(cleanup(settings))


if __name__ == "__main__":
    main()
