"""Replay throughput into both stores (the Redis view and the Postgres history).

Pre-loads --events events (default 1,000,000: RECEIVED/STARTED/SUCCESS for a third as
many tasks) with the emitter, then runs `replay --fresh` into empty stores and prints
the rate. The progress bar shows on a terminal.

    .venv/bin/python -m bench.replay_throughput [--events 1000000] [--batch 5000] [--jobs N] [--consumers 2]

--jobs: worker processes (default: one per CPU); --consumers: per process.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench._common import cleanup, isolated
from resultlog.processors.replay import default_jobs, replay
from resultlog.producers import Emitter
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--consumers", type=int, default=2)
    args = ap.parse_args()
    # Default settings (results expire after result_ttl_s): what a user's replay does.
    settings = isolated("replay")
    n = args.events
    print(f"pre-loading {n:,} events into {settings.events_topic} ...", flush=True)
    t0 = time.monotonic()
    states = (State.RECEIVED, State.STARTED, State.SUCCESS)
    try:
        async with Emitter(settings) as emitter:
            for i in range(n):
                task = f"task-{i // 3}"
                await emitter.emit(TaskEvent.create(
                    task, states[i % 3], result=i if i % 3 == 2 else None, task_name="bench.add", worker="w1",
                    args=[i, 1] if i % 3 == 0 else None))
        print(f"  pre-loaded in {time.monotonic() - t0:.1f}s", flush=True)
        jobs = default_jobs() if args.jobs is None else args.jobs
        print(f"replaying: {jobs} process(es) x {args.consumers} consumer(s), batches of "
              f"{args.batch:,}, {settings.topic_partitions} partitions, "
              f"{default_jobs()} CPUs", flush=True)
        summary = await replay(settings, fresh=True, batch_records=args.batch, jobs=args.jobs,
                               consumers=args.consumers, progress=True)
        print(summary.render())
        print(f"replay throughput into both stores: {summary.rate:,.0f} events/s "
              f"({n:,} events in {summary.seconds:.1f}s)")
    finally:
        await cleanup(settings)


if __name__ == "__main__":
    asyncio.run(main())
