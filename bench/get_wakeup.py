"""Wake-up latency: from the Redis write that makes a task ready to ``get()`` returning.

    python bench/get_wakeup.py [--iterations 3000] [--flavours async,sync,sync-per-call]

Each iteration: a waiter calls ``get()`` on a new task; a writer process waits until the
waiter's subscription is live (PUBSUB NUMSUB), stamps the clock, and runs the fold
script that makes the task SUCCESS (as the processor would). The waiter stamps the clock
when ``get()`` returns. Latency = return - stamp, i.e. it includes the script call.

Flavours: ``async`` (AioAsyncResult), ``sync`` (AsyncResult: the caller's thread hands
the wait to the process's resultlog loop thread, which shares one pub/sub connection), and, for
comparison, ``sync-per-call``: a plain redis-py subscription opened and closed by each
``get()`` (the design the sync flavour did not take: a connection per waiting thread,
and its connect + SUBSCRIBE, which happen before the write, are not in its figure).
A bare PING round trip is printed first as the machine's noise floor. Target: p99
under 2 ms.
Needs the Redis of the settings (``resultlog dev up``, or RESULTLOG_REDIS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import redis

from bench._common import percentiles
from resultlog import names
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views import ResultBackend
from resultlog.views.redis_view import SCRIPT, script_call

WARMUP = 50


class Writer:
    """A separate process (as the processor would be) that makes a task ready once
    someone is subscribed to it, and reports when it started the write.

    A process, not a thread: a writer thread would compete for the waiter's GIL and
    measure that instead. perf_counter_ns is CLOCK_MONOTONIC, comparable across
    processes on one machine.
    """

    def __init__(self, settings: Settings) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_writer_main, args=(settings.redis_url, settings.redis_prefix, child),
                                 name="bench-writer", daemon=True)
        self._proc.start()
        child.close()

    def request(self, task_id: str) -> None:
        self._conn.send_bytes(task_id.encode())

    def stamp(self) -> int:
        """When the write for the last request started (blocks until it was made)."""
        return int(self._conn.recv_bytes())

    def close(self) -> None:
        self._conn.send_bytes(b"")
        self._proc.join(10)
        self._conn.close()


def _writer_main(redis_url: str, prefix: str, conn: Connection) -> None:
    settings = Settings.from_env().replace(redis_url=redis_url, redis_prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    script = client.register_script(SCRIPT)
    try:
        while task_id := conn.recv_bytes().decode():
            channel = names.task_done_channel(prefix, task_id)
            while client.pubsub_numsub(channel)[0][1] < 1:
                time.sleep(0.0001)
            keys, args = script_call(settings, [TaskEvent.create(task_id, State.SUCCESS, result=1)])
            started = time.perf_counter_ns()
            script(keys=keys, args=args)
            conn.send_bytes(str(started).encode())
    finally:
        client.close()


def per_call_get(client: redis.Redis, settings: Settings, task_id: str, timeout: float) -> Any:
    """get() with its own subscription: subscribe, read, wait for the push, read."""
    key = names.task_key(settings.redis_prefix, task_id)
    deadline = time.monotonic() + timeout
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    try:
        pubsub.subscribe(names.task_done_channel(settings.redis_prefix, task_id))
        while (m := pubsub.get_message(timeout=timeout)) is None or m["type"] != "subscribe":
            pass
        while True:
            state = client.hget(key, "state")
            if state in (b"SUCCESS", b"FAILURE", b"REVOKED"):
                return client.hget(key, "result")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(task_id)
            pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
    finally:
        pubsub.close()


def run_sync(writer: Writer, n: int, get: Callable[[str], Any]) -> list[float]:
    latencies = []
    for i in range(n + WARMUP):
        task_id = uuid.uuid4().hex
        writer.request(task_id)
        get(task_id)
        done = time.perf_counter_ns()
        started = writer.stamp()
        if i >= WARMUP:
            latencies.append((done - started) / 1e6)
    return latencies


async def run_async(writer: Writer, backend: ResultBackend, n: int) -> list[float]:
    latencies = []
    for i in range(n + WARMUP):
        task_id = uuid.uuid4().hex
        writer.request(task_id)
        await backend.AioAsyncResult(task_id).get(timeout=5)
        done = time.perf_counter_ns()
        started = writer.stamp()
        if i >= WARMUP:
            latencies.append((done - started) / 1e6)
    return latencies


def ping_baseline(settings: Settings, n: int) -> list[float]:
    """One bare round trip (PING) per iteration: the machine's own noise floor."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        latencies = []
        for _ in range(n):
            started = time.perf_counter_ns()
            client.ping()
            latencies.append((time.perf_counter_ns() - started) / 1e6)
        return latencies
    finally:
        client.close()


def report(name: str, ms: list[float]) -> tuple[float, float]:
    p50, p90, p99 = percentiles(ms, 50, 90, 99)
    print(f"{name:<14} n={len(ms):>5}  p50 {p50:6.3f} ms  p90 {p90:6.3f} ms  "
          f"p99 {p99:6.3f} ms  max {max(ms):7.3f} ms")
    return p50, p99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--flavours", default="async,sync,sync-per-call")
    args = parser.parse_args(argv)
    settings = Settings.from_env().replace(redis_prefix=f"bench-{uuid.uuid4().hex[:8]}:")
    flavours = args.flavours.split(",")
    writer = Writer(settings)
    results: dict[str, tuple[float, float]] = {}
    print(f"wake-up latency, write -> get() returns; {args.iterations} iterations each; "
          f"redis {settings.redis_url}")
    try:
        report("(redis PING)", ping_baseline(settings, args.iterations))
        with ResultBackend(settings) as backend:
            if "sync" in flavours:
                results["sync"] = report("sync", run_sync(
                    writer, args.iterations, lambda t: backend.AsyncResult(t).get(timeout=5)))
            if "sync-per-call" in flavours:
                client = redis.Redis.from_url(settings.redis_url)
                try:
                    results["sync-per-call"] = report("sync-per-call", run_sync(
                        writer, args.iterations, lambda t: per_call_get(client, settings, t, 5)))
                finally:
                    client.close()

        async def run() -> None:
            async with ResultBackend(settings) as backend:
                results["async"] = report("async", await run_async(writer, backend, args.iterations))

        if "async" in flavours:
            asyncio.run(run())
    finally:
        writer.close()
        cleanup = redis.Redis.from_url(settings.redis_url)
        keys = list(cleanup.scan_iter(match=f"{settings.redis_prefix}*", count=1000))
        if keys:
            cleanup.delete(*keys)
        cleanup.close()
    ok = all(p99 < 2.0 for name, (_, p99) in results.items() if name != "sync-per-call")
    print("target p99 < 2 ms:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
