"""Emit-to-visible latency at a steady rate, through the real processor.

One SUCCESS per task at --rate events/s for --seconds (the events due in each
--tick-ms go out together; each is stamped when its emit call starts); "visible" is the
moment the task's done-push arrives from Redis in another process — when an
AsyncResult waiting on it there wakes, after both the history commit and the Redis
write. A client waits for every ``--sample-every``-th task (subscribed to its channel, as
a waiting AsyncResult is): every event is emitted and folded, but only the waited-for
tasks are pushed, as in a deployment where clients wait for some results. Waiting for
every task (``--sample-every 1``) made Redis publish each whole hash and the listener
parse it: at 10,000/s ~0.4 of this machine's 2 cores, the bench's own load. With
``--read-your-writes`` the emitter folds each acknowledged event into the view itself
(the processor still runs and folds it again): visible after Kafka's acknowledgement and
one Redis call. Prints p50/p90/p99/max, and each process's CPU while emitting (the
emitter, the processor, Kafka, PostgreSQL and Redis when they run here, the listener).

    .venv/bin/python -m bench.visible_latency [--rate 1000] [--seconds 15] [--read-your-writes]
        [--processor-linger-ms 0] [--sample-every 10]

The emitter and the listener are separate processes, as a worker and a waiting client
are; both stamp with ``time.perf_counter`` (CLOCK_MONOTONIC, one clock for the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from multiprocessing.connection import Connection

from redis.asyncio import Redis

from bench._common import (CpuMeter, cleanup, isolated, local_servers_cpu, percentiles, process_cpu,
                           start_processor)
from resultlog import names
from resultlog.producers import Emitter
from resultlog.producers.topics import ensure_topics
from resultlog.settings import Settings
from resultlog.views import RedisView


# Channels per SUBSCRIBE command while the listener subscribes to its sample.
SUBSCRIBE_CHUNK = 1_000


def listener_main(settings: Settings, task_ids: list[str], conn: Connection) -> None:
    """The done-push of each of ``task_ids``, stamped on arrival; sent back once all
    arrived (or when told to stop)."""
    async def listen() -> dict[str, float]:
        redis = Redis.from_url(settings.redis_url)
        pubsub = redis.pubsub()
        prefix = names.task_done_channel(settings.redis_prefix, "")
        for k in range(0, len(task_ids), SUBSCRIBE_CHUNK):
            await pubsub.subscribe(*(prefix + t for t in task_ids[k:k + SUBSCRIBE_CHUNK]))
        # Subscribed once the last confirmation is read: before that, a push could be
        # published to no one.
        confirmed = 0
        while confirmed < len(task_ids):
            message = await pubsub.get_message(timeout=None)
            if message is not None and message["type"] == "subscribe":
                confirmed += 1
        conn.send("ready")
        seen: dict[str, float] = {}

        async def collect() -> None:
            async for message in pubsub.listen():
                if message["type"] == "message":
                    seen[message["channel"].decode()[len(prefix):]] = time.perf_counter()
                    if len(seen) >= len(task_ids):
                        return

        collecting = asyncio.ensure_future(collect())
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), collecting.cancel)  # told to stop
        try:
            await asyncio.gather(collecting, return_exceptions=True)
        finally:
            loop.remove_reader(conn.fileno())
            await pubsub.aclose()
            await redis.aclose()
        return seen

    conn.send(asyncio.run(listen()))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--linger-ms", type=int, default=5, help="the emitter's linger (default 5, as Kafka)")
    ap.add_argument("--tick-ms", type=float, default=1.0,
                    help="the emitting loop sleeps at least this long between events (default 1)")
    ap.add_argument("--read-your-writes", action="store_true",
                    help="the emitter folds acknowledged events into the view itself")
    ap.add_argument("--processor-linger-ms", type=int, default=0,
                    help="the processor's RESULTLOG_PROCESSOR_LINGER_MS (default 0)")
    ap.add_argument("--sample-every", type=int, default=10,
                    help="a client waits for every Nth task (default 10; 1: every task)")
    args = ap.parse_args()
    if args.sample_every < 1:
        ap.error("--sample-every must be at least 1")
    settings = isolated("lat").replace(processor_linger_ms=args.processor_linger_ms)
    await ensure_topics(settings, settings.events_topic, settings.dead_letter_topic)
    proc = start_processor(settings)
    total = int(args.rate * args.seconds)
    sampled = [f"lat-{i}" for i in range(0, total, args.sample_every)]
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    listener = multiprocessing.get_context("spawn").Process(
        target=listener_main, args=(settings, sampled, theirs), daemon=True)
    listener.start()
    assert listener.pid is not None  # started
    sent: dict[str, float] = {}
    try:
        servers = await local_servers_cpu(settings)
        assert await asyncio.to_thread(ours.recv) == "ready"
        # Warm up: the processor has joined and folds (an emitter that does not fold
        # itself, so what becomes visible was folded by the processor).
        async with Emitter(settings) as warmup, RedisView(settings) as view:
            await warmup.success("warmup", 0)
            while await view.get("warmup") is None:
                await asyncio.sleep(0.05)
        async with Emitter(settings, linger_ms=args.linger_ms,
                           read_your_writes=args.read_your_writes) as emitter:
            interval = 1.0 / args.rate
            meter = CpuMeter({"the emitter (this process)": process_cpu(os.getpid()),
                              "the processor": process_cpu(proc.pid),
                              **servers,
                              "the listener": process_cpu(listener.pid)})
            start = time.perf_counter()
            for i in range(total):
                target = start + i * interval
                delay = target - time.perf_counter()
                if delay > 0:
                    # Sleep at least a tick: the events due meanwhile go out together,
                    # as from many workers, instead of a timer per event (which cost
                    # this process ~75 us of CPU per event at 10,000/s).
                    await asyncio.sleep(max(delay, args.tick_ms / 1000))
                task_id = f"lat-{i}"
                sent[task_id] = time.perf_counter()
                await emitter.success(task_id, i)
            await emitter.flush()
            cpu = meter.report(total / (time.perf_counter() - start))
        # Everything has arrived, or the listener is told to stop after 30 s more.
        if not await asyncio.to_thread(ours.poll, 30):
            ours.send("stop")
        seen: dict[str, float] = await asyncio.to_thread(ours.recv)
        lat = sorted((seen[t] - sent[t]) * 1000 for t in sampled if t in seen)
        missing = len(sampled) - len(lat)
        p50, p90, p99 = percentiles(lat, 50, 90, 99)
        how = " (read-your-writes)" if args.read_your_writes else ""
        if args.processor_linger_ms:
            how += f" (processor linger {args.processor_linger_ms} ms)"
        print(f"emit-to-visible{how} at {args.rate}/s over {args.seconds:.0f}s ({total:,} tasks, "
              f"every {args.sample_every} waited for: {len(lat):,} waits, {missing} missing): "
              f"p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, max {lat[-1]:.1f} ms")
        print(f"CPU while emitting, in cores: {cpu}")
    finally:
        listener.kill()
        proc.terminate()
        proc.wait()
        await cleanup(settings)


if __name__ == "__main__":
    asyncio.run(main())
