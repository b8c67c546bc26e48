"""Replay throughput into both stores (the Redis view and the Postgres history).

Pre-loads --events events (default 1,000,000: RECEIVED/STARTED/SUCCESS for a third as
many tasks) with the emitter, then replays them and prints the rate. The progress bar
shows on a terminal.

    .venv/bin/python -m bench.replay_throughput [--events 1000000] [--batch 5000] [--jobs N]
        [--consumers 2] [--modes both[,again,redis,history]]

--jobs: worker processes (default: one per CPU); --consumers: per process.
--modes: the replays to run over the one pre-loaded topic, in the order given:
  both     `replay --fresh`: both stores emptied first (the default)
  redis    `replay --redis-only --fresh`: the view emptied and rebuilt, the history untouched
  history  `replay --history-only --fresh`: likewise the history
  again    `replay` into both stores as they are: after `both`, every history row is a
           duplicate and no hash changes (what a replay over whole stores costs)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import NamedTuple

from bench._common import cleanup, isolated
from resultlog.processors.replay import default_jobs, replay
from resultlog.producers import Emitter
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State


class Mode(NamedTuple):
    """One replay of --modes: the stores it writes, and whether it empties them first."""
    redis: bool
    history: bool
    fresh: bool
    into: str  # how its figure is labelled


MODES: dict[str, Mode] = {
    "both": Mode(True, True, True, "both stores, emptied first"),
    "redis": Mode(True, False, True, "the Redis view only"),
    "history": Mode(False, True, True, "the history only"),
    "again": Mode(True, True, False, "both stores, already whole"),
}


def parse_modes(text: str) -> list[str]:
    """--modes' type: argparse reports what this raises as a usage error."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a comma-separated list of {', '.join(MODES)}"
            + (f" (not {', '.join(unknown)})" if unknown else ""))
    return modes


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--modes", type=parse_modes, default="both",
                    help="replays to run in order: both, redis, history, again (see above)")
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
        for mode in args.modes:
            m = MODES[mode]
            summary = await replay(settings, redis=m.redis, history=m.history, fresh=m.fresh,
                                   batch_records=args.batch, jobs=args.jobs,
                                   consumers=args.consumers, progress=True)
            print(summary.render())
            print(f"replay throughput ({mode}: {m.into}): {summary.rate:,.0f} events/s "
                  f"({n:,} events in {summary.seconds:.1f}s)", flush=True)
    finally:
        await cleanup(settings)


if __name__ == "__main__":
    asyncio.run(main())
