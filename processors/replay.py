"""Rebuild the Redis view and/or the Postgres history by re-reading the events topic,
through the live processor's :class:`FoldSink`, outside any consumer group, with its
progress recorded under ``<consumer_group>.replay`` (docs/replay.md says why).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from redis.asyncio import Redis

from resultlog import names
from resultlog.chords.fromlog import rebuild_chord_views
from resultlog.errors import ReplayRefused, ValidationError
from resultlog.processors.logreader import LogReader, Slice, check_timestamp_ms
from resultlog.processors.progress import Progress
from resultlog.processors.replayworkers import run_shares, split
from resultlog.processors.sink import FoldSink, SinkStats
from resultlog.producers.kafka import started
from resultlog.connections import kafka_client_args, redis_url
from resultlog.settings import Settings
from resultlog.views.coverage import Claim, ViewCoverage
from resultlog.views.history import HistoryStore

REPLAY_GROUP_SUFFIX = ".replay"
#: Consumers per process: one waits on the stores while another decodes.
DEFAULT_CONSUMERS = 2


def default_jobs() -> int:
    """Replay processes by default: one per CPU this process may run on."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(slots=True)
class ReplaySummary:
    planned: int
    stats: SinkStats
    seconds: float

    @property
    def rate(self) -> float:
        return self.stats.read / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        s = self.stats
        return (
            f"replayed {s.read:,} events in {self.seconds:.1f}s ({self.rate:,.0f} events/s): "
            f"{s.inserted:,} history rows written, {s.duplicates:,} already present (skipped), "
            f"{s.redis_changed:,} Redis updates, {s.dead_letters:,} sent to dead letters"
        )


async def live_members(settings: Settings) -> int:
    """How many processes are members of the live processor's consumer group now."""
    admin = AIOKafkaAdminClient(**kafka_client_args(settings),
                                request_timeout_ms=int(settings.kafka_timeout_s * 1000))
    await started(admin, settings)
    try:
        described = await admin.describe_consumer_groups([settings.consumer_group])
    finally:
        await admin.close()
    members = 0
    for response in described:
        for group in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members, ...)
            members += len(group[5])
    return members


async def clear_redis_view(settings: Settings) -> int:
    """Delete every view key under the prefix (tasks, chords, offsets, workers; not
    anything else's keys: names.is_view_key); returns how many. The chord hooks' claims
    are in PostgreSQL, and nothing a replay does removes them."""
    deleted = 0
    prefix = settings.redis_prefix
    async with Redis.from_url(redis_url(settings)) as client:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=names.prefix_pattern(prefix), count=5000):
            if not names.is_view_key(prefix, key.decode(errors="replace")):
                continue
            batch.append(key)
            if len(batch) >= 5000:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
    return deleted


async def clear_redis_offsets(settings: Settings, group: str) -> None:
    async with Redis.from_url(redis_url(settings)) as client:
        await client.delete(names.offsets_key(settings.redis_prefix, group))


async def record_live_positions(settings: Settings, plan: Slice) -> None:
    """After a replay of the whole log into Redis: tell the live processor's view record
    (views/coverage.py) that the view holds the log up to the replay's end, where it
    has no record, so its next start does not rebuild again what the replay just did.
    A partition it has a record of keeps it (the processor resumes from its stores)."""
    async with Redis.from_url(redis_url(settings)) as client:
        coverage = ViewCoverage(settings, client, settings.consumer_group)
        await coverage.claim({p: Claim(end, end) for p, end in plan.end.items()})


async def replay(
    settings: Settings,
    *,
    redis: bool = True,
    history: bool = True,
    from_timestamp_ms: int | None = None,
    from_offsets: Mapping[int, int] | None = None,
    resume: bool = False,
    fresh: bool = False,
    force: bool = False,
    batch_records: int = 5000,
    jobs: int | None = None,
    consumers: int = DEFAULT_CONSUMERS,
    progress: bool = True,
    on_batch: Callable[[SinkStats], None] | None = None,
) -> ReplaySummary:
    """Fold the events topic (or a slice of it) into the chosen stores; see docs/replay.md.

    ``jobs`` processes (default: one per CPU) each run ``consumers`` consumers
    concurrently, every consumer over its own share of the partitions; see
    ``processors/replayworkers.py``.
    """
    processes = default_jobs() if jobs is None else jobs
    if not 1 <= processes <= 64:
        raise ValidationError(f"jobs must be between 1 and 64, not {processes}")
    if not 1 <= consumers <= 16:
        raise ValidationError(f"consumers must be between 1 and 16, not {consumers}")
    if not (redis or history):
        raise ValidationError("nothing to rebuild: choose the Redis view, the history, or both")
    if batch_records < 1:
        raise ValidationError(f"batch must be at least 1 (records per write batch), not {batch_records}")
    if sum(x is not None and x is not False for x in (from_timestamp_ms, from_offsets, resume or None)) > 1:
        raise ValidationError("choose one starting point: a timestamp, offsets, or --resume")
    if fresh and resume:
        raise ValidationError("--fresh and --resume: choose one (--fresh empties the stores and "
                              "rebuilds them from the start; --resume continues from what they recorded)")
    if from_timestamp_ms is not None:
        check_timestamp_ms(from_timestamp_ms, f"from_timestamp_ms {from_timestamp_ms}")
    if not force:
        members = await live_members(settings)
        if members:
            raise ReplayRefused(
                f"{members} live processor(s) are in consumer group {settings.consumer_group!r} "
                "and writing these stores; stop them first, or pass --force (safe: writes are "
                "idempotent, but the views may flicker while both write)"
            )
    group = settings.consumer_group + REPLAY_GROUP_SUFFIX
    store = HistoryStore(settings)
    await store.start()
    sink = FoldSink(settings, consumer_group=group, write_redis=redis,
                    write_history=history, history=store)
    try:
        await store.migrate()
        await sink.start()
        if resume:
            from_offsets = await sink.resume_offsets(settings.events_topic)
        # Planned before --fresh empties anything: a partition, offset or time the topic
        # cannot serve is refused while the stores still hold what they held.
        async with LogReader(settings) as reader:
            plan: Slice = await reader.plan(from_timestamp_ms=from_timestamp_ms, from_offsets=from_offsets)
            if fresh:
                if redis:
                    await clear_redis_view(settings)
                if history:
                    await store.reset()
                await store.reset_offsets(group)
                await clear_redis_offsets(settings, group)
                # And planned again, to the log's end now: with --force a live processor
                # may have written events past the first plan's end before the stores
                # were emptied, and it has moved past them; a replay that stopped at the
                # first end would leave them out of the history for good.
                plan = await reader.plan(from_timestamp_ms=from_timestamp_ms, from_offsets=from_offsets)
        bar = Progress(plan.total, "replay") if progress else None
        totals = SinkStats()
        started = time.monotonic()

        def done(stats: SinkStats) -> None:
            totals.add(stats)
            if bar is not None:
                bar.advance(stats.read)
            if on_batch is not None:
                on_batch(stats)

        await run_shares(settings, group, split(plan, processes * consumers),
                         processes=processes, redis=redis, history=history,
                         batch_records=batch_records, on_batch=done, store=store)
        if bar is not None:
            bar.finish()
        if redis and from_timestamp_ms is None and not from_offsets:
            await record_live_positions(settings, plan)
        if history and fresh:
            # The history holds the slice asked for, and nothing else: the live
            # processor resumes after it (``reset`` forgot every position).
            await store.write_rows([], set(), {(plan.topic, p): end for p, end in plan.end.items()},
                                   consumer_group=settings.consumer_group)
        if redis:
            # Chord views come from the chords topic, the aggregator's own input.
            chords = await rebuild_chord_views(settings)
            if progress and chords:
                print(f"rebuilt the views of {chords:,} chord(s) from {settings.chords_topic}")
        seconds = time.monotonic() - started
        return ReplaySummary(plan.total, totals, seconds)
    finally:
        await sink.close()
