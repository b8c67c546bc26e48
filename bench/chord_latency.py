"""Chord completion latency: from the last member's SUCCESS being emitted to
``AioChordResult.get()`` returning.

    python bench/chord_latency.py [--chords 200] [--size 3] [--warmup 20]

One processor process (``resultlog process``) on the local stack. Per chord: declare
it, emit every member but the last and wait until the aggregator counted them, start
waiters on the chord and on the last member, stamp the clock, emit the last member's
SUCCESS and flush (no linger). Printed: the last member's own ``get()`` (the fold
path: events topic -> fold -> Redis) and the chord's (fold -> chords topic ->
aggregator -> Redis), p50/p90/p99/max in ms. Target: chord p99 under 50 ms.
Needs the local stack (``resultlog dev up``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import cleanup, isolated, percentiles, start_processor  # noqa: E402
from resultlog.producers import Emitter, declare_chord  # noqa: E402
from resultlog.views import ResultBackend  # noqa: E402


async def one_chord(emitter: Emitter, backend: ResultBackend, chord_id: str, size: int) -> tuple[float, float]:
    await declare_chord(emitter, chord_id, size)
    for i in range(size - 1):
        await emitter.success(f"{chord_id}-{i}", i, chord_id=chord_id, chord_size=size, chord_index=i)
    await emitter.flush()
    chord = backend.AioChordResult(chord_id)
    while (await chord.refresh()).view.done < size - 1:  # the others are counted
        await asyncio.sleep(0.005)
    last = f"{chord_id}-{size - 1}"
    stamps: dict[str, int] = {}

    async def wait_task() -> None:
        await backend.AioAsyncResult(last).get(timeout=30)
        stamps["task"] = time.perf_counter_ns()

    async def wait_chord() -> None:
        await chord.get(timeout=30)
        stamps["chord"] = time.perf_counter_ns()

    waiters = [asyncio.create_task(wait_task()), asyncio.create_task(wait_chord())]
    await asyncio.sleep(0.01)  # both subscribed (a PING round trip is ~0.1 ms)
    t0 = time.perf_counter_ns()
    await emitter.success(last, size - 1, chord_id=chord_id, chord_size=size, chord_index=size - 1)
    await emitter.flush()
    await asyncio.gather(*waiters)
    return (stamps["task"] - t0) / 1e6, (stamps["chord"] - t0) / 1e6


def describe(name: str, values: list[float]) -> str:
    p50, p90, p99 = percentiles(values, 50, 90, 99)
    return (f"{name:<28} p50 {p50:6.1f}  p90 {p90:6.1f}  p99 {p99:6.1f}  "
            f"max {max(values):6.1f} ms  (n={len(values)})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chords", type=int, default=200)
    parser.add_argument("--size", type=int, default=3, help="members per chord (>= 1)")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    settings = isolated("chord")
    proc = start_processor(settings)
    tasks: list[float] = []
    chords: list[float] = []
    try:
        async with Emitter(settings) as emitter, ResultBackend(settings) as backend:
            started = time.monotonic()
            for n in range(args.warmup + args.chords):
                task_ms, chord_ms = await one_chord(emitter, backend, f"c{n}", args.size)
                if n == 0:
                    print(f"processor ready, first chord done after {time.monotonic() - started:.1f} s")
                if n >= args.warmup:
                    tasks.append(task_ms)
                    chords.append(chord_ms)
    finally:
        proc.terminate()
        proc.wait(30)
        await cleanup(settings)
    print(f"{args.chords} chords of {args.size} members, one at a time; from the last member's emit:")
    print(describe("last member get() returns", tasks))
    print(describe("chord get() returns", chords))
    print(describe("chord minus member", [c - t for c, t in zip(chords, tasks)]))


if __name__ == "__main__":
    asyncio.run(main())
