"""Events/s one process can emit to Kafka through the emitter (acks=all, idempotent).

    .venv/bin/python bench/emit_throughput.py                       # 200,000 events, async and sync
    .venv/bin/python bench/emit_throughput.py --repeat 3 --compression gzip
    .venv/bin/python bench/emit_throughput.py --mode async --profile   # where the time goes

Uses ``RESULTLOG_KAFKA_BOOTSTRAP_SERVERS`` (default: the local stack, ``resultlog dev
up``) and a throwaway topic ``bench.emit.<hex>`` (default partitions from the settings),
deleted at the end. The workload is what a worker does: for each task (ids made up
front) a STARTED event with the task name and args, then a SUCCESS event with a small
JSON result and the runtime, through the public per-state calls, so the figure includes
building, validating and encoding every event. The clock stops when ``flush()`` returns,
i.e. when Kafka has acknowledged every event. MB/s counts encoded event bytes. The CPU
time per event (both threads of this process) is the figure to compare when the machine
is busy: wall-clock rates swing with whatever else runs, including the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
import uuid
from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

# Submodules, not the package: run as a script (sys.path[0] = bench/), the editable
# install resolves resultlog.producers as a namespace package without its __init__.
from resultlog.producers.emitter import Emitter, default_worker_name
from resultlog.producers.sync import SyncEmitter
from resultlog.producers.topics import ensure_topics
from resultlog.producers.options import DEFAULT_COMPRESSION, DEFAULT_MAX_BATCH_BYTES
from resultlog.schemas.codec import Codec
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings


def event_bytes(n: int) -> int:
    """Encoded size of the benchmark's events (they are all alike in size)."""
    codec = Codec()
    tid = uuid.uuid4().hex
    worker = default_worker_name()
    started = codec.encode(TaskEvent.create(tid, State.STARTED, worker=worker, task_name="bench.add", args=[1, 2]))
    success = codec.encode(TaskEvent.create(tid, State.SUCCESS, worker=worker, task_name="bench.add", args=[1, 2],
                                            result={"sum": 3}, runtime=0.001))
    return (len(started) + len(success)) * n // 2


async def run_async(settings: Settings, n: int, options: dict[str, object]) -> tuple[float, float]:
    ids = [uuid.uuid4().hex for _ in range(n // 2)]
    async with Emitter(settings, **options) as emitter:  # type: ignore[arg-type]
        for tid in ids[:500]:  # warm up: connections, first batches
            await emitter.started(tid, task_name="warmup")
        await emitter.flush()
        t0, c0 = time.perf_counter(), time.process_time()
        for tid in ids:
            await emitter.started(tid, task_name="bench.add", args=[1, 2])
            await emitter.success(tid, {"sum": 3}, runtime=0.001, task_name="bench.add", args=[1, 2])
        await emitter.flush()
        return time.perf_counter() - t0, time.process_time() - c0


def run_sync(settings: Settings, n: int, options: dict[str, object]) -> tuple[float, float]:
    ids = [uuid.uuid4().hex for _ in range(n // 2)]
    with SyncEmitter(settings, **options) as emitter:  # type: ignore[arg-type]
        for tid in ids[:500]:
            emitter.started(tid, task_name="warmup")
        emitter.flush()
        t0, c0 = time.perf_counter(), time.process_time()
        for tid in ids:
            emitter.started(tid, task_name="bench.add", args=[1, 2])
            emitter.success(tid, {"sum": 3}, runtime=0.001, task_name="bench.add", args=[1, 2])
        emitter.flush()
        return time.perf_counter() - t0, time.process_time() - c0


async def delete_topic(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([settings.events_topic])
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--mode", choices=["async", "sync", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--compression", choices=["none", "gzip", "lz4", "zstd", "snappy"],
                        default=DEFAULT_COMPRESSION or "none")
    parser.add_argument("--batch-kib", type=int, default=DEFAULT_MAX_BATCH_BYTES // 1024)
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="cProfile one async run, print the top functions")
    args = parser.parse_args()

    base = Settings.from_env()
    settings = base.replace(
        events_topic=f"bench.emit.{uuid.uuid4().hex[:8]}",
        topic_partitions=args.partitions or base.topic_partitions,
    )
    options: dict[str, object] = {
        "compression_type": None if args.compression == "none" else args.compression,
        "max_batch_bytes": args.batch_kib * 1024,
    }
    n = args.events - args.events % 2
    mb = event_bytes(n) / 1e6
    print(
        f"{n} events ({mb / n * 1e6:.0f} B each) to {settings.kafka_bootstrap_servers} "
        f"topic {settings.events_topic} ({settings.topic_partitions} partitions), "
        f"compression={args.compression}, max batch {args.batch_kib} KiB, acks=all, idempotent"
    )
    asyncio.run(ensure_topics(settings, settings.events_topic))
    runs: dict[str, Callable[[], tuple[float, float]]] = {}
    if args.mode in ("async", "both"):
        runs["async Emitter"] = lambda: asyncio.run(run_async(settings, n, options))
    if args.mode in ("sync", "both"):
        runs["SyncEmitter"] = lambda: run_sync(settings, n, options)
    try:
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            asyncio.run(run_async(settings, n, options))
            profiler.disable()
            stats = pstats.Stats(profiler).sort_stats("tottime")
            stats.print_stats(25)
            return
        for name, run in runs.items():
            rates = []
            for _ in range(args.repeat):
                elapsed, cpu = run()
                rates.append(n / elapsed)
                print(
                    f"  {name:14} {n / elapsed:>9,.0f} events/s  {mb / elapsed:6.1f} MB/s  ({elapsed:.2f} s; "
                    f"this process used {cpu / n * 1e6:.1f} µs CPU per event)"
                )
            if args.repeat > 1:
                print(f"  {name:14} median {statistics.median(rates):,.0f} events/s")
    finally:
        asyncio.run(delete_topic(settings))


if __name__ == "__main__":
    main()
