"""The batch fold engine: the events topic consumed in large batches, offsets from Postgres.

Why not a faust agent: faust-streaming moves every message through its own
per-event machinery (Message and Event objects, stream processors, per-offset ack
bookkeeping). On this project's 2-core machine a do-nothing ``take_events`` agent
reads ~11,000 events/s, while aiokafka's ``getmany`` reads ~550,000 (bench figures in
docs/processor.md). The fold's own work is ~50 us/event, so to fold 20,000 events/s
the consumption itself must be nearly free. This engine runs inside the faust worker
(as an app task), in the consumer group ``settings.consumer_group``; the faust-agent
engine (``RESULTLOG_FOLD_ENGINE=agent``) remains for comparison.

Offsets: each store records the offsets it has folded atomically with the data (the
tracking record in the same Postgres transaction as the history rows; an offsets
hash in the same Redis script call as the view). On every assignment the consumer
seeks each partition to the minimum of the two, so a restart resumes exactly where
both stores are complete. Kafka's committed offsets are written after both, and used
only where the stores have no record (a new group) and by Kafka's lag tools.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import CommitFailedError, KafkaError  # type: ignore[import-untyped]

from resultlog.errors import BrokerUnavailable, ResultlogError
from resultlog.processors.sink import FoldSink, PipelinedWriter, Prepared, SinkStats
from resultlog.settings import Settings

log = logging.getLogger("resultlog.processor")

BATCH_MAX = 5000


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: BatchFoldEngine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # The batch in flight finishes in the fold loop; its writes are idempotent and
        # its offsets only move forward (GREATEST), so a new owner may safely overlap.
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.engine.seek_to_stored(set(assigned))


class BatchFoldEngine:
    def __init__(self, settings: Settings, sink: FoldSink, stats: SinkStats) -> None:
        self.settings = settings
        self.sink = sink
        self.stats = stats
        self.consumer: AIOKafkaConsumer | None = None

    async def seek_to_stored(self, assigned: set[TopicPartition]) -> None:
        assert self.consumer is not None
        stored = await self.sink.resume_offsets(self.settings.events_topic)
        for tp in assigned:
            if tp.partition in stored:
                self.consumer.seek(tp, stored[tp.partition])
        log.info("assigned %s; resuming at stored offsets %s",
                 sorted(tp.partition for tp in assigned),
                 {p: o for p, o in sorted(stored.items()) if TopicPartition(self.settings.events_topic, p) in assigned})

    async def _write(self, prepared: Prepared) -> SinkStats:
        """Write a batch, retrying while a store or the broker is unavailable: writes
        are idempotent, and the batch must land before any later one does."""
        delay = 0.1
        while True:
            try:
                return await self.sink.write(prepared)
            except ResultlogError as exc:
                if not exc.retriable:
                    raise
                log.warning("writing a batch failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _account(self, stats: SinkStats) -> None:
        self.stats.add(stats)
        if stats.dead_letters:
            log.warning("%d record(s) sent to dead letters (%s)",
                        stats.dead_letters, self.settings.dead_letter_topic)

    async def run(self) -> None:
        s = self.settings
        await self.sink.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=5,  # low latency at low rates; batches fill under load anyway
        )
        consumer.subscribe([s.events_topic], listener=_SeekToStoredOffsets(self))
        self.consumer = consumer
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise BrokerUnavailable(
                f"cannot reach Kafka at {s.kafka_bootstrap_servers}: {exc!r} "
                "(RESULTLOG_KAFKA_BOOTSTRAP_SERVERS)") from exc
        writer = PipelinedWriter(self._write, self._account)
        last_commit = 0.0
        pending_commit: dict[TopicPartition, int] = {}
        try:
            while True:
                fetched = await consumer.getmany(timeout_ms=100, max_records=BATCH_MAX)
                if fetched:
                    await writer.submit(await self.sink.prepare_yielding(
                        [m for messages in fetched.values() for m in messages]))
                    for tp, ms in fetched.items():
                        pending_commit[tp] = ms[-1].offset + 1
                else:
                    await writer.wait()
                loop_time = asyncio.get_running_loop().time()
                if writer.idle and pending_commit and loop_time - last_commit > 1.0:
                    # Kafka's offsets serve only lag tools and a group the stores do not
                    # know yet; committing them once a second is plenty.
                    last_commit = loop_time
                    try:
                        await consumer.commit(pending_commit)
                        pending_commit = {}
                    except (CommitFailedError, KafkaError) as exc:
                        log.info("Kafka offset commit skipped: %r", exc)
        finally:
            await writer.settle()
            self.consumer = None
            await consumer.stop()
            await self.sink.close()
