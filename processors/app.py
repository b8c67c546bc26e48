"""The faust-streaming application that folds the events topic into both views.

Two fold engines: ``batch`` (default; :mod:`resultlog.processors.engine`, an aiokafka
batch consumer run as a task of this faust app, for throughput) and ``agent`` (below:
a faust agent). Both feed the same :class:`FoldSink`.

One consumer group (``settings.consumer_group``); one agent with concurrency 1
(faust-streaming #606: concurrency > 1 can commit past an unprocessed message) that
takes events in batches and hands them to :class:`FoldSink`.

Exactly-once in the history does not depend on faust's offset commits: faust acks a
batch only after the agent's loop body returns (``take_events``), so Kafka's committed
offsets trail what is written; after a crash the uncommitted tail is read again and
the idempotent writes absorb it. The offsets stored with the history in Postgres are
the record of what the views hold (used by replay and ``resultlog status``). We do
not seek the live consumer to them: faust tracks gaps in consumed offsets and a
foreign seek can stall its commits.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import faust

from resultlog import names
from resultlog.processors import chords
from resultlog.processors.engine import BatchFoldEngine
from resultlog.processors.sink import FoldSink, RawRecord, SinkStats
from resultlog.settings import Settings

log = logging.getLogger("resultlog.processor")

BATCH_MAX = 2000
# Short, so latency at low rates stays low; under load batches fill before it expires.
BATCH_WITHIN_S = 0.05


def faust_settings(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """faust configuration derived from ours (faust's defaults suit a cluster, not us)."""
    conf: dict[str, Any] = dict(
        # With the batch engine the fold's aiokafka consumer holds settings.consumer_group,
        # and faust's partition assignor (needed for tables) cannot share a group with it.
        id=settings.consumer_group if settings.fold_engine == "agent" else names.faust_group(settings.consumer_group),
        broker=[f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap_servers.split(",")],
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        table_standby_replicas=0,
        store="memory://",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        # A SIGKILLed processor's place in faust's group frees only when its session
        # expires: faust's 60 s default kept a restart's chord work waiting a minute.
        broker_session_timeout=10.0,
        stream_buffer_maxsize=16_384,
        producer_acks=-1,
        # faust's producer writes the chord table's changelog, whose entries carry
        # member results (aiokafka refuses a larger record at send; faust's default is 1 MB).
        producer_max_request_size=chords.state_record_bytes(settings),
        datadir=f"{settings.dev_dir}/faust/{settings.consumer_group}",
    )
    conf.update(overrides)
    return conf


class Processor:
    """Builds the faust app around one :class:`FoldSink`; ``app`` is a plain faust app."""

    def __init__(self, settings: Settings, **faust_overrides: Any) -> None:
        self.settings = settings
        self.sink = FoldSink(settings, consumer_group=settings.consumer_group)
        self.stats = SinkStats()
        self._started = asyncio.Event()
        conf = faust_settings(settings, **faust_overrides)
        # faust makes only the last directory of datadir itself.
        Path(conf["datadir"]).mkdir(parents=True, exist_ok=True)
        self.app = faust.App(**conf)
        self.events_topic = self.app.topic(
            settings.events_topic,
            key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw",
            partitions=settings.topic_partitions,
        )
        if settings.fold_engine == "agent":
            self.app.agent(self.events_topic, name="fold", concurrency=1)(self._fold)
        else:
            self.engine = BatchFoldEngine(settings, self.sink, self.stats)
            self.app.task(self._run_engine)
        self.chords = chords.install(self)

    async def _run_engine(self) -> None:
        try:
            await self.engine.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A fold that stopped must stop the worker too: a live-looking processor
            # that folds nothing is the worst outcome. The supervisor restarts it.
            log.critical("the fold engine failed: %r; stopping the worker", exc, exc_info=True)
            await self.app.crash(exc)

    async def _fold(self, stream: Any) -> None:
        await self.sink.start()
        self._started.set()
        try:
            async for batch in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
                records = [
                    RawRecord(e.message.topic, e.message.partition, e.message.offset,
                              e.message.key, e.message.value)
                    for e in batch
                ]
                stats = await self.sink.handle(records)
                self.stats.add(stats)
                if stats.dead_letters:
                    log.warning("%d record(s) sent to dead letters (%s)",
                                stats.dead_letters, self.settings.dead_letter_topic)
        finally:
            await self.sink.close()
