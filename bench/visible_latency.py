"""Emit-to-visible latency at a steady rate, through the real processor.

One SUCCESS per task at --rate events/s for --seconds; "visible" is the moment the
task's done-push arrives from Redis — when an AsyncResult waiting on it wakes, after
both the history commit and the Redis write. With ``--read-your-writes`` the emitter
folds each acknowledged event into the view itself (the processor still runs and folds
it again): visible after Kafka's acknowledgement and one Redis call. Prints
p50/p90/p99/max.

    .venv/bin/python -m bench.visible_latency [--rate 1000] [--seconds 15] [--read-your-writes]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from redis.asyncio import Redis

from bench._common import cleanup, isolated
from resultlog import names
from resultlog.producers import Emitter
from resultlog.producers.topics import ensure_topics


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--linger-ms", type=int, default=5, help="the emitter's linger (default 5, as Kafka)")
    ap.add_argument("--read-your-writes", action="store_true",
                    help="the emitter folds acknowledged events into the view itself")
    args = ap.parse_args()
    settings = isolated("lat")
    await ensure_topics(settings, settings.events_topic, settings.dead_letter_topic)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}, **settings.to_env()}
    proc = subprocess.Popen([sys.executable, "-m", "resultlog", "process", "--loglevel", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    redis = Redis.from_url(settings.redis_url)
    pubsub = redis.pubsub()
    prefix = names.task_done_channel(settings.redis_prefix, "")
    await pubsub.psubscribe(prefix + "*")
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "pmessage":
                seen[message["channel"].decode()[len(prefix):]] = time.perf_counter()

    listener = asyncio.ensure_future(listen())
    try:
        async with Emitter(settings, linger_ms=args.linger_ms,
                           read_your_writes=args.read_your_writes) as emitter:
            # Warm up: wait until the processor has joined and folds.
            await emitter.success("warmup", 0)
            while "warmup" not in seen:
                await asyncio.sleep(0.05)
            total = int(args.rate * args.seconds)
            interval = 1.0 / args.rate
            start = time.perf_counter()
            for i in range(total):
                target = start + i * interval
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task_id = f"lat-{i}"
                sent[task_id] = time.perf_counter()
                await emitter.success(task_id, i)
            await emitter.flush()
        deadline = time.perf_counter() + 30
        while len(seen) < total + 1 and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        lat = sorted((seen[t] - sent[t]) * 1000 for t in sent if t in seen)
        missing = total - len(lat)
        q = statistics.quantiles(lat, n=100)
        how = " (read-your-writes)" if args.read_your_writes else ""
        print(f"emit-to-visible{how} at {args.rate}/s over {args.seconds:.0f}s ({len(lat):,} tasks, {missing} missing): "
              f"p50 {q[49]:.1f} ms, p90 {q[89]:.1f} ms, p99 {q[98]:.1f} ms, max {lat[-1]:.1f} ms")
    finally:
        listener.cancel()
        await pubsub.aclose()
        await redis.aclose()
        proc.terminate()
        proc.wait()
        await cleanup(settings)


if __name__ == "__main__":
    asyncio.run(main())
